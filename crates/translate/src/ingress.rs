//! Ingress: rules on Portico's Ingress VIPs, HTTP on 80 and HTTPS on 443 for hosts with a `tls` entry.

use crate::assemble::{Age, RankedRoute, RouteRank, socket};
use crate::backend::{ServicePort, service_pool};
use crate::tls::{CertError, load_certificate};
use crate::{Context, hostname};
use portico_ir::{Action, PathMatch, Protocol, Redirect, Route, RouteMatch, SniCertificate, TlsRoute, WeightedPool};
use portico_resources::core::{Ingress, IngressBackend};
use portico_resources::status::{IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus, ResourceStatus};
use portico_resources::{Kind, ObjectKey, ResourceRef};

const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// The names of Portico's IngressClasses, and the class that class-less Ingresses fall to (if Portico's).
fn classes(cx: &Context<'_>) -> (Vec<String>, Option<String>) {
    let ours: Vec<(String, bool)> = cx
        .snapshot
        .ingress_classes
        .iter()
        .filter(|(_, c)| {
            c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(cx.options.ingress_controller.as_str())
        })
        .map(|(key, c)| {
            let default = c
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true");
            (key.name.clone(), default)
        })
        .collect();
    let default =
        ours.iter().find(|(_, d)| *d).map(|(n, _)| n.clone()).or_else(|| cx.options.default_ingress_class.clone());
    let mut names: Vec<String> = ours.into_iter().map(|(n, _)| n).collect();
    if let Some(d) = &cx.options.default_ingress_class {
        names.push(d.clone());
    }
    (names, default)
}

/// Translates every Ingress of one of Portico's classes.
pub fn translate_ingresses(cx: &mut Context<'_>) {
    let (ours, default) = classes(cx);
    let ingresses: Vec<(&ObjectKey, &Ingress)> = cx.snapshot.ingresses.iter().map(|(k, i)| (k, i.as_ref())).collect();
    for (key, ingress) in ingresses {
        let spec = ingress.spec.clone().unwrap_or_default();
        let legacy = ingress.metadata.annotations.as_ref().and_then(|a| a.get(LEGACY_CLASS_ANNOTATION)).cloned();
        let class = spec.ingress_class_name.clone().or(legacy).or_else(|| default.clone());
        if class.is_none_or(|c| !ours.contains(&c)) {
            continue;
        }
        translate_ingress(cx, key, ingress);
    }
}

/// Annotations that turn an Ingress into TLS passthrough: the operator's spelling, so existing manifests
/// work, and Portico's own.
const PASSTHROUGH_ANNOTATIONS: [&str; 2] = ["passthrough.ako.vmware.com/enabled", "portico.dev/passthrough"];

