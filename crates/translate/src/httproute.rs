//! HTTPRoute: validate rules, attach to listeners, resolve backends, write `status.parents`.

use crate::Context;
use crate::assemble::{Age, RankedRoute, RouteRank};
use crate::backend::{BackendError, ServicePort, service_pool};
use crate::gateway::{GATEWAY_GROUP, GatewayInfo};
use crate::refgrant::{RefEnd, permitted};
use crate::route::{Attachment, RouteProblems, RouteSource, age_order, attach, is_ours, validate_hostnames};
use portico_ir::{
    Action, Cors, Filter, HeaderEdits, Mirror, PathMatch, PathRewrite, Redirect, Retry, Route, RouteMatch, StringMatch,
    Timeouts, UrlRewrite, ValueMatch, WeightedPool,
};
use portico_resources::gateway::{
    BackendObjectReference, HttpBackendRef, HttpHeaderFilter, HttpHeaderMatch, HttpPathModifier, HttpRouteFilter,
    HttpRouteRule,
};
use portico_resources::{Kind, ObjectKey, ResourceRef};

/// A rule turned into IR pieces: one IR route per match.
pub struct CompiledRule {
    pub matches: Vec<RouteMatch>,
    pub filters: Vec<Filter>,
    pub action: Action,
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
    /// GRPCRoute only: characters of the service and of the method each match names, which order gRPC matches
    /// (the Gateway API's GRPCRoute precedence) instead of the path.
    pub grpc_precedence: Vec<(usize, usize)>,
}

/// Translates every HTTPRoute and GRPCRoute that names one of Portico's Gateways, both kinds in one order
/// (oldest first, then by namespace/name), so that when an HTTPRoute and a GRPCRoute claim a hostname on one
/// listener the older one gets it, as the Gateway API requires.
pub fn translate_http_and_grpc_routes(cx: &mut Context<'_>, gateways: &mut [GatewayInfo]) {
    let snapshot = cx.snapshot;
    let http = snapshot.http_routes.iter().map(|(k, r)| (k, &r.metadata, Ok(r)));
    let grpc = snapshot.grpc_routes.iter().map(|(k, r)| (k, &r.metadata, Err(r)));
    let mut routes: Vec<_> = http.chain(grpc).collect();
    routes.sort_by(|(a_key, a, _), (b_key, b, _)| age_order((a, a_key), (b, b_key)));
    for (key, _, route) in routes {
        match route {
            Ok(route) => translate_http_route(cx, gateways, key, route),
            Err(route) => crate::grpcroute::translate_grpc_route(cx, gateways, key, route),
        }
    }
}

fn translate_http_route(
    cx: &mut Context<'_>,
    gateways: &mut [GatewayInfo],
    key: &ObjectKey,
    route: &portico_resources::gateway::HttpRoute,
) {
    let reference = ResourceRef { kind: Kind::HttpRoute, key: key.clone() };
    let spec = &route.spec;
    let parts = RouteParts { metadata: &route.metadata, parent_refs: &spec.parent_refs, hostnames: &spec.hostnames };
    translate_rule_route(cx, gateways, &reference, parts, &spec.rules, false, compile_rule);
}

/// The parts of a route resource besides its rules.
pub struct RouteParts<'a> {
    pub metadata: &'a portico_resources::core::ObjectMeta,
    pub parent_refs: &'a [portico_resources::gateway::ParentReference],
    pub hostnames: &'a [String],
}

