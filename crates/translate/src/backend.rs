//! Backends: a Service port becomes a pool of endpoint addresses, read from its EndpointSlices.

use crate::Context;
use crate::{not, ok};
use portico_ir::{Pool, UpstreamTls};
use portico_resources::ObjectKey;
use portico_resources::core::IntOrString;
use portico_resources::status::ResourceStatus;
use portico_resources::{Kind, ResourceRef};
use std::net::{IpAddr, SocketAddr};

/// Which port of a Service a reference means.
pub enum ServicePort<'a> {
    Number(i32),
    Name(&'a str),
}

/// Why a backend reference did not resolve. The variants follow the Gateway API's ResolvedRefs reasons.
#[derive(Debug)]
pub enum BackendError {
    InvalidKind(String),
    NotFound(String),
    RefNotPermitted(String),
    /// The Service's BackendTLSPolicy is not valid: it gets no traffic rather than plain text.
    InvalidTlsPolicy(String),
}

impl BackendError {
    /// The Gateway API reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            BackendError::InvalidKind(_) => "InvalidKind",
            BackendError::NotFound(_) => "BackendNotFound",
            BackendError::RefNotPermitted(_) => "RefNotPermitted",
            BackendError::InvalidTlsPolicy(_) => "InvalidBackendTLSPolicy",
        }
    }

    /// What went wrong, for a person.
    pub fn message(&self) -> &str {
        match self {
            BackendError::InvalidKind(m)
            | BackendError::NotFound(m)
            | BackendError::RefNotPermitted(m)
            | BackendError::InvalidTlsPolicy(m) => m,
        }
    }
}

/// The Service (`namespace`, `name`) of a pool named by [`service_pool`] (`namespace/name:port`).
pub fn pool_service(pool: &str) -> Option<(&str, &str)> {
    pool.rsplit_once(':')?.0.split_once('/')
}

/// Resolves a Service port to a pool, adding the pool to the IR. Returns the pool's name.
pub fn service_pool(cx: &mut Context<'_>, key: &ObjectKey, port: ServicePort<'_>) -> Result<String, BackendError> {
    let Some(service) = cx.snapshot.services.get(key) else {
        return Err(BackendError::NotFound(format!("Service {key} does not exist")));
    };
    // Borrowed: every backendRef of every route comes here (cloning the spec was a tenth of a route's cost).
    let spec = service.spec.as_ref();
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        return Err(BackendError::NotFound(format!(
            "Service {key} is of type ExternalName, which Portico does not proxy to"
        )));
    }
    let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
    let found = ports.iter().find(|p| match port {
        ServicePort::Number(n) => p.port == n,
        ServicePort::Name(name) => p.name.as_deref() == Some(name),
    });
    let Some(service_port) = found else {
        let wanted = match port {
            ServicePort::Number(n) => n.to_string(),
            ServicePort::Name(name) => format!("{name:?}"),
        };
        return Err(BackendError::NotFound(format!("Service {key} has no port {wanted}")));
    };
    let pool_name = crate::name_of(&[&key.namespace, "/", &key.name], format_args!(":{}", service_port.port));
    if !cx.out.ir.pools.contains_key(&pool_name) {
        let port_name = service_port.name.as_deref().unwrap_or("");
        let endpoints = endpoints(cx, key, port_name, service_port.target_port.as_ref());
        // BackendTLSPolicy: one for this port's name wins over one for the whole Service.
        let tls = match cx
            .backend_tls
            .get(&(key.clone(), Some(port_name.to_string())))
            .or_else(|| cx.backend_tls.get(&(key.clone(), None)))
        {
            None => None,
            Some(Ok(tls)) => Some(tls.clone()),
            // Not in plain text: the Service gets no traffic until its policy is fixed.
            Some(Err(why)) => return Err(BackendError::InvalidTlsPolicy(format!("Service {key}: {why}"))),
        };
        let http2 = matches!(
            service_port.app_protocol.as_deref(),
            Some("kubernetes.io/h2c" | "h2c" | "grpc" | "http2" | "kubernetes.io/h2")
        );
        let mut balance = portico_balance::BalanceConfig::default();
        if let Some(settings) = cx.policies.get("Service", key) {
            settings.apply(&mut balance);
        }
        cx.out.ir.pools.insert(pool_name.clone(), Pool { name: pool_name.clone(), endpoints, tls, http2, balance });
    }
    Ok(pool_name)
}

