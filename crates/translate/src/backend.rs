//! Backends: a Service port becomes a pool of endpoint addresses, read from its EndpointSlices.

use crate::Context;
use portico_ir::Pool;
use portico_resources::ObjectKey;
use portico_resources::core::IntOrString;
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
}

impl BackendError {
    /// The Gateway API reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            BackendError::InvalidKind(_) => "InvalidKind",
            BackendError::NotFound(_) => "BackendNotFound",
            BackendError::RefNotPermitted(_) => "RefNotPermitted",
        }
    }

    /// What went wrong, for a person.
    pub fn message(&self) -> &str {
        match self {
            BackendError::InvalidKind(m) | BackendError::NotFound(m) | BackendError::RefNotPermitted(m) => m,
        }
    }
}

/// Resolves a Service port to a pool, adding the pool to the IR. Returns the pool's name.
pub fn service_pool(cx: &mut Context<'_>, key: &ObjectKey, port: ServicePort<'_>) -> Result<String, BackendError> {
    let Some(service) = cx.snapshot.services.get(key) else {
        return Err(BackendError::NotFound(format!("Service {key} does not exist")));
    };
    let spec = service.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err(BackendError::NotFound(format!(
            "Service {key} is of type ExternalName, which Portico does not proxy to"
        )));
    }
    let ports = spec.ports.unwrap_or_default();
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
    let pool_name = format!("{key}:{}", service_port.port);
    if !cx.out.ir.pools.contains_key(&pool_name) {
        let endpoints =
            endpoints(cx, key, service_port.name.as_deref().unwrap_or(""), service_port.target_port.as_ref());
        cx.out.ir.pools.insert(pool_name.clone(), Pool { name: pool_name.clone(), endpoints, tls: None });
    }
    Ok(pool_name)
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
            if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    found.push(SocketAddr::new(ip, port));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}
