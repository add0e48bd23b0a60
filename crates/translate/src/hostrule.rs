//! The operator's HostRule and HTTPRule, applied to virtual hosts whatever API made them (Ingress or
//! HTTPRoute): aliases, enabling, and re-encryption to the pool.

use crate::policy::BalanceOverride;
use crate::{Context, ok};
use portico_ir::{Action, PathMatch, UpstreamTls};
use portico_resources::status::{Condition, ResourceStatus};
use portico_resources::{Kind, ObjectKey, ResourceRef};

/// HostRule fields that name objects inside the vendor's controller; Portico reports them instead of
/// silently dropping them.
const VENDOR_ONLY: [&str; 11] = [
    "wafPolicy",
    "httpPolicy",
    "applicationProfile",
    "analyticsProfile",
    "analyticsPolicy",
    "errorPageProfile",
    "icapProfile",
    "datascripts",
    "networkSecurityPolicy",
    "l7Rule",
    "gslb",
];

/// Applies HTTPRules, then HostRules (so that aliases copy the final routes).
pub fn apply_host_rules(cx: &mut Context<'_>) {
    apply_http_rules(cx);
    let rules: Vec<_> = cx.snapshot.host_rules.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (key, rule) in rules {
        let reference = ResourceRef { kind: Kind::HostRule, key };
        let generation = rule.metadata.generation;
        let vhost = &rule.spec.virtualhost;
        let mut remarks = Vec::new();
        let ignored: Vec<&str> = VENDOR_ONLY.iter().copied().filter(|f| vhost.other.contains_key(*f)).collect();
        for field in &ignored {
            cx.warning(
                &reference,
                format!("spec.virtualhost.{field}"),
                "names an object that exists only inside the vendor's controller; Portico does not apply it",
            );
        }
        if !ignored.is_empty() {
            remarks.push(format!("not applied (vendor-only): {}", ignored.join(", ")));
        }
        // `tls.sslKeyCertificate` of type secret overrides the certificate of the FQDN (and its aliases).
        let certificate =
            vhost.other.get("tls").and_then(|tls| host_rule_certificate(cx, &reference, tls, &mut remarks));
        // Everything else Portico does not read yet (tcpSettings, useRegex, ...) is reported too.
        let unsupported: Vec<&str> =
            vhost.other.keys().map(String::as_str).filter(|f| !VENDOR_ONLY.contains(f) && *f != "tls").collect();
        for field in &unsupported {
            cx.warning(&reference, format!("spec.virtualhost.{field}"), "not supported by Portico yet; not applied");
        }
        if !unsupported.is_empty() {
            remarks.push(format!("not applied (not supported yet): {}", unsupported.join(", ")));
        }
        let fqdn_type = vhost.fqdn_type.as_deref().unwrap_or("Exact");
        if fqdn_type != "Exact" {
            cx.warning(
                &reference,
                "spec.virtualhost.fqdnType",
                format!("{fqdn_type} is not supported yet; only Exact"),
            );
            remarks.push(format!("fqdnType {fqdn_type} not supported"));
        }
        let mut found = false;
        for listener in cx.routes.listeners_mut() {
            if vhost.enable_virtual_host == Some(false) {
                found |= listener.hosts.remove(&vhost.fqdn).is_some();
                found |= listener.tls_routes.remove(&vhost.fqdn).is_some();
                listener.certificates.retain(|c| c.hostname.as_deref() != Some(vhost.fqdn.as_str()));
                continue;
            }
            // A name routed by SNI (TLSRoute, passthrough Ingress) takes its aliases too, or an alias would get
            // only the port-80 redirect of a passthrough host and nothing on 443.
            if let Some(tls_route) = listener.tls_routes.get(&vhost.fqdn).cloned() {
                found = true;
                if fqdn_type == "Exact" {
                    for alias in &vhost.aliases {
                        listener.tls_routes.entry(alias.clone()).or_insert_with(|| {
                            let mut copy = tls_route.clone();
                            copy.hostname = alias.clone();
                            copy
                        });
                    }
                }
            }
            let Some(routes) = listener.hosts.get(&vhost.fqdn).cloned() else {
                continue;
            };
            found = true;
            if fqdn_type != "Exact" {
                continue;
            }
            if let Some(name) = &certificate
                && listener.protocol.is_tls()
            {
                // A HostRule certificate overrides the Ingress's or Gateway's for this name, as in the operator.
                listener.certificates.retain(|c| c.hostname.as_deref() != Some(vhost.fqdn.as_str()));
                listener
                    .certificates
                    .push(portico_ir::SniCertificate { hostname: Some(vhost.fqdn.clone()), certificate: name.clone() });
            }
            let certificates: Vec<_> = listener
                .certificates
                .iter()
                .filter(|c| c.hostname.as_deref() == Some(vhost.fqdn.as_str()))
                .cloned()
                .collect();
            for alias in &vhost.aliases {
                if listener.hosts.contains_key(alias) {
                    continue;
                }
                listener.hosts.insert(alias.clone(), routes.clone());
                for certificate in &certificates {
                    let mut copy = certificate.clone();
                    copy.hostname = Some(alias.clone());
                    listener.certificates.push(copy);
                }
            }
        }
        if !found {
            remarks.push(format!("no virtual host serves {} yet", vhost.fqdn));
        }
        let message = if remarks.is_empty() { "Applied".to_string() } else { remarks.join("; ") };
        cx.set_status(
            reference,
            ResourceStatus::Conditions { conditions: vec![ok("Accepted", "Accepted", message, generation)] },
        );
    }
}