/// Validates every BackendTLSPolicy, writes its status, and records the TLS settings by target Service (and
/// port name) for [`service_pool`].
///
/// CA references that do not resolve are reported (ResolvedRefs False); the valid ones are used. A policy with
/// no usable CA (Accepted False NoValidCACertificate) or otherwise invalid still claims its targets, so that
/// they get 5xx answers instead of plain text, unless a valid policy targets them too. Two valid policies for
/// one target: the older wins, the other is Conflicted.
pub fn translate_backend_tls_policies(cx: &mut Context<'_>) {
    let mut policies: Vec<_> = cx.snapshot.backend_tls_policies.iter().map(|(k, p)| (k.clone(), p.clone())).collect();
    policies.sort_by(|(a_key, a), (b_key, b)| crate::route::age_order((&a.metadata, a_key), (&b.metadata, b_key)));
    let mut invalid = Vec::new();
    for (key, policy) in policies {
        let reference = ResourceRef { kind: Kind::BackendTlsPolicy, key: key.clone() };
        let generation = policy.metadata.generation;
        let validation = &policy.spec.validation;
        let mut unresolved: Option<(&str, String)> = None;
        let mut bundle = String::new();
        for (i, ca) in validation.ca_certificate_refs.iter().enumerate() {
            let field = format!("spec.validation.caCertificateRefs[{i}]");
            let object = ObjectKey::new(&key.namespace, &ca.name);
            let pem =
                match (ca.group.as_str(), ca.kind.as_str()) {
                    ("", "ConfigMap") => {
                        cx.snapshot.config_maps.get(&object).and_then(|c| c.data.as_ref()?.get("ca.crt").cloned())
                    }
                    ("", "Secret") => cx.snapshot.secrets.get(&object).and_then(|s| {
                        s.data.as_ref()?.get("ca.crt").map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    }),
                    (group, kind) => {
                        let message =
                            format!("{kind} in group {group:?} cannot hold CA certificates (ConfigMap or Secret)");
                        cx.error(&reference, field, message.clone());
                        unresolved.get_or_insert(("InvalidKind", message));
                        continue;
                    }
                };
            match pem.filter(|p| p.contains("-----BEGIN CERTIFICATE-----")) {
                Some(pem) => bundle.push_str(&pem),
                None => {
                    let message = format!("{} {object} has no PEM certificate under ca.crt", ca.kind);
                    cx.error(&reference, field, message.clone());
                    unresolved.get_or_insert(("InvalidCACertificateRef", message));
                }
            }
        }
        let system = validation.well_known_ca_certificates.as_deref() == Some("System");
        let mut rejected: Option<(&str, String)> = None;
        if bundle.is_empty() && !system {
            let message = match &unresolved {
                Some((_, why)) => format!("no usable CA certificate: {why}"),
                None => {
                    let message = "set caCertificateRefs or wellKnownCACertificates: System".to_string();
                    cx.error(&reference, "spec.validation", message.clone());
                    message
                }
            };
            rejected = Some(("NoValidCACertificate", message));
        }
        let hostname = crate::hostname::validate(&validation.hostname).and_then(|()| {
            if validation.hostname.starts_with("*.") {
                Err(format!("{:?} is a wildcard; the backend's name must be exact", validation.hostname))
            } else {
                Ok(())
            }
        });
        if let Err(message) = hostname {
            cx.error(&reference, "spec.validation.hostname", message.clone());
            rejected.get_or_insert(("Invalid", message));
        }
        for (i, name) in validation.subject_alt_names.iter().enumerate() {
            if name.hostname.is_none() {
                cx.warning(
                    &reference,
                    format!("spec.validation.subjectAltNames[{i}]"),
                    format!("{} subject alternative names are not verified yet (Hostname ones are)", name.kind),
                );
            }
        }
        let targets: Vec<(ObjectKey, Option<String>)> = policy
            .spec
            .target_refs
            .iter()
            .filter(|t| t.group.is_empty() && t.kind == "Service")
            .map(|t| (ObjectKey::new(&key.namespace, &t.name), t.section_name.clone()))
            .collect();
        let accepted = match rejected {
            Some((reason, message)) => {
                invalid.push((targets, format!("BackendTLSPolicy {key} is not valid ({message})")));
                not("Accepted", reason, message, generation)
            }
            None => {
                let tls = UpstreamTls {
                    server_name: Some(validation.hostname.clone()),
                    ca_pem: if bundle.is_empty() { None } else { Some(bundle) },
                    subject_alt_names: validation.subject_alt_names.iter().filter_map(|s| s.hostname.clone()).collect(),
                };
                let mut conflicts = Vec::new();
                for target in targets {
                    match cx.backend_tls.get(&target) {
                        Some(_) => conflicts.push(target.0.to_string()),
                        None => {
                            cx.backend_tls.insert(target, Ok(tls.clone()));
                        }
                    }
                }
                if conflicts.is_empty() {
                    ok("Accepted", "Accepted", "Policy accepted", generation)
                } else {
                    let message = format!("an older BackendTLSPolicy already targets {}", conflicts.join(", "));
                    cx.warning(&reference, "spec.targetRefs", message.clone());
                    not("Accepted", "Conflicted", message, generation)
                }
            }
        };
        let resolved = match unresolved {
            None => ok("ResolvedRefs", "ResolvedRefs", "CA certificates resolved", generation),
            Some((reason, message)) => not("ResolvedRefs", reason, message, generation),
        };
        cx.set_status(reference, ResourceStatus::Conditions { conditions: vec![accepted, resolved] });
    }
    for (targets, message) in invalid {
        for target in targets {
            cx.backend_tls.entry(target).or_insert_with(|| Err(message.clone()));
        }
    }
}