/// What HTTPRoute and GRPCRoute share: check the route is Portico's, compile its rules with `compile`, attach
/// it, write its status and add its routes (`grpc` for GRPCRoute's error answers).
pub fn translate_rule_route<R>(
    cx: &mut Context<'_>,
    gateways: &mut [GatewayInfo],
    reference: &ResourceRef,
    parts: RouteParts<'_>,
    rules: &[R],
    grpc: bool,
    compile: impl Fn(&mut Context<'_>, &ResourceRef, &R, usize, &mut RouteProblems) -> Option<CompiledRule>,
) {
    let source =
        RouteSource { reference, metadata: parts.metadata, parent_refs: parts.parent_refs, hostnames: parts.hostnames };
    if !is_ours(cx, gateways, &source) {
        return;
    }
    let mut problems = RouteProblems::default();
    let hostnames_valid = validate_hostnames(cx, &source, &mut problems);
    let compiled: Vec<Option<CompiledRule>> =
        rules.iter().enumerate().map(|(i, rule)| compile(cx, reference, rule, i, &mut problems)).collect();
    let usable = hostnames_valid && (rules.is_empty() || compiled.iter().any(Option::is_some));
    let attachments = attach(cx, gateways, &source, &problems, usable);
    push_routes(cx, &attachments, reference, parts.metadata, &compiled, grpc);
}

/// Adds compiled rules to the virtual hosts of each attachment, ranked for precedence. `grpc` marks routes
/// whose errors are answered the gRPC way.
pub fn push_routes(
    cx: &mut Context<'_>,
    attachments: &[Attachment],
    reference: &ResourceRef,
    metadata: &portico_resources::core::ObjectMeta,
    rules: &[Option<CompiledRule>],
    grpc: bool,
) {
    let key = &reference.key;
    let prefix = reference.kind.as_str().to_ascii_lowercase();
    let created = Age::of(metadata);
    let source = key.to_string();
    for attachment in attachments {
        let Ok(entry) = cx.routes.listener(attachment.socket, attachment.protocol, &attachment.owner) else {
            continue;
        };
        for host in &attachment.hostnames {
            let routes = entry.hosts.entry(host.clone()).or_default();
            if routes.is_empty() {
                // Most hosts have one route's matches: room for exactly those, not the 4 of a first push.
                routes.reserve_exact(rules.iter().flatten().map(|rule| rule.matches.len()).sum());
            }
            for (rule_index, rule) in rules.iter().enumerate() {
                let Some(rule) = rule else { continue };
                for (match_index, matcher) in rule.matches.iter().enumerate() {
                    let name = match_name(&prefix, key, rule_index, match_index);
                    // Two listeners sharing a socket (or two parentRefs) can bring the same route to the same
                    // host: it is served once.
                    if routes.iter().any(|r| r.route.name == name) {
                        continue;
                    }
                    let ir_route = Route {
                        name,
                        matcher: matcher.clone(),
                        filters: rule.filters.clone(),
                        action: rule.action.clone(),
                        timeouts: rule.timeouts.clone(),
                        retry: rule.retry.clone(),
                        grpc,
                    };
                    let rank = match rule.grpc_precedence.get(match_index) {
                        Some(&(service, method)) => RouteRank::grpc(
                            &ir_route,
                            (service, method),
                            created.clone(),
                            source.clone(),
                            rule_index,
                            match_index,
                        ),
                        None => RouteRank::new(&ir_route, created.clone(), source.clone(), rule_index, match_index),
                    };
                    routes.push(RankedRoute { rank, route: ir_route });
                }
            }
        }
    }
}

/// `kind/namespace/name/rule/R/match/M`, the IR's name of one match of a rule.
fn match_name(prefix: &str, key: &ObjectKey, rule: usize, matched: usize) -> String {
    crate::name_of(&[prefix, "/", &key.namespace, "/", &key.name], format_args!("/rule/{rule}/match/{matched}"))
}

fn compile_rule(
    cx: &mut Context<'_>,
    reference: &ResourceRef,
    rule: &HttpRouteRule,
    index: usize,
    problems: &mut RouteProblems,
) -> Option<CompiledRule> {
    let at = |rest: String| format!("spec.rules[{index}]{rest}");
    let mut errors: Vec<(String, String)> = Vec::new();

    let mut matches = Vec::new();
    if rule.matches.is_empty() {
        matches.push(RouteMatch::default());
    }
    for (m, spec) in rule.matches.iter().enumerate() {
        let mut out = RouteMatch::default();
        if let Some(path) = &spec.path {
            let value = path.value.clone().unwrap_or_else(|| "/".into());
            let kind = path.kind.as_deref().unwrap_or("PathPrefix");
            out.path = match kind {
                "Exact" | "PathPrefix" if !value.starts_with('/') => {
                    errors.push((at(format!(".matches[{m}].path.value")), format!("{value:?} must start with /")));
                    PathMatch::Prefix("/".into())
                }
                "Exact" => PathMatch::Exact(value),
                "PathPrefix" => PathMatch::Prefix(value),
                "RegularExpression" => {
                    if let Err(e) = regex::Regex::new(&value) {
                        errors.push((
                            at(format!(".matches[{m}].path.value")),
                            format!("invalid regular expression: {}", first_line(&e)),
                        ));
                    }
                    PathMatch::Regex(value)
                }
                other => {
                    errors.push((
                        at(format!(".matches[{m}].path.type")),
                        format!("{other:?} is not Exact, PathPrefix or RegularExpression"),
                    ));
                    PathMatch::Prefix("/".into())
                }
            };
        }
        out.headers = value_matches(&spec.headers, || at(format!(".matches[{m}].headers")), &mut errors);
        out.query_params = value_matches(&spec.query_params, || at(format!(".matches[{m}].queryParams")), &mut errors);
        if let Some(method) = &spec.method {
            const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
            if !METHODS.contains(&method.as_str()) {
                errors.push((at(format!(".matches[{m}].method")), format!("{method:?} is not an HTTP method")));
            }
            out.method = Some(method.clone());
        }
        matches.push(out);
    }
    let timeouts = Timeouts {
        request_ms: duration_field(
            rule.timeouts.as_ref().and_then(|t| t.request.as_deref()),
            || at(".timeouts.request".into()),
            &mut errors,
        ),
        backend_request_ms: duration_field(
            rule.timeouts.as_ref().and_then(|t| t.backend_request.as_deref()),
            || at(".timeouts.backendRequest".into()),
            &mut errors,
        ),
    };
    // The Gateway API forbids a backendRequest timeout longer than the request timeout (0s is no limit).
    if let (Some(request), Some(backend)) = (timeouts.request_ms, timeouts.backend_request_ms)
        && backend > request
    {
        errors.push((
            at(".timeouts.backendRequest".into()),
            format!("{backend}ms is longer than the request timeout ({request}ms)"),
        ));
    }
    if let Some(r) = &rule.retry {
        if let Some(attempts) = r.attempts.filter(|a| *a > 5) {
            cx.warning(
                reference,
                at(".retry.attempts".into()),
                format!("{attempts} attempts asked; Portico makes at most 5"),
            );
        }
        let ignored: Vec<i32> = r.codes.iter().copied().filter(|c| !(500..600).contains(c)).collect();
        if !ignored.is_empty() {
            cx.warning(
                reference,
                at(".retry.codes".into()),
                format!("codes {ignored:?} are not retried (Portico retries 5xx answers and connection errors)"),
            );
        }
    }
    let retry = rule.retry.as_ref().map(|r| Retry {
        attempts: u32::try_from(r.attempts.unwrap_or(1)).unwrap_or(0).min(5),
        codes: r.codes.iter().filter_map(|c| u16::try_from(*c).ok()).filter(|c| (500..600).contains(c)).collect(),
        backoff_ms: duration_field(r.backoff.as_deref(), || at(".retry.backoff".into()), &mut errors).unwrap_or(25),
    });
    let parts = RuleParts {
        index,
        filters: &rule.filters,
        backend_refs: &rule.backend_refs,
        timeouts,
        retry,
        session: rule.session_persistence.as_ref(),
    };
    finish_rule(cx, reference, matches, parts, errors, problems)
}

/// What a rule has besides its matches.
pub struct RuleParts<'a> {
    pub index: usize,
    pub filters: &'a [HttpRouteFilter],
    pub backend_refs: &'a [HttpBackendRef],
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
    pub session: Option<&'a portico_resources::gateway::SessionPersistence>,
}