/// The certificate a HostRule's `tls` names: `sslKeyCertificate` of type `secret` (a `kubernetes.io/tls` Secret
/// in the HostRule's namespace) is loaded into the IR; a `ref` (an object inside the vendor's controller),
/// `alternateCertificate`, `sslProfile` and `termination` are reported.
fn host_rule_certificate(
    cx: &mut Context<'_>,
    reference: &ResourceRef,
    tls: &serde_json::Value,
    remarks: &mut Vec<String>,
) -> Option<String> {
    for field in ["sslProfile", "termination"] {
        if tls.get(field).is_some() {
            cx.warning(reference, format!("spec.virtualhost.tls.{field}"), "not supported by Portico yet; not applied");
            remarks.push(format!("tls.{field} not applied"));
        }
    }
    let key_cert = tls.get("sslKeyCertificate")?;
    if key_cert.get("alternateCertificate").is_some() {
        cx.warning(
            reference,
            "spec.virtualhost.tls.sslKeyCertificate.alternateCertificate",
            "not supported yet; not applied",
        );
        remarks.push("tls.sslKeyCertificate.alternateCertificate not applied".into());
    }
    let name = key_cert.get("name").and_then(|n| n.as_str()).unwrap_or("");
    match key_cert.get("type").and_then(|t| t.as_str()).unwrap_or("secret") {
        "secret" => {
            let key = ObjectKey::new(&reference.key.namespace, name);
            match crate::tls::load_certificate(cx.snapshot, &key) {
                Ok(certificate) => {
                    cx.out.ir.certificates.insert(key.to_string(), certificate);
                    Some(key.to_string())
                }
                Err(crate::tls::CertError::NotFound(m) | crate::tls::CertError::Invalid(m)) => {
                    cx.error(reference, "spec.virtualhost.tls.sslKeyCertificate.name", m.clone());
                    remarks.push(format!("certificate not applied: {m}"));
                    None
                }
            }
        }
        other => {
            cx.warning(
                reference,
                "spec.virtualhost.tls.sslKeyCertificate.type",
                format!("type {other} names an object inside the vendor's controller; use type secret"),
            );
            remarks.push(format!("tls.sslKeyCertificate of type {other} not applied"));
            None
        }
    }
}

