//! HTTPRoute: validate rules, attach to listeners, resolve backends, write `status.parents`.

use crate::assemble::{RankedRoute, RouteRank, socket};
use crate::backend::{BackendError, ServicePort, service_pool};
use crate::gateway::{GATEWAY_GROUP, GatewayInfo};
use crate::refgrant::{RefEnd, permitted};
use crate::{Context, hostname, not, ok};
use portico_ir::{
    Action, Filter, HeaderEdits, PathMatch, PathRewrite, Redirect, Route, RouteMatch, StringMatch, UrlRewrite,
    ValueMatch, WeightedPool,
};
use portico_resources::gateway::{
    HttpHeaderFilter, HttpHeaderMatch, HttpPathModifier, HttpRoute, HttpRouteRule, ParentReference,
};
use portico_resources::status::{Condition, ResourceStatus, RouteParentStatus, RouteStatus};
use portico_resources::{Kind, ObjectKey, ResourceRef};

/// A rule turned into IR pieces: one IR route per match.
struct CompiledRule {
    matches: Vec<RouteMatch>,
    filters: Vec<Filter>,
    action: Action,
}

/// Rule problems that make the rule unusable (Accepted) or only some backends (ResolvedRefs).
#[derive(Default)]
struct RouteProblems {
    invalid_rules: Vec<String>,
    unresolved: Option<(&'static str, String)>,
}

/// Translates every HTTPRoute that names one of Portico's Gateways.
pub fn translate_http_routes(cx: &mut Context<'_>, gateways: &mut [GatewayInfo]) {
    let mut routes: Vec<(&ObjectKey, &HttpRoute)> = cx.snapshot.http_routes.iter().collect();
    routes.sort_by_key(|(key, r)| (r.metadata.creation_timestamp.as_ref().map(|t| t.0), (*key).clone()));
    for (key, route) in routes {
        translate_http_route(cx, gateways, key, route);
    }
}

fn is_gateway_parent(parent: &ParentReference) -> bool {
    parent.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
        && parent.kind.as_deref().unwrap_or("Gateway") == "Gateway"
}

fn translate_http_route(cx: &mut Context<'_>, gateways: &mut [GatewayInfo], key: &ObjectKey, route: &HttpRoute) {
    let reference = ResourceRef { kind: Kind::HttpRoute, key: key.clone() };
    let generation = route.metadata.generation;
    let ours: Vec<usize> = route
        .spec
        .parent_refs
        .iter()
        .enumerate()
        .filter(|(_, p)| is_gateway_parent(p))
        .filter(|(_, p)| {
            let ns = p.namespace.as_deref().unwrap_or(&key.namespace);
            gateways.iter().any(|g| g.reference.key == ObjectKey::new(ns, &p.name))
        })
        .map(|(i, _)| i)
        .collect();
    if ours.is_empty() {
        for (i, parent) in route.spec.parent_refs.iter().enumerate() {
            let ns = parent.namespace.as_deref().unwrap_or(&key.namespace);
            if is_gateway_parent(parent) && !cx.snapshot.gateways.contains_key(&ObjectKey::new(ns, &parent.name)) {
                cx.warning(
                    &reference,
                    format!("spec.parentRefs[{i}]"),
                    format!("Gateway {ns}/{} does not exist", parent.name),
                );
            }
        }
        return;
    }

    let mut problems = RouteProblems::default();
    for (i, name) in route.spec.hostnames.iter().enumerate() {
        if let Err(message) = hostname::validate(name) {
            cx.error(&reference, format!("spec.hostnames[{i}]"), message);
            problems.invalid_rules.push(format!("hostname {name:?} is invalid"));
        }
    }
    let hostname_invalid = !problems.invalid_rules.is_empty();
    let rules: Vec<Option<CompiledRule>> = route
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| compile_rule(cx, &reference, rule, i, &mut problems))
        .collect();
    let valid_rules = rules.iter().filter(|r| r.is_some()).count();
    let created = route.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string());

    let mut parents = Vec::new();
    for index in ours {
        let parent = &route.spec.parent_refs[index];
        let gateway_key = ObjectKey::new(parent.namespace.as_deref().unwrap_or(&key.namespace), &parent.name);
        let Some(gateway) = gateways.iter_mut().find(|g| g.reference.key == gateway_key) else {
            continue;
        };
        let mut conditions = Vec::new();

        let candidates: Vec<usize> = (0..gateway.listeners.len())
            .filter(|&i| {
                let l = &gateway.listeners[i];
                parent.section_name.as_ref().is_none_or(|s| *s == l.name)
                    && parent.port.is_none_or(|p| i32::from(l.port) == p)
            })
            .collect();
        let admitted: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| gateway.listeners[i].admits(cx.snapshot, &gateway_key.namespace, "HTTPRoute", &key.namespace))
            .collect();
        // Attachment depends on the parentRef, allowedRoutes and hostnames only, not on the listener's status:
        // a route attached to a listener that is not programmed still counts in its attachedRoutes.
        let attached: Vec<(usize, Vec<String>)> = admitted
            .iter()
            .filter_map(|&i| {
                hostname::intersect(gateway.listeners[i].hostname.as_deref(), &route.spec.hostnames).map(|h| (i, h))
            })
            .collect();

        let accepted = if candidates.is_empty() {
            Err(("NoMatchingParent", "no listener matches the parentRef's sectionName and port".to_string()))
        } else if admitted.is_empty() {
            Err(("NotAllowedByListeners", "the listeners' allowedRoutes do not admit this route".to_string()))
        } else if attached.is_empty() {
            Err(("NoMatchingListenerHostname", "no listener hostname intersects the route's hostnames".to_string()))
        } else if hostname_invalid || valid_rules == 0 && !route.spec.rules.is_empty() {
            Err(("UnsupportedValue", problems.invalid_rules.join("; ")))
        } else if !attached.iter().any(|(i, _)| gateway.listeners[*i].ready) {
            Err((
                "NoReadyListeners",
                "the route attaches only to listeners that are not programmed (see the Gateway's status)".to_string(),
            ))
        } else {
            Ok(())
        };
        match &accepted {
            Ok(()) => conditions.push(ok("Accepted", "Accepted", "Route accepted", generation)),
            Err((reason, message)) => conditions.push(not("Accepted", reason, message.clone(), generation)),
        }
        match &problems.unresolved {
            None => conditions.push(ok("ResolvedRefs", "ResolvedRefs", "References resolved", generation)),
            Some((reason, message)) => conditions.push(not("ResolvedRefs", reason, message.clone(), generation)),
        }
        if accepted.is_ok() && !problems.invalid_rules.is_empty() {
            conditions.push(Condition::new(
                "PartiallyInvalid",
                true,
                "UnsupportedValue",
                format!("rules dropped: {}", problems.invalid_rules.join("; ")),
                generation,
            ));
        }
        // Routes that are themselves not accepted (say, every rule invalid) count as attached too, as the spec
        // of attachedRoutes requires.
        for (listener_index, _) in &attached {
            gateway.listeners[*listener_index].attached_routes += 1;
        }
        if accepted.is_ok() {
            for (listener_index, hostnames) in &attached {
                let listener = &gateway.listeners[*listener_index];
                if !listener.ready {
                    continue;
                }
                let Some(protocol) = listener.protocol else {
                    continue;
                };
                for ip in &gateway.addresses {
                    let Ok(entry) =
                        cx.routes.listener(socket(*ip, listener.port), protocol, &gateway.reference.to_string())
                    else {
                        continue;
                    };
                    for host in hostnames {
                        let routes = entry.hosts.entry(host.clone()).or_default();
                        for (rule_index, rule) in rules.iter().enumerate() {
                            let Some(rule) = rule else { continue };
                            for (match_index, matcher) in rule.matches.iter().enumerate() {
                                let name = format!(
                                    "httproute/{}/{}/rule/{rule_index}/match/{match_index}",
                                    key.namespace, key.name
                                );
                                // Two listeners sharing a socket (or two parentRefs) can bring the
                                // same route to the same host: it is served once.
                                if routes.iter().any(|r| r.route.name == name) {
                                    continue;
                                }
                                let ir_route = Route {
                                    name,
                                    matcher: matcher.clone(),
                                    filters: rule.filters.clone(),
                                    action: rule.action.clone(),
                                };
                                let rank = RouteRank::new(
                                    &ir_route,
                                    created.clone(),
                                    key.to_string(),
                                    rule_index,
                                    match_index,
                                );
                                routes.push(RankedRoute { rank, route: ir_route });
                            }
                        }
                    }
                }
            }
        }
        parents.push(RouteParentStatus {
            parent_ref: parent.clone(),
            controller_name: cx.options.gateway_controller.clone(),
            conditions,
        });
    }
    cx.set_status(reference, ResourceStatus::Route(RouteStatus { parents }));
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
        out.headers = value_matches(&spec.headers, &at(format!(".matches[{m}].headers")), &mut errors);
        out.query_params = value_matches(&spec.query_params, &at(format!(".matches[{m}].queryParams")), &mut errors);
        if let Some(method) = &spec.method {
            const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
            if !METHODS.contains(&method.as_str()) {
                errors.push((at(format!(".matches[{m}].method")), format!("{method:?} is not an HTTP method")));
            }
            out.method = Some(method.clone());
        }
        matches.push(out);
    }
    let all_prefix = matches.iter().all(|m| matches!(m.path, PathMatch::Prefix(_)));

    let mut filters = Vec::new();
    let mut redirect = None;
    for (f, filter) in rule.filters.iter().enumerate() {
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
            for (b, backend_ref) in rule.backend_refs.iter().enumerate() {
                let field = at(format!(".backendRefs[{b}]"));
                if !backend_ref.filters.is_empty() {
                    errors.push((format!("{field}.filters"), "per-backend filters are not supported yet".into()));
                }
                let weight = u32::try_from(backend_ref.weight.unwrap_or(1)).unwrap_or(0);
                match resolve_backend(cx, reference, backend_ref) {
                    Ok(pool) => pools.push(WeightedPool { pool: Some(pool), weight }),
                    Err(error) => {
                        cx.error(reference, field, error.message().to_string());
                        if problems.unresolved.is_none() {
                            problems.unresolved = Some((error.reason(), error.message().to_string()));
                        }
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

    if errors.is_empty() {
        Some(CompiledRule { matches, filters, action })
    } else {
        for (field, message) in errors.iter() {
            cx.error(reference, field.clone(), message.clone());
        }
        problems.invalid_rules.push(format!("rule {index}: {}", errors[0].1));
        None
    }
}

fn resolve_backend(
    cx: &mut Context<'_>,
    reference: &ResourceRef,
    backend_ref: &portico_resources::gateway::HttpBackendRef,
) -> Result<String, BackendError> {
    let backend = &backend_ref.backend;
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
        &RefEnd { group: GATEWAY_GROUP, kind: "HTTPRoute", namespace: &reference.key.namespace },
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

fn value_matches(specs: &[HttpHeaderMatch], field: &str, errors: &mut Vec<(String, String)>) -> Vec<ValueMatch> {
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let value = match spec.kind.as_deref().unwrap_or("Exact") {
                "Exact" => StringMatch::Exact(spec.value.clone()),
                "RegularExpression" => {
                    if let Err(e) = regex::Regex::new(&spec.value) {
                        errors.push((
                            format!("{field}[{i}].value"),
                            format!("invalid regular expression: {}", first_line(&e)),
                        ));
                    }
                    StringMatch::Regex(spec.value.clone())
                }
                other => {
                    errors.push((format!("{field}[{i}].type"), format!("{other:?} is not Exact or RegularExpression")));
                    StringMatch::Exact(spec.value.clone())
                }
            };
            if spec.name.is_empty()
                || !spec.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.!#$%&'*+^`|~".contains(&b))
            {
                errors.push((format!("{field}[{i}].name"), format!("{:?} is not a valid name", spec.name)));
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

fn first_line(error: &regex::Error) -> String {
    error.to_string().lines().last().unwrap_or("").trim().to_string()
}