/// Compiles a rule's filters and backends (the part HTTPRoute and GRPCRoute share). A rule with any error
/// is dropped and recorded in `problems`.
pub fn finish_rule(
    cx: &mut Context<'_>,
    reference: &ResourceRef,
    matches: Vec<RouteMatch>,
    parts: RuleParts<'_>,
    mut errors: Vec<(String, String)>,
    problems: &mut RouteProblems,
) -> Option<CompiledRule> {
    let index = parts.index;
    let at = |rest: String| format!("spec.rules[{index}]{rest}");
    let all_prefix = matches.iter().all(|m| matches!(m.path, PathMatch::Prefix(_)));

    let mut filters = Vec::new();
    let mut redirect = None;
    for (f, filter) in parts.filters.iter().enumerate() {
        let field = at(format!(".filters[{f}]"));
        match filter.kind.as_str() {
            "RequestHeaderModifier" => match &filter.request_header_modifier {
                Some(m) => filters.push(Filter::RequestHeaders(header_edits(m))),
                None => errors.push((field, "type RequestHeaderModifier needs requestHeaderModifier".into())),
            },
            "ResponseHeaderModifier" => match &filter.response_header_modifier {
                Some(m) => filters.push(Filter::ResponseHeaders(header_edits(m))),
                None => errors.push((field, "type ResponseHeaderModifier needs responseHeaderModifier".into())),
            },
            "URLRewrite" => match &filter.url_rewrite {
                Some(rewrite) => {
                    let path =
                        rewrite.path.as_ref().and_then(|p| path_modifier(p, &matches, all_prefix, &field, &mut errors));
                    filters.push(Filter::UrlRewrite(UrlRewrite { hostname: rewrite.hostname.clone(), path }));
                }
                None => errors.push((field, "type URLRewrite needs urlRewrite".into())),
            },
            "RequestMirror" => match &filter.request_mirror {
                Some(mirror) => {
                    let per_million = match (&mirror.fraction, mirror.percent) {
                        (Some(f), _) => {
                            let denominator = i64::from(f.denominator.unwrap_or(100)).max(1);
                            (i64::from(f.numerator).clamp(0, denominator) * 1_000_000 / denominator) as u32
                        }
                        (None, Some(percent)) => u32::try_from(percent.clamp(0, 100)).unwrap_or(0) * 10_000,
                        (None, None) => 1_000_000,
                    };
                    let pool = match resolve_backend(cx, reference, &mirror.backend_ref) {
                        Ok(pool) => Some(pool),
                        Err(error) => {
                            cx.error(
                                reference,
                                format!("{field}.requestMirror.backendRef"),
                                error.message().to_string(),
                            );
                            problems.unresolved(error.reason(), error.message().to_string());
                            None
                        }
                    };
                    filters.push(Filter::Mirror(Mirror { pool, per_million }));
                }
                None => errors.push((field, "type RequestMirror needs requestMirror".into())),
            },
            "CORS" => match &filter.cors {
                Some(cors) => filters.push(Filter::Cors(Cors {
                    allow_origins: cors.allow_origins.clone(),
                    allow_methods: cors.allow_methods.clone(),
                    allow_headers: cors.allow_headers.clone(),
                    expose_headers: cors.expose_headers.clone(),
                    max_age: u32::try_from(cors.max_age.unwrap_or(5)).unwrap_or(5),
                    allow_credentials: cors.allow_credentials.unwrap_or(false),
                })),
                None => errors.push((field, "type CORS needs cors".into())),
            },
            "RequestRedirect" => match &filter.request_redirect {
                Some(r) => {
                    let status = r.status_code.unwrap_or(302);
                    if ![301, 302, 303, 307, 308].contains(&status) {
                        errors.push((
                            format!("{field}.requestRedirect.statusCode"),
                            format!("{status} is not a redirect status"),
                        ));
                    }
                    if let Some(scheme) = r.scheme.as_deref().filter(|s| !matches!(*s, "http" | "https")) {
                        errors.push((
                            format!("{field}.requestRedirect.scheme"),
                            format!("{scheme:?} is not http or https"),
                        ));
                    }
                    // Without a port the spec derives one: the scheme's well-known port when the scheme
                    // changes, else the listener's (which the request arrived on, so `None` keeps it).
                    let port = r.port.and_then(|p| u16::try_from(p).ok()).or(match r.scheme.as_deref() {
                        Some("http") => Some(80),
                        Some("https") => Some(443),
                        _ => None,
                    });
                    let path =
                        r.path.as_ref().and_then(|p| path_modifier(p, &matches, all_prefix, &field, &mut errors));
                    redirect = Some(Redirect {
                        scheme: r.scheme.clone(),
                        hostname: r.hostname.clone(),
                        port,
                        path,
                        status: u16::try_from(status).unwrap_or(302),
                    });
                }
                None => errors.push((field, "type RequestRedirect needs requestRedirect".into())),
            },
            other => errors.push((format!("{field}.type"), format!("filter {other} is not supported yet"))),
        }
    }
    if redirect.is_some() && filters.iter().any(|f| matches!(f, Filter::UrlRewrite(_))) {
        errors.push((at(".filters".into()), "RequestRedirect and URLRewrite cannot be used together".into()));
    }

    let action = match redirect {
        Some(redirect) => Action::Redirect(redirect),
        None => {
            let mut pools = Vec::new();
            for (b, backend_ref) in parts.backend_refs.iter().enumerate() {
                // Built only for an error, like the field paths of matches.
                let field = || at(format!(".backendRefs[{b}]"));
                if !backend_ref.filters.is_empty() {
                    errors.push((format!("{}.filters", field()), "per-backend filters are not supported yet".into()));
                }
                let weight = u32::try_from(backend_ref.weight.unwrap_or(1)).unwrap_or(0);
                match resolve_backend(cx, reference, &backend_ref.backend) {
                    Ok(pool) => pools.push(WeightedPool { pool: Some(pool), weight }),
                    Err(error) => {
                        cx.error(reference, field(), error.message().to_string());
                        problems.unresolved(error.reason(), error.message().to_string());
                        pools.push(WeightedPool { pool: None, weight });
                    }
                }
            }
            if pools.iter().all(|p| p.weight == 0) {
                Action::Respond { status: 500, body: "no backend for this route\n".into() }
            } else {
                Action::Forward(pools)
            }
        }
    };

    // Balancing: a BackendPolicy on the route, then the rule's sessionPersistence (see crate::policy).
    let mut action = action;
    let route_key = &reference.key;
    if let Some(settings) = cx.policies.get(reference.kind.as_str(), route_key).cloned() {
        // Named by kind, namespace and name: an HTTPRoute and a GRPCRoute, or routes of one name in two
        // namespaces, can share a Service with different settings.
        let suffix = format!("{}/{}", reference.kind.as_str().to_ascii_lowercase(), route_key);
        crate::policy::apply_to_action(cx, &mut action, &settings, &suffix);
    }
    if let Some(session) = parts.session {
        match crate::policy::session_persistence(session) {
            Ok(settings) => {
                let suffix = format!("session/{}/{route_key}/{index}", reference.kind.as_str().to_ascii_lowercase());
                crate::policy::apply_to_action(cx, &mut action, &settings, &suffix);
            }
            Err(message) => errors.push((at(".sessionPersistence".into()), message)),
        }
    }

    if errors.is_empty() {
        Some(CompiledRule {
            matches,
            filters,
            action,
            timeouts: parts.timeouts,
            retry: parts.retry,
            grpc_precedence: Vec::new(),
        })
    } else {
        for (field, message) in errors.iter() {
            cx.error(reference, field.clone(), message.clone());
        }
        problems.invalid_rules.push(format!("rule {index}: {}", errors[0].1));
        None
    }
}

