//! GRPCRoute: gRPC service/method and header matches, compiled to HTTP/2 routes whose errors are answered
//! with `grpc-status`.

use crate::Context;
use crate::gateway::GatewayInfo;
use crate::httproute::{CompiledRule, RuleParts, finish_rule, push_routes, value_matches};
use crate::route::{RouteProblems, RouteSource, attach, is_ours, oldest_first, validate_hostnames};
use portico_ir::{Action, PathMatch, RouteMatch, Timeouts};
use portico_resources::gateway::{GrpcMethodMatch, GrpcRouteRule};
use portico_resources::{Kind, ResourceRef};

/// Translates every GRPCRoute that names one of Portico's Gateways.
pub fn translate_grpc_routes(cx: &mut Context<'_>, gateways: &mut [GatewayInfo]) {
    for (key, route) in oldest_first(&cx.snapshot.grpc_routes, |r| &r.metadata) {
        let reference = ResourceRef { kind: Kind::GrpcRoute, key: key.clone() };
        let source = RouteSource {
            reference: &reference,
            metadata: &route.metadata,
            parent_refs: &route.spec.parent_refs,
            hostnames: &route.spec.hostnames,
        };
        if !is_ours(cx, gateways, &source) {
            continue;
        }
        let mut problems = RouteProblems::default();
        let hostnames_valid = validate_hostnames(cx, &source, &mut problems);
        let rules: Vec<Option<CompiledRule>> = route
            .spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| compile_grpc_rule(cx, &reference, rule, i, &mut problems))
            .collect();
        let usable = hostnames_valid && (route.spec.rules.is_empty() || rules.iter().any(Option::is_some));
        let attachments = attach(cx, gateways, &source, &problems, usable);
        push_routes(cx, &attachments, &reference, &route.metadata, &rules, true);
    }
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
    if rule.matches.is_empty() {
        matches.push(RouteMatch::default());
    }
    for (m, spec) in rule.matches.iter().enumerate() {
        let field = format!("spec.rules[{index}].matches[{m}]");
        let path = match &spec.method {
            None => PathMatch::Prefix("/".into()),
            Some(method) => method_path(method, &field, &mut errors),
        };
        let headers = value_matches(&spec.headers, &format!("{field}.headers"), &mut errors);
        matches.push(RouteMatch { path, headers, ..RouteMatch::default() });
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
    match method.kind.as_deref().unwrap_or("Exact") {
        "Exact" => match (service, name) {
            (Some(s), Some(m)) => PathMatch::Exact(format!("/{s}/{m}")),
            (Some(s), None) => PathMatch::Prefix(format!("/{s}")),
            (None, Some(m)) => PathMatch::Regex(format!("/[^/]+/{}", regex::escape(m))),
            (None, None) => {
                errors.push((format!("{field}.method"), "a method match needs a service or a method".into()));
                PathMatch::Prefix("/".into())
            }
        },
        "RegularExpression" => {
            let service = service.unwrap_or("[^/]+");
            let name = name.unwrap_or("[^/]+");
            let pattern = format!("/{service}/{name}");
            if let Err(e) = regex::Regex::new(&pattern) {
                errors.push((format!("{field}.method"), format!("invalid regular expression: {e}")));
            }
            PathMatch::Regex(pattern)
        }
        other => {
            errors.push((format!("{field}.method.type"), format!("{other:?} is not Exact or RegularExpression")));
            PathMatch::Prefix("/".into())
        }
    }
}
