//! GatewayClasses, Gateways and their listeners: which are Portico's, which are valid, and where they listen.

use crate::assemble::socket;
use crate::refgrant::{RefEnd, permitted};
use crate::tls::{CertError, load_certificate};
use crate::{Context, hostname, not, ok};
use portico_ir::{Protocol, SniCertificate};
use portico_resources::core::LabelSelector;
use portico_resources::gateway::{Gateway, RouteGroupKind};
use portico_resources::status::{
    Condition, GatewayStatus, GatewayStatusAddress, ListenerStatus, ResourceStatus, SupportedFeature,
};
use portico_resources::{Kind, ObjectKey, ResourceRef, Snapshot};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// A Gateway of Portico's, after validation.
pub struct GatewayInfo {
    pub reference: ResourceRef,
    /// `reference` as text, which names the owner of the listeners the Gateway's routes go to.
    pub owner: String,
    pub generation: Option<i64>,
    pub addresses: Vec<IpAddr>,
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerInfo>,
}

/// A listener after validation; routes attach to it when `ready`.
pub struct ListenerInfo {
    pub name: String,
    pub hostname: Option<String>,
    pub port: u16,
    pub protocol: Option<Protocol>,
    pub namespaces: NamespacePolicy,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub conditions: Vec<Condition>,
    pub attached_routes: i32,
    /// Accepted, resolved and not conflicted: traffic is served.
    pub ready: bool,
    /// A TLS listener in Passthrough mode.
    pub passthrough: bool,
    /// Hostnames taken by accepted HTTPRoutes and GRPCRoutes, by kind: `(namespace/name, hostnames)`. The
    /// Gateway API lets only one of the two kinds serve a hostname on a listener. (By kind, so that a route
    /// scans only the other kind's claims: none, usually.)
    pub claims: BTreeMap<&'static str, Vec<(String, Vec<String>)>>,
}

/// Which namespaces' routes a listener admits.
pub enum NamespacePolicy {
    Same,
    All,
    Selector(LabelSelector),
}

impl ListenerInfo {
    /// Whether a route of `kind` in `namespace` may attach.
    pub fn admits(&self, snapshot: &Snapshot, gateway_namespace: &str, kind: &str, namespace: &str) -> bool {
        let kind_ok = self.supported_kinds.iter().any(|k| k.kind == kind);
        let namespace_ok = match &self.namespaces {
            NamespacePolicy::Same => namespace == gateway_namespace,
            NamespacePolicy::All => true,
            NamespacePolicy::Selector(selector) => selector_matches(snapshot, selector, namespace),
        };
        kind_ok && namespace_ok
    }
}