/// Resolves a backend reference of any route kind to a pool, honouring ReferenceGrants for the route's kind.
pub fn resolve_backend(
    cx: &mut Context<'_>,
    reference: &ResourceRef,
    backend: &BackendObjectReference,
) -> Result<String, BackendError> {
    let group = backend.group.as_deref().unwrap_or("");
    let kind = backend.kind.as_deref().unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        return Err(BackendError::InvalidKind(format!(
            "{kind} in group {group:?} is not a supported backend (Service is)"
        )));
    }
    let namespace = backend.namespace.as_deref().unwrap_or(&reference.key.namespace);
    let allowed = permitted(
        cx.snapshot,
        &RefEnd { group: GATEWAY_GROUP, kind: reference.kind.as_str(), namespace: &reference.key.namespace },
        &RefEnd { group: "", kind: "Service", namespace },
        &backend.name,
    );
    if !allowed {
        return Err(BackendError::RefNotPermitted(format!(
            "no ReferenceGrant in {namespace} lets this route use Service {namespace}/{}",
            backend.name
        )));
    }
    let Some(port) = backend.port else {
        return Err(BackendError::NotFound(format!("backendRef to Service {namespace}/{} needs a port", backend.name)));
    };
    service_pool(cx, &ObjectKey::new(namespace, &backend.name), ServicePort::Number(port))
}