/// Ready endpoints of a Service port, sorted. Slices are matched by the `kubernetes.io/service-name` label and
/// ports by name, as kube-proxy does; a slice without ports uses the Service's numeric target port.
fn endpoints(
    cx: &Context<'_>,
    service: &ObjectKey,
    port_name: &str,
    target_port: Option<&IntOrString>,
) -> Vec<SocketAddr> {
    let mut found = Vec::new();
    // Endpoints that are terminating but still serving get traffic only when no endpoint is ready (as
    // kube-proxy does), so that a rollout's last old pods finish the job instead of a 503.
    let mut draining = Vec::new();
    for (key, slice) in &cx.snapshot.endpoint_slices {
        let owner = slice.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name"));
        if key.namespace != service.namespace || owner.map(String::as_str) != Some(service.name.as_str()) {
            continue;
        }
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let slice_ports = slice.ports.clone().unwrap_or_default();
        let port = match slice_ports.iter().find(|p| p.name.as_deref().unwrap_or("") == port_name) {
            Some(p) => p.port,
            None if slice_ports.is_empty() => match target_port {
                Some(IntOrString::Int(n)) => Some(*n),
                _ => None,
            },
            None => None,
        };
        let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            // An unset `ready` means ready; `serving` defaults to `ready`.
            let ready = conditions.ready != Some(false);
            let serving = conditions.serving.unwrap_or(ready);
            let list = if ready {
                &mut found
            } else if serving && conditions.terminating == Some(true) {
                &mut draining
            } else {
                continue;
            };
            list.extend(
                endpoint.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()).map(|ip| SocketAddr::new(ip, port)),
            );
        }
    }
    if found.is_empty() {
        found = draining;
    }
    found.sort();
    found.dedup();
    found
}
