//! TLSRoute: TLS connections routed by server name, passed through or terminated (Gateway API TLS profile).

use crate::Context;
use crate::gateway::GatewayInfo;
use crate::httproute::resolve_backend;
use crate::route::{RouteProblems, RouteSource, attach, is_ours, oldest_first, validate_hostnames};
use portico_ir::{Protocol, TlsRoute, WeightedPool};
use portico_resources::{Kind, ResourceRef};

/// Translates every TLSRoute that names one of Portico's Gateways.
pub fn translate_tls_routes(cx: &mut Context<'_>, gateways: &mut [GatewayInfo]) {
    for (key, route) in oldest_first(&cx.snapshot.tls_routes, |r| &r.metadata) {
        let reference = ResourceRef { kind: Kind::TlsRoute, key: key.clone() };
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
        let mut usable = validate_hostnames(cx, &source, &mut problems);
        if route.spec.rules.is_empty() {
            cx.error(&reference, "spec.rules", "a TLSRoute needs a rule with backendRefs");
            problems.invalid_rules.push("no rules".into());
            usable = false;
        }
        // A TLSRoute's rules have no matches: together they are one weighted set of backends.
        let mut backends = Vec::new();
        for (r, rule) in route.spec.rules.iter().enumerate() {
            for (b, backend_ref) in rule.backend_refs.iter().enumerate() {
                let weight = u32::try_from(backend_ref.weight.unwrap_or(1)).unwrap_or(0);
                match resolve_backend(cx, &reference, &backend_ref.backend) {
                    Ok(pool) => backends.push(WeightedPool { pool: Some(pool), weight }),
                    Err(error) => {
                        cx.error(&reference, format!("spec.rules[{r}].backendRefs[{b}]"), error.message().to_string());
                        problems.unresolved(error.reason(), error.message().to_string());
                        backends.push(WeightedPool { pool: None, weight });
                    }
                }
            }
        }
        let attachments = attach(cx, gateways, &source, &problems, usable);
        for attachment in attachments.iter().filter(|a| a.protocol == Protocol::Tls) {
            let Ok(entry) = cx.routes.listener(attachment.socket, attachment.protocol, &attachment.owner) else {
                continue;
            };
            for host in &attachment.hostnames {
                // Routes come oldest first: for a name claimed twice, the older route keeps it.
                entry.tls_routes.entry(host.clone()).or_insert_with(|| TlsRoute {
                    name: format!("tlsroute/{}/{}", key.namespace, key.name),
                    hostname: host.clone(),
                    passthrough: attachment.passthrough,
                    backends: backends.clone(),
                });
            }
        }
    }
}