/// The balancing an HTTPRule path asks for: `loadBalancerPolicy`, `applicationPersistence` and
/// `healthMonitors` (names of HealthMonitor resources). Errors and unsupported fields become remarks.
fn http_rule_balance(
    cx: &mut Context<'_>,
    reference: &ResourceRef,
    index: usize,
    path: &portico_resources::ako::HttpRulePath,
    remarks: &mut Vec<String>,
) -> BalanceOverride {
    let mut settings = BalanceOverride::default();
    let at = |field: &str| format!("spec.paths[{index}].{field}");
    for (field, value) in &path.other {
        let result: Result<(), String> = match field.as_str() {
            "loadBalancerPolicy" => {
                let algorithm = value.get("algorithm").and_then(|v| v.as_str()).unwrap_or("LB_ALGORITHM_ROUND_ROBIN");
                let hash = value.get("hash").and_then(|v| v.as_str());
                let header = value.get("hostHeader").and_then(|v| v.as_str());
                portico_balance::algorithm_from_operator(algorithm, hash, header).map(|a| settings.algorithm = Some(a))
            }
            "applicationPersistence" => match value.as_str() {
                Some(name) => portico_balance::persistence_from_operator(name).map(|p| settings.persistence = Some(p)),
                None => Err("must be a persistence profile name".into()),
            },
            "healthMonitors" => {
                let names: Vec<&str> = value.as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
                match names.first() {
                    None => Ok(()),
                    Some(name) => {
                        if names.len() > 1 {
                            remarks.push(format!("paths[{index}].healthMonitors: only the first ({name}) is used"));
                        }
                        let key = ObjectKey::new(&reference.key.namespace, *name);
                        match cx.snapshot.health_monitors.get(&key) {
                            None => Err(format!("HealthMonitor {key} does not exist")),
                            Some(monitor) => {
                                serde_json::from_value::<portico_balance::OperatorHealthMonitor>(monitor.spec.clone())
                                    .map_err(|e| format!("HealthMonitor {key}: {e}"))
                                    .and_then(|m| portico_balance::health_check_from_operator(&m))
                                    .map(|(check, ignored)| {
                                        for field in ignored {
                                            remarks.push(format!("HealthMonitor {key}: {field} not honoured"));
                                        }
                                        settings.health = Some(check);
                                    })
                            }
                        }
                    }
                }
            }
            other => Err(format!("{other} is not honoured")),
        };
        if let Err(message) = result {
            cx.warning(reference, at(field), message.clone());
            remarks.push(format!("paths[{index}].{field}: {message}"));
        }
    }
    settings
}