fn translate_ingress(cx: &mut Context<'_>, key: &ObjectKey, ingress: &Ingress) {
    let reference = ResourceRef { kind: Kind::Ingress, key: key.clone() };
    let spec = ingress.spec.clone().unwrap_or_default();
    let annotations = ingress.metadata.annotations.clone().unwrap_or_default();
    if PASSTHROUGH_ANNOTATIONS.iter().any(|a| annotations.get(*a).is_some_and(|v| v == "true")) {
        translate_passthrough(cx, &reference, &spec);
        write_status(cx, reference);
        return;
    }
    let created = Age::of(&ingress.metadata);
    let owner = reference.to_string();

    // TLS: which hosts get HTTPS, with which certificate. The operator's `ako.vmware.com/enable-tls: "true"`
    // serves every rule host with the default certificate.
    let mut tls_hosts: Vec<(Option<String>, Option<String>)> = Vec::new();
    if annotations.get("ako.vmware.com/enable-tls").is_some_and(|v| v == "true") {
        let certificate = cx.default_certificate(&reference, "metadata.annotations");
        for host in spec.rules.iter().flatten().filter_map(|r| r.host.clone()) {
            tls_hosts.push((Some(host), certificate.clone()));
        }
    }
    for (i, tls) in spec.tls.iter().flatten().enumerate() {
        let certificate = match &tls.secret_name {
            Some(secret) => {
                let secret_key = ObjectKey::new(&key.namespace, secret);
                match load_certificate(cx.snapshot, &secret_key) {
                    Ok(certificate) => {
                        cx.out.ir.certificates.insert(secret_key.to_string(), certificate);
                        Some(secret_key.to_string())
                    }
                    Err(CertError::NotFound(m) | CertError::Invalid(m)) => {
                        cx.error(&reference, format!("spec.tls[{i}].secretName"), m);
                        None
                    }
                }
            }
            None => cx.default_certificate(&reference, &format!("spec.tls[{i}]")),
        };
        let hosts = tls.hosts.clone().unwrap_or_default();
        if hosts.is_empty() {
            tls_hosts.push((None, certificate));
        } else {
            tls_hosts.extend(hosts.into_iter().map(|h| (Some(h), certificate.clone())));
        }
    }
    // Only hosts with a usable certificate get HTTPS: without one every handshake would fail (the error on
    // spec.tls says why), so such a host stays on HTTP only.
    let https_for = |host: &str| {
        tls_hosts
            .iter()
            .any(|(h, certificate)| certificate.is_some() && h.as_deref().is_none_or(|h| hostname::covers(h, host)))
    };

    let mut rules: Vec<(String, Vec<Route>)> = Vec::new();
    for (r, rule) in spec.rules.iter().flatten().enumerate() {
        let host = rule.host.clone().unwrap_or_else(|| "*".into());
        if host != "*"
            && let Err(message) = hostname::validate(&host)
        {
            cx.error(&reference, format!("spec.rules[{r}].host"), message);
            continue;
        }
        let mut routes = Vec::new();
        for (p, path) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
            let field = format!("spec.rules[{r}].http.paths[{p}]");
            let value = path.path.clone().unwrap_or_else(|| "/".into());
            if !value.starts_with('/') {
                cx.error(&reference, format!("{field}.path"), format!("{value:?} must start with /"));
                continue;
            }
            let matcher = match path.path_type.as_str() {
                "Exact" => PathMatch::Exact(value),
                "Prefix" | "ImplementationSpecific" => PathMatch::Prefix(value),
                other => {
                    cx.error(
                        &reference,
                        format!("{field}.pathType"),
                        format!("{other:?} is not Exact, Prefix or ImplementationSpecific"),
                    );
                    continue;
                }
            };
            let Some(action) = backend_action(cx, &reference, &path.backend, &format!("{field}.backend")) else {
                continue;
            };
            routes.push(Route::new(
                format!("ingress/{}/{}/rule/{r}/path/{p}", key.namespace, key.name),
                RouteMatch { path: matcher, ..RouteMatch::default() },
                action,
            ));
        }
        rules.push((host, routes));
    }
    if let Some(backend) = &spec.default_backend
        && let Some(action) = backend_action(cx, &reference, backend, "spec.defaultBackend")
    {
        // The default backend answers whatever the rules do not: every host of this Ingress, and any host.
        let fallback =
            Route::new(format!("ingress/{}/{}/default", key.namespace, key.name), RouteMatch::default(), action);
        for (_, routes) in rules.iter_mut() {
            routes.push(fallback.clone());
        }
        if !rules.iter().any(|(h, _)| h == "*") {
            rules.push(("*".into(), vec![fallback]));
        }
    }

    for ip in cx.ingress_bind_addresses() {
        for (port, protocol) in [(80u16, Protocol::Http), (443, Protocol::Https)] {
            let wanted: Vec<&(String, Vec<Route>)> =
                rules.iter().filter(|(host, _)| protocol == Protocol::Http || https_for(host)).collect();
            if wanted.is_empty() {
                continue;
            }
            let entry = match cx.routes.listener(socket(ip, port), protocol, &owner) {
                Ok(entry) => entry,
                Err(message) => {
                    cx.out.diagnostics.push(portico_resources::Diagnostic::error(reference.clone(), "spec", message));
                    continue;
                }
            };
            if protocol == Protocol::Https {
                for (host, certificate) in &tls_hosts {
                    if let Some(certificate) = certificate {
                        entry
                            .certificates
                            .push(SniCertificate { hostname: host.clone(), certificate: certificate.clone() });
                    }
                }
            }
            for (host, routes) in wanted {
                let vhost = entry.hosts.entry(host.clone()).or_default();
                for (i, route) in routes.iter().enumerate() {
                    // The default backend ranks after every rule path.
                    let rank = if route.name.ends_with("/default") {
                        RouteRank::new(route, Age::DefaultBackend, key.to_string(), usize::MAX, 0)
                    } else {
                        RouteRank::new(route, created.clone(), key.to_string(), i, 0)
                    };
                    vhost.push(RankedRoute { rank, route: route.clone() });
                }
            }
        }
    }

    write_status(cx, reference);
}