/// `field` names the list in error messages; it is built only for an error (with 10,000 routes, formatting
/// field paths that no message used was a tenth of the translation).
pub fn value_matches(
    specs: &[HttpHeaderMatch],
    field: impl Fn() -> String,
    errors: &mut Vec<(String, String)>,
) -> Vec<ValueMatch> {
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let value = match spec.kind.as_deref().unwrap_or("Exact") {
                "Exact" => StringMatch::Exact(spec.value.clone()),
                "RegularExpression" => {
                    if let Err(e) = regex::Regex::new(&spec.value) {
                        errors.push((
                            format!("{}[{i}].value", field()),
                            format!("invalid regular expression: {}", first_line(&e)),
                        ));
                    }
                    StringMatch::Regex(spec.value.clone())
                }
                other => {
                    errors.push((
                        format!("{}[{i}].type", field()),
                        format!("{other:?} is not Exact or RegularExpression"),
                    ));
                    StringMatch::Exact(spec.value.clone())
                }
            };
            if spec.name.is_empty()
                || !spec.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b))
            {
                errors.push((format!("{}[{i}].name", field()), format!("{:?} is not a valid name", spec.name)));
            }
            ValueMatch { name: spec.name.clone(), value }
        })
        .collect()
}

fn header_edits(spec: &HttpHeaderFilter) -> HeaderEdits {
    HeaderEdits {
        set: spec.set.iter().map(|h| (h.name.clone(), h.value.clone())).collect(),
        add: spec.add.iter().map(|h| (h.name.clone(), h.value.clone())).collect(),
        remove: spec.remove.clone(),
    }
}