/// HTTPRule paths: the pools behind matching routes of the FQDN (and its HostRule aliases) get the path's
/// settings: re-encryption (`tls.type: reencrypt`, verified against `destinationCA` or the system's CAs) and
/// balancing. Unlike the operator, which applies HTTPRules to Ingress paths only, Portico applies them to every
/// route of the FQDN: Ingress, HTTPRoute and GRPCRoute alike.
fn apply_http_rules(cx: &mut Context<'_>) {
    let rules: Vec<_> = cx.snapshot.http_rules.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (key, rule) in rules {
        let reference = ResourceRef { kind: Kind::HttpRule, key: key.clone() };
        let generation = rule.metadata.generation;
        let mut remarks = Vec::new();
        for (i, path) in rule.spec.paths.iter().enumerate() {
            let balance = http_rule_balance(cx, &reference, i, path, &mut remarks);
            let upstream = match &path.tls {
                Some(tls) if tls.kind != "reencrypt" => {
                    cx.error(
                        &reference,
                        format!("spec.paths[{i}].tls.type"),
                        format!("{:?} is not reencrypt", tls.kind),
                    );
                    continue;
                }
                Some(tls) => {
                    if let Some(profile) = &tls.ssl_profile {
                        let message = format!(
                            "SSL profile {profile:?} exists only inside the vendor's controller; Portico offers TLS \
                             1.2 and 1.3 with its own cipher suites"
                        );
                        cx.warning(&reference, format!("spec.paths[{i}].tls.sslProfile"), message);
                        remarks.push(format!("paths[{i}].tls.sslProfile {profile:?} not honoured"));
                    }
                    Some(UpstreamTls {
                        server_name: None,
                        ca_pem: tls.destination_ca.clone(),
                        subject_alt_names: Vec::new(),
                    })
                }
                None => None,
            };
            if upstream.is_none() && balance.is_empty() {
                continue;
            }
            let mut names = vec![rule.spec.fqdn.clone()];
            for host_rule in cx.snapshot.host_rules.values() {
                if host_rule.spec.virtualhost.fqdn == rule.spec.fqdn {
                    names.extend(host_rule.spec.virtualhost.aliases.iter().cloned());
                }
            }
            let suffix = format!("{}/{i}", key.name);
            let mut pools = Vec::new();
            let mut matched = false;
            for listener in cx.routes.listeners_mut() {
                let routes =
                    listener.hosts.iter_mut().filter(|(host, _)| names.contains(host)).flat_map(|(_, r)| r.iter_mut());
                for ranked in routes.filter(|r| under(&r.route.matcher.path, &path.target)) {
                    if let Action::Forward(backends) = &mut ranked.route.action {
                        for backend in backends.iter_mut() {
                            let Some(pool) = backend.pool.as_ref().filter(|p| !p.ends_with(&suffix)) else {
                                continue;
                            };
                            matched = true;
                            // Settings that change nothing (say, an explicit round robin) make no variant.
                            let unchanged = cx.out.ir.pools.get(pool).is_some_and(|p| {
                                let mut balanced = p.balance.clone();
                                balance.apply(&mut balanced);
                                upstream.is_none() && balanced == p.balance
                            });
                            if unchanged {
                                continue;
                            }
                            let variant = format!("{pool}+{suffix}");
                            pools.push((pool.clone(), variant.clone()));
                            backend.pool = Some(variant);
                        }
                    }
                }
            }
            if !matched {
                remarks.push(format!("paths[{i}]: no route of {} under {}", rule.spec.fqdn, path.target));
            } else if path.tls.as_ref().is_some_and(|t| t.destination_ca.is_none()) {
                cx.warning(
                    &reference,
                    format!("spec.paths[{i}].tls"),
                    "no destinationCA: the backend's certificate is verified against the system's CAs",
                );
            }
            for (plain, variant) in pools {
                if let Some(mut pool) = cx.out.ir.pools.get(&plain).cloned() {
                    pool.name = variant.clone();
                    if let Some(tls) = &upstream {
                        pool.tls = Some(UpstreamTls {
                            subject_alt_names: reencrypt_names(&rule.spec.fqdn, &plain),
                            server_name: Some(rule.spec.fqdn.clone()),
                            ..tls.clone()
                        });
                    }
                    balance.apply(&mut pool.balance);
                    cx.out.ir.pools.insert(variant, pool);
                }
            }
        }
        let message = if remarks.is_empty() { "Applied".to_string() } else { remarks.join("; ") };
        let conditions: Vec<Condition> = vec![ok("Accepted", "Accepted", message, generation)];
        cx.set_status(reference, ResourceStatus::Conditions { conditions });
    }
}

/// The names a re-encrypted backend's certificate may carry. The operator's HTTPRule names none, and
/// pod addresses are never in certificates: they serve either the application's own certificate (the team's
/// chart mounts it) or one for their Service's cluster name. SNI carries the virtual host's name.
fn reencrypt_names(fqdn: &str, pool: &str) -> Vec<String> {
    let mut names = vec![fqdn.to_string()];
    if let Some((namespace, service)) = crate::backend::pool_service(pool) {
        names.push(format!("{service}.{namespace}.svc"));
        names.push(format!("{service}.{namespace}.svc.cluster.local"));
    }
    names
}

/// Whether a route's path lies under an HTTPRule target (a path prefix).
fn under(path: &PathMatch, target: &str) -> bool {
    let target = target.trim_end_matches('/');
    match path {
        PathMatch::Exact(p) | PathMatch::Prefix(p) => {
            target.is_empty() || p == target || p.starts_with(&format!("{target}/"))
        }
        PathMatch::Regex(_) => target.is_empty(),
    }
}