fn write_status(cx: &mut Context<'_>, reference: ResourceRef) {
    let status = IngressStatus {
        load_balancer: IngressLoadBalancerStatus {
            ingress: cx
                .ingress_addresses()
                .iter()
                .map(|ip| IngressLoadBalancerIngress { ip: ip.to_string() })
                .collect(),
        },
    };
    cx.set_status(reference, ResourceStatus::Ingress(status));
}

/// A passthrough Ingress: each rule's host is routed by SNI on :443 to the backend of its first path (the
/// TLS stream is not decrypted, so paths cannot matter), and :80 redirects to HTTPS, as the operator does.
fn translate_passthrough(cx: &mut Context<'_>, reference: &ResourceRef, spec: &portico_resources::core::IngressSpec) {
    let key = &reference.key;
    for (r, rule) in spec.rules.iter().flatten().enumerate() {
        let Some(host) = rule.host.clone() else {
            cx.error(reference, format!("spec.rules[{r}].host"), "a passthrough rule needs a host (TLS routes by SNI)");
            continue;
        };
        let Some(path) = rule.http.as_ref().and_then(|h| h.paths.first()) else {
            cx.error(reference, format!("spec.rules[{r}].http.paths"), "a passthrough rule needs a backend");
            continue;
        };
        let Some(Action::Forward(backends)) =
            backend_action(cx, reference, &path.backend, &format!("spec.rules[{r}].http.paths[0].backend"))
        else {
            continue;
        };
        let owner = reference.to_string();
        for ip in cx.ingress_bind_addresses() {
            match cx.routes.listener(socket(ip, 443), Protocol::Tls, &owner) {
                Ok(entry) => {
                    entry.tls_routes.entry(host.clone()).or_insert_with(|| TlsRoute {
                        name: format!("ingress/{}/{}/passthrough/{r}", key.namespace, key.name),
                        hostname: host.clone(),
                        passthrough: true,
                        backends: backends.clone(),
                    });
                }
                Err(message) => cx.error(reference, "spec", message),
            }
            let redirect = Action::Redirect(Redirect {
                scheme: Some("https".into()),
                port: Some(443),
                status: 301,
                ..Redirect::default()
            });
            let route = Route::new(
                format!("ingress/{}/{}/passthrough/{r}/redirect", key.namespace, key.name),
                RouteMatch::default(),
                redirect,
            );
            match cx.routes.listener(socket(ip, 80), Protocol::Http, &owner) {
                Ok(entry) => {
                    let rank = RouteRank::new(&route, Age::Unknown, key.to_string(), r, 0);
                    entry.hosts.entry(host.clone()).or_default().push(RankedRoute { rank, route });
                }
                Err(message) => cx.error(reference, "spec", message),
            }
        }
    }
}

fn backend_action(
    cx: &mut Context<'_>,
    reference: &ResourceRef,
    backend: &IngressBackend,
    field: &str,
) -> Option<Action> {
    let Some(service) = &backend.service else {
        cx.error(reference, field, "only service backends are supported");
        return None;
    };
    let port = match service.port.as_ref().map(|p| (p.number, p.name.as_deref())) {
        Some((Some(number), _)) => ServicePort::Number(number),
        Some((None, Some(name))) => ServicePort::Name(name),
        _ => {
            cx.error(reference, format!("{field}.service.port"), "a port number or name is required");
            return None;
        }
    };
    match service_pool(cx, &ObjectKey::new(&reference.key.namespace, &service.name), port) {
        Ok(pool) => Some(Action::Forward(vec![WeightedPool { pool: Some(pool), weight: 1 }])),
        Err(error) => {
            cx.error(reference, format!("{field}.service"), error.message().to_string());
            Some(Action::Respond { status: 503, body: "backend service not found\n".into() })
        }
    }
}
