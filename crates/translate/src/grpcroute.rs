//! GRPCRoute: gRPC service/method and header matches, compiled to HTTP/2 routes whose errors are answered
//! with `grpc-status`.

use crate::Context;
use crate::gateway::GatewayInfo;
use crate::httproute::{
    CompiledRule, RouteParts, RuleParts, finish_rule, first_line, translate_rule_route, value_matches,
};
use crate::route::RouteProblems;
use portico_ir::{Action, PathMatch, RouteMatch, Timeouts};
use portico_resources::gateway::{GrpcMethodMatch, GrpcRoute, GrpcRouteRule};
use portico_resources::{Kind, ObjectKey, ResourceRef};

/// Translates one GRPCRoute, if it names one of Portico's Gateways (called, in order with HTTPRoutes, by
/// [`crate::httproute::translate_http_and_grpc_routes`]).
pub fn translate_grpc_route(cx: &mut Context<'_>, gateways: &mut [GatewayInfo], key: &ObjectKey, route: &GrpcRoute) {
    let reference = ResourceRef { kind: Kind::GrpcRoute, key: key.clone() };
    let spec = &route.spec;
    let parts = RouteParts { metadata: &route.metadata, parent_refs: &spec.parent_refs, hostnames: &spec.hostnames };
    translate_rule_route(cx, gateways, &reference, parts, &spec.rules, true, compile_grpc_rule);
}

fn compile_grpc_rule(
    cx: &mut Context<'_>,
    reference: &ResourceRef,
    rule: &GrpcRouteRule,
    index: usize,
    problems: &mut RouteProblems,
) -> Option<CompiledRule> {
    let mut errors = Vec::new();
    let mut matches = Vec::new();
    let mut precedence = Vec::new();
    if rule.matches.is_empty() {
        matches.push(RouteMatch::default());
        precedence.push((0, 0));
    }
    for (m, spec) in rule.matches.iter().enumerate() {
        let field = format!("spec.rules[{index}].matches[{m}]");
        let path = match &spec.method {
            None => PathMatch::Prefix("/".into()),
            Some(method) => method_path(method, &field, &mut errors),
        };
        let headers = value_matches(&spec.headers, || format!("{field}.headers"), &mut errors);
        matches.push(RouteMatch { path, headers, ..RouteMatch::default() });
        let names = spec.method.as_ref().map(|method| {
            let length = |name: &Option<String>| name.as_deref().map_or(0, str::len);
            (length(&method.service), length(&method.method))
        });
        precedence.push(names.unwrap_or((0, 0)));
    }
    // The filters a GRPCRoute may have; the others (redirects, rewrites, CORS) mean nothing to gRPC.
    for (f, filter) in rule.filters.iter().enumerate() {
        if !matches!(
            filter.kind.as_str(),
            "RequestHeaderModifier" | "ResponseHeaderModifier" | "RequestMirror" | "ExtensionRef"
        ) {
            errors.push((
                format!("spec.rules[{index}].filters[{f}].type"),
                format!(
                    "{} is not a GRPCRoute filter (RequestHeaderModifier, ResponseHeaderModifier, RequestMirror)",
                    filter.kind
                ),
            ));
        }
    }
    let parts = RuleParts {
        index,
        filters: &rule.filters,
        backend_refs: &rule.backend_refs,
        timeouts: Timeouts::default(),
        retry: None,
        session: rule.session_persistence.as_ref(),
    };
    let mut compiled = finish_rule(cx, reference, matches, parts, errors, problems)?;
    compiled.grpc_precedence = precedence;
    // gRPC needs HTTP/2 to the backend whatever the Service's appProtocol says.
    if let Action::Forward(pools) = &mut compiled.action {
        for weighted in pools.iter_mut() {
            let Some(name) = weighted.pool.clone() else { continue };
            let Some(pool) = cx.out.ir.pools.get(&name) else { continue };
            if !pool.http2 {
                let h2 = format!("{name}+h2");
                let mut copy = pool.clone();
                copy.name = h2.clone();
                copy.http2 = true;
                cx.out.ir.pools.insert(h2.clone(), copy);
                weighted.pool = Some(h2);
            }
        }
    }
    Some(compiled)
}

/// The request path a gRPC method match selects: `/package.Service/Method`.
fn method_path(method: &GrpcMethodMatch, field: &str, errors: &mut Vec<(String, String)>) -> PathMatch {
    let service = method.service.as_deref().filter(|s| !s.is_empty());
    let name = method.method.as_deref().filter(|m| !m.is_empty());
    if service.is_none() && name.is_none() {
        errors.push((format!("{field}.method"), "a method match needs a service or a method".into()));
        return PathMatch::Prefix("/".into());
    }
    match method.kind.as_deref().unwrap_or("Exact") {
        "Exact" => {
            // The Gateway API's syntax: a dotted service name (an optional leading dot) and a method name.
            if let Some(s) = service.filter(|s| !s.strip_prefix('.').unwrap_or(s).split('.').all(identifier)) {
                errors.push((format!("{field}.method.service"), format!("{s:?} is not a gRPC service name")));
            }
            if let Some(m) = name.filter(|m| !identifier(m)) {
                errors.push((format!("{field}.method.method"), format!("{m:?} is not a gRPC method name")));
            }
            match (service, name) {
                (Some(s), Some(m)) => PathMatch::Exact(format!("/{s}/{m}")),
                (Some(s), None) => PathMatch::Prefix(format!("/{s}")),
                (_, m) => PathMatch::Regex(format!("/[^/]+/{}", regex::escape(m.unwrap_or_default()))),
            }
        }
        "RegularExpression" => {
            // Each part is matched on its own: grouped, an alternation cannot reach past its `/`.
            for (part, value) in [("service", service), ("method", name)] {
                if let Some(Err(e)) = value.map(regex::Regex::new) {
                    errors.push((
                        format!("{field}.method.{part}"),
                        format!("invalid regular expression: {}", first_line(&e)),
                    ));
                }
            }
            let group = |value: Option<&str>| value.map_or_else(|| "[^/]+".to_string(), |v| format!("(?:{v})"));
            PathMatch::Regex(format!("/{}/{}", group(service), group(name)))
        }
        other => {
            errors.push((format!("{field}.method.type"), format!("{other:?} is not Exact or RegularExpression")));
            PathMatch::Prefix("/".into())
        }
    }
}

/// A protobuf identifier: a letter or `_`, then letters, digits and `_`.
fn identifier(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