fn path_modifier(
    spec: &HttpPathModifier,
    matches: &[RouteMatch],
    all_prefix: bool,
    field: &str,
    errors: &mut Vec<(String, String)>,
) -> Option<PathRewrite> {
    match spec.kind.as_str() {
        "ReplaceFullPath" => Some(PathRewrite::Full(spec.replace_full_path.clone().unwrap_or_else(|| "/".into()))),
        "ReplacePrefixMatch" => {
            if !all_prefix || matches.len() != 1 {
                errors.push((
                    format!("{field}.path"),
                    "ReplacePrefixMatch needs exactly one PathPrefix match in the rule".into(),
                ));
                return None;
            }
            let PathMatch::Prefix(matched) = &matches[0].path else {
                return None;
            };
            Some(PathRewrite::Prefix {
                matched: matched.clone(),
                replacement: spec.replace_prefix_match.clone().unwrap_or_else(|| "/".into()),
            })
        }
        other => {
            errors.push((
                format!("{field}.path.type"),
                format!("{other:?} is not ReplaceFullPath or ReplacePrefixMatch"),
            ));
            None
        }
    }
}

pub fn first_line(error: &regex::Error) -> String {
    error.to_string().lines().last().unwrap_or("").trim().to_string()
}

/// Parses a Gateway API duration (`1h`, `10s`, `500ms`, `1m30s`; `0s` means no limit) into milliseconds,
/// recording an error for anything else.
fn duration_field(
    text: Option<&str>,
    field: impl FnOnce() -> String,
    errors: &mut Vec<(String, String)>,
) -> Option<u64> {
    let text = text?;
    match parse_duration(text) {
        Some(0) => None,
        Some(ms) => Some(ms),
        None => {
            errors.push((field(), format!("{text:?} is not a duration like 10s, 500ms or 1m30s")));
            None
        }
    }
}

/// Milliseconds of a Gateway API duration.
pub fn parse_duration(text: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1000, 1)
        } else {
            return None;
        };
        total += value * unit;
        rest = &rest[len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_follow_the_gateway_api_format() {
        assert_eq!(parse_duration("10s"), Some(10_000));
        assert_eq!(parse_duration("1m30s"), Some(90_000));
        assert_eq!(parse_duration("250ms"), Some(250));
        assert_eq!(parse_duration("1h"), Some(3_600_000));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("1.5s"), None);
    }
}