fn selector_matches(snapshot: &Snapshot, selector: &LabelSelector, namespace: &str) -> bool {
    let mut labels: BTreeMap<String, String> = snapshot
        .namespaces
        .get(&ObjectKey::new("", namespace))
        .and_then(|ns| ns.metadata.labels.clone())
        .unwrap_or_default();
    labels.insert("kubernetes.io/metadata.name".into(), namespace.into());
    let labels_ok = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// The Gateway API features (names of `sigs.k8s.io/gateway-api/pkg/features`) Portico implements, sorted.
/// Not listed: GatewayHTTPListenerIsolation (listeners sharing a socket share their routes), UDPRoute, Mesh.
const SUPPORTED_FEATURES: [&str; 30] = [
    "BackendTLSPolicy",
    "BackendTLSPolicySANValidation",
    "GRPCRoute",
    "Gateway",
    "GatewayAddressEmpty",
    "GatewayPort8080",
    "GatewayStaticAddresses",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteBackendTimeout",
    "HTTPRouteCORS",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
    "TLSRoute",
    "TLSRouteModeMixed",
    "TLSRouteModeTerminate",
];

/// Marks Portico's GatewayClasses Accepted and validates the Gateways of those classes, registering their
/// listeners. Gateways are taken oldest first, so when two claim one socket the older keeps it.
pub fn translate_gateways(cx: &mut Context<'_>) -> Vec<GatewayInfo> {
    let ours: Vec<ObjectKey> = cx
        .snapshot
        .gateway_classes
        .iter()
        .filter(|(_, class)| class.spec.controller_name == cx.options.gateway_controller)
        .map(|(key, _)| key.clone())
        .collect();
    for key in &ours {
        let class = &cx.snapshot.gateway_classes[key];
        let condition = ok("Accepted", "Accepted", "Handled by Portico", class.metadata.generation);
        let supported_features =
            SUPPORTED_FEATURES.iter().map(|name| SupportedFeature { name: (*name).to_string() }).collect();
        cx.set_status(
            ResourceRef { kind: Kind::GatewayClass, key: key.clone() },
            ResourceStatus::GatewayClass { conditions: vec![condition], supported_features },
        );
    }
    let mut gateways: Vec<(&ObjectKey, &Gateway)> = cx
        .snapshot
        .gateways
        .iter()
        .filter(|(_, g)| ours.iter().any(|c| c.name == g.spec.gateway_class_name))
        .map(|(key, g)| (key, g.as_ref()))
        .collect();
    gateways.sort_by(|(a_key, a), (b_key, b)| crate::route::age_order((&a.metadata, a_key), (&b.metadata, b_key)));
    let pool = crate::address::assign_pool(&cx.options.gateway_address_pool, &gateways);
    gateways.into_iter().map(|(key, gateway)| translate_gateway(cx, key, gateway, &pool)).collect()
}

fn translate_gateway(
    cx: &mut Context<'_>,
    key: &ObjectKey,
    gateway: &Gateway,
    pool: &BTreeMap<ObjectKey, IpAddr>,
) -> GatewayInfo {
    let reference = ResourceRef { kind: Kind::Gateway, key: key.clone() };
    let generation = gateway.metadata.generation;
    let mut conditions = Vec::new();

    let mut addresses = Vec::new();
    let mut unsupported_address = None;
    for (i, address) in gateway.spec.addresses.iter().enumerate() {
        let kind = address.kind.as_deref().unwrap_or("IPAddress");
        match (kind, address.value.parse::<IpAddr>()) {
            ("IPAddress", Ok(ip)) => addresses.push(ip),
            ("IPAddress", Err(_)) => {
                unsupported_address = Some(format!("{:?} is not an IP address", address.value));
                cx.error(
                    &reference,
                    format!("spec.addresses[{i}].value"),
                    format!("{:?} is not an IP address", address.value),
                );
            }
            (other, _) => {
                unsupported_address = Some(format!("address type {other} is not supported (use IPAddress)"));
                cx.error(
                    &reference,
                    format!("spec.addresses[{i}].type"),
                    format!("{other} is not supported; use IPAddress"),
                );
            }
        }
    }
    let mut waiting = None;
    if gateway.spec.addresses.is_empty() {
        match crate::address::gateway_address(cx, key, gateway, pool) {
            crate::address::Assigned::Addresses(assigned) => addresses.extend(assigned),
            crate::address::Assigned::Waiting(why) => waiting = Some(why),
        }
    }

    let mut listeners: Vec<ListenerInfo> =
        gateway.spec.listeners.iter().enumerate().map(|(i, _)| validate_listener(cx, &reference, gateway, i)).collect();
    mark_conflicts(&mut listeners);
    for (i, listener) in listeners.iter().enumerate() {
        if let Some(conflict) = listener.conditions.iter().find(|c| c.kind == "Conflicted" && c.is_true()) {
            cx.error(&reference, format!("spec.listeners[{i}]"), format!("{}: {}", conflict.reason, conflict.message));
        }
    }
    // A Gateway that is not accepted claims no socket, not even on the addresses that are usable.
    if unsupported_address.is_some() {
        addresses.clear();
    }

    // Claim sockets for listeners that are ready.
    for listener in listeners.iter_mut().filter(|l| l.ready) {
        let Some(protocol) = listener.protocol else {
            continue;
        };
        let mut clash = None;
        for ip in &addresses {
            let address = socket(*ip, listener.port);
            if let Some((existing, by)) = cx.routes.protocol_of(address)
                && existing.is_tls() != protocol.is_tls()
            {
                clash = Some(format!("{address} already serves {existing:?} for {by}"));
            }
        }
        if let Some(message) = clash {
            listener.ready = false;
            set_condition(
                &mut listener.conditions,
                Condition::new("Conflicted", true, "ProtocolConflict", message.clone(), generation),
            );
            set_condition(&mut listener.conditions, not("Programmed", "Invalid", message, generation));
        }
    }
    for (i, listener) in listeners.iter().enumerate().filter(|(_, l)| l.ready) {
        let Some(protocol) = listener.protocol else {
            continue;
        };
        let spec = &gateway.spec.listeners[i];
        let certificates: Vec<String> = spec
            .tls
            .iter()
            .flat_map(|t| t.certificate_refs.iter())
            .map(|r| format!("{}/{}", r.namespace.as_deref().unwrap_or(&key.namespace), r.name))
            .filter(|name| cx.out.ir.certificates.contains_key(name))
            .collect();
        let defaulted = spec
            .tls
            .as_ref()
            .is_some_and(|t| t.certificate_refs.is_empty() && t.mode.as_deref() != Some("Passthrough"));
        let certificates = match (&cx.options.default_certificate, defaulted) {
            (Some(default), true) if cx.out.ir.certificates.contains_key(default) => vec![default.clone()],
            _ => certificates,
        };
        for ip in &addresses {
            if let Ok(entry) = cx.routes.listener(socket(*ip, listener.port), protocol, &reference.to_string()) {
                for certificate in &certificates {
                    entry
                        .certificates
                        .push(SniCertificate { hostname: listener.hostname.clone(), certificate: certificate.clone() });
                }
            }
        }
    }

    let valid = listeners.iter().filter(|l| l.ready).count();
    match (&unsupported_address, valid, listeners.len()) {
        (Some(why), _, _) => conditions.push(not("Accepted", "UnsupportedAddress", why.clone(), generation)),
        (None, 0, n) if n > 0 => {
            conditions.push(not("Accepted", "ListenersNotValid", "No listener is valid", generation))
        }
        (None, v, n) if v < n => {
            conditions.push(ok("Accepted", "ListenersNotValid", "Some listeners are not valid", generation))
        }
        _ => conditions.push(ok("Accepted", "Accepted", "Gateway accepted", generation)),
    }
    if unsupported_address.is_some() {
        conditions.push(not("Programmed", "AddressNotUsable", "The requested address cannot be used", generation));
    } else if addresses.is_empty() {
        let why = waiting.unwrap_or_else(|| "No address: set spec.addresses".into());
        conditions.push(not("Programmed", "AddressNotAssigned", why, generation));
    } else if valid == 0 {
        conditions.push(not("Programmed", "Invalid", "No listener is valid", generation));
    } else {
        conditions.push(ok("Programmed", "Programmed", "Listening", generation));
    }
    // Without a usable address nothing listens: say so on the listeners too, not only on the Gateway.
    if addresses.is_empty() {
        for listener in listeners.iter_mut().filter(|l| l.ready) {
            listener.ready = false;
            set_condition(
                &mut listener.conditions,
                not("Programmed", "Pending", "The Gateway has no usable address", generation),
            );
        }
    }
    let owner = reference.to_string();
    GatewayInfo { reference, owner, generation, addresses, conditions, listeners }
}

fn validate_listener(cx: &mut Context<'_>, reference: &ResourceRef, gateway: &Gateway, index: usize) -> ListenerInfo {
    let spec = &gateway.spec.listeners[index];
    let generation = gateway.metadata.generation;
    let field = |rest: &str| format!("spec.listeners[{index}]{rest}");
    let mut accepted: Result<(), (&str, String)> = Ok(());
    let mut resolved: Result<(), (&str, String)> = Ok(());
    let mut no_certificate = false;

    let protocol = match spec.protocol.as_str() {
        "HTTP" => Some(Protocol::Http),
        "HTTPS" => Some(Protocol::Https),
        "TLS" => Some(Protocol::Tls),
        other => {
            let message = format!("protocol {other} is not supported on this listener (HTTP, HTTPS and TLS are)");
            cx.error(reference, field(".protocol"), message.clone());
            accepted = Err(("UnsupportedProtocol", message));
            None
        }
    };
    let port = u16::try_from(spec.port).ok().filter(|p| *p > 0);
    if port.is_none() {
        let message = format!("port {} is out of range 1-65535", spec.port);
        cx.error(reference, field(".port"), message.clone());
        accepted = Err(("PortUnavailable", message));
    }
    if let Some(name) = &spec.hostname
        && let Err(message) = hostname::validate(name)
    {
        cx.error(reference, field(".hostname"), message.clone());
        accepted = Err(("UnsupportedValue", message));
    }

    // Route kinds.
    let passthrough = protocol == Some(Protocol::Tls)
        && spec.tls.as_ref().and_then(|t| t.mode.as_deref()).unwrap_or("Terminate") == "Passthrough";
    let kinds: &[&str] = if protocol == Some(Protocol::Tls) { &["TLSRoute"] } else { &["HTTPRoute", "GRPCRoute"] };
    let default_kinds: Vec<RouteGroupKind> =
        kinds.iter().map(|k| RouteGroupKind { group: Some(GATEWAY_GROUP.into()), kind: k.to_string() }).collect();
    let allowed = spec.allowed_routes.clone().unwrap_or_default();
    let supported_kinds = if protocol.is_none() {
        // No route kind is supported on a listener whose protocol is not.
        Vec::new()
    } else if allowed.kinds.is_empty() {
        default_kinds
    } else {
        let (good, bad): (Vec<_>, Vec<_>) =
            allowed.kinds.iter().cloned().partition(|k| {
                kinds.contains(&k.kind.as_str()) && k.group.as_deref().is_none_or(|g| g == GATEWAY_GROUP)
            });
        if !bad.is_empty() {
            let names: Vec<&str> = bad.iter().map(|k| k.kind.as_str()).collect();
            let message = format!("route kinds {names:?} are not supported on a {} listener", spec.protocol);
            cx.error(reference, field(".allowedRoutes.kinds"), message.clone());
            resolved = Err(("InvalidRouteKinds", message));
        }
        good.into_iter().map(|k| RouteGroupKind { group: Some(GATEWAY_GROUP.into()), kind: k.kind }).collect()
    };
    let namespaces = match allowed.namespaces.as_ref().and_then(|n| n.from.as_deref()).unwrap_or("Same") {
        "All" => NamespacePolicy::All,
        "Selector" => match allowed.namespaces.as_ref().and_then(|n| n.selector.clone()) {
            Some(selector) => NamespacePolicy::Selector(selector),
            None => {
                cx.error(reference, field(".allowedRoutes.namespaces.selector"), "from: Selector needs a selector");
                NamespacePolicy::Same
            }
        },
        "Same" => NamespacePolicy::Same,
        other => {
            cx.error(
                reference,
                field(".allowedRoutes.namespaces.from"),
                format!("{other:?} is not Same, All or Selector"),
            );
            NamespacePolicy::Same
        }
    };

    // Certificates: HTTPS listeners and TLS listeners that terminate need them; passthrough ones must not.
    if protocol == Some(Protocol::Tls)
        && spec.tls.as_ref().and_then(|t| t.mode.as_deref()).is_some_and(|m| !matches!(m, "Terminate" | "Passthrough"))
    {
        let message = "tls.mode must be Terminate or Passthrough".to_string();
        cx.error(reference, field(".tls.mode"), message.clone());
        accepted = Err(("UnsupportedValue", message));
    }
    if protocol.is_some_and(Protocol::is_tls) && !passthrough {
        let tls = spec.tls.clone().unwrap_or_default();
        if protocol == Some(Protocol::Https) && tls.mode.as_deref().is_some_and(|m| m != "Terminate") {
            let message = "HTTPS listeners terminate TLS; use protocol TLS for Passthrough".to_string();
            cx.error(reference, field(".tls.mode"), message.clone());
            accepted = Err(("UnsupportedValue", message));
        }
        let mut usable = 0;
        let mut problems = Vec::new();
        if tls.certificate_refs.is_empty() && cx.options.default_certificate.is_some() {
            // No certificateRefs: the default certificate serves this listener.
            if cx.default_certificate(reference, &field(".tls")).is_some() {
                usable += 1;
            } else {
                problems.push(("InvalidCertificateRef", "the default certificate is not usable".to_string()));
            }
        } else if tls.certificate_refs.is_empty() {
            problems.push(("InvalidCertificateRef", "a terminating listener needs tls.certificateRefs".to_string()));
            cx.error(
                reference,
                field(".tls.certificateRefs"),
                "a listener that terminates TLS needs at least one certificate",
            );
        }
        for (i, cert_ref) in tls.certificate_refs.iter().enumerate() {
            let at = field(&format!(".tls.certificateRefs[{i}]"));
            let group = cert_ref.group.as_deref().unwrap_or("");
            let kind = cert_ref.kind.as_deref().unwrap_or("Secret");
            let namespace = cert_ref.namespace.as_deref().unwrap_or(&reference.key.namespace);
            let secret_key = ObjectKey::new(namespace, &cert_ref.name);
            let problem = if !group.is_empty() || kind != "Secret" {
                Some(("InvalidCertificateRef", format!("{kind} in group {group:?} is not a Secret")))
            } else if !permitted(
                cx.snapshot,
                &RefEnd { group: GATEWAY_GROUP, kind: "Gateway", namespace: &reference.key.namespace },
                &RefEnd { group: "", kind: "Secret", namespace },
                &cert_ref.name,
            ) {
                Some((
                    "RefNotPermitted",
                    format!("no ReferenceGrant in {namespace} lets this Gateway use Secret {secret_key}"),
                ))
            } else {
                match load_certificate(cx.snapshot, &secret_key) {
                    Ok(certificate) => {
                        cx.out.ir.certificates.insert(secret_key.to_string(), certificate);
                        usable += 1;
                        None
                    }
                    Err(CertError::NotFound(m) | CertError::Invalid(m)) => Some(("InvalidCertificateRef", m)),
                }
            };
            if let Some((reason, message)) = problem {
                cx.error(reference, at, message.clone());
                problems.push((reason, message));
            }
        }
        if let Some((reason, message)) = problems.into_iter().next() {
            if resolved.is_ok() {
                resolved = Err((reason, message));
            }
            // With no usable certificate the listener is accepted but cannot be programmed (spec: the
            // Accepted reasons do not cover references; ResolvedRefs says why).
            if usable == 0 {
                no_certificate = true;
            }
        }
    }

    let mut conditions = Vec::new();
    match &accepted {
        Ok(()) => conditions.push(ok("Accepted", "Accepted", "Listener accepted", generation)),
        Err((reason, message)) => conditions.push(not("Accepted", reason, message.clone(), generation)),
    }
    match &resolved {
        Ok(()) => conditions.push(ok("ResolvedRefs", "ResolvedRefs", "References resolved", generation)),
        Err((reason, message)) => conditions.push(not("ResolvedRefs", reason, message.clone(), generation)),
    }
    conditions.push(Condition::new("Conflicted", false, "NoConflicts", "No conflicts", generation));
    let ready = accepted.is_ok()
        && !no_certificate
        && (resolved.is_ok() || matches!(resolved, Err(("InvalidRouteKinds", _))))
        && port.is_some();
    if ready {
        conditions.push(ok("Programmed", "Programmed", "Listening", generation));
    } else {
        conditions.push(not("Programmed", "Invalid", "Listener is not valid", generation));
    }
    ListenerInfo {
        name: spec.name.clone(),
        hostname: spec.hostname.clone(),
        port: port.unwrap_or(0),
        protocol,
        namespaces,
        supported_kinds,
        conditions,
        attached_routes: 0,
        ready: ready && protocol.is_some(),
        passthrough,
        claims: BTreeMap::new(),
    }
}

/// Within one Gateway: listeners on one port must agree on the protocol, and those with the same protocol
/// must have distinct hostnames. Both sides of a conflict stop serving, as the spec says.
fn mark_conflicts(listeners: &mut [ListenerInfo]) {
    let mut by_port: HashMap<u16, Vec<usize>> = HashMap::new();
    for (i, l) in listeners.iter().enumerate() {
        by_port.entry(l.port).or_default().push(i);
    }
    for indexes in by_port.values() {
        // HTTPS and TLS listeners share a port (the server name tells them apart); HTTP shares with no TLS one.
        let family = |p: Option<Protocol>| p.map(Protocol::is_tls);
        let protocols: Vec<_> = indexes.iter().map(|i| family(listeners[*i].protocol)).collect();
        let mixed = protocols.windows(2).any(|w| w[0] != w[1]);
        for &i in indexes {
            let hostname_clash = indexes.iter().any(|&j| {
                j != i
                    && family(listeners[j].protocol) == family(listeners[i].protocol)
                    && listeners[j].hostname == listeners[i].hostname
            });
            let reason = if mixed {
                Some(("ProtocolConflict", "another listener on this port uses a different protocol"))
            } else if hostname_clash {
                Some(("HostnameConflict", "another listener on this port has the same hostname"))
            } else {
                None
            };
            if let Some((reason, message)) = reason {
                let generation = listeners[i].conditions.first().and_then(|c| c.observed_generation);
                let listener = &mut listeners[i];
                listener.ready = false;
                set_condition(
                    &mut listener.conditions,
                    Condition::new("Conflicted", true, reason, message, generation),
                );
                set_condition(&mut listener.conditions, not("Programmed", "Invalid", message, generation));
            }
        }
    }
}

fn set_condition(conditions: &mut Vec<Condition>, condition: Condition) {
    match conditions.iter_mut().find(|c| c.kind == condition.kind) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

/// Writes each Gateway's status, once routes have been counted.
pub fn write_gateway_statuses(cx: &mut Context<'_>, gateways: &[GatewayInfo]) {
    for gateway in gateways {
        let status = GatewayStatus {
            addresses: gateway
                .addresses
                .iter()
                .map(|ip| GatewayStatusAddress { kind: "IPAddress".into(), value: ip.to_string() })
                .collect(),
            conditions: gateway.conditions.clone(),
            listeners: gateway
                .listeners
                .iter()
                .map(|l| ListenerStatus {
                    name: l.name.clone(),
                    supported_kinds: l.supported_kinds.clone(),
                    attached_routes: l.attached_routes,
                    conditions: l.conditions.clone(),
                })
                .collect(),
        };
        let _ = gateway.generation;
        cx.set_status(gateway.reference.clone(), ResourceStatus::Gateway(status));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn supported_features_are_sorted_and_unique() {
        // The spec asks for an ascending list; a feature listed twice would be a typo.
        assert!(super::SUPPORTED_FEATURES.windows(2).all(|w| w[0] < w[1]), "{:?}", super::SUPPORTED_FEATURES);
    }
}
