//! Where Gateways and Ingresses get their addresses when they name none.
//!
//! In order of precedence for a Gateway without `spec.addresses`:
//! 1. a Service of type LoadBalancer that Portico manages for it (`gatewayServicesNamespace`): the cluster's
//!    LB provider (MetalLB, a cloud) hands out the VIP, which the translator reads back from the Service's
//!    `status.loadBalancer`; the Services wanted are part of the translation's output, for the leader to apply;
//! 2. the static pool (`gatewayAddressPool`, the edge mode): one address per Gateway, a Gateway keeping the
//!    one its status already shows, the others handed out in order of creation;
//! 3. the load-balancer address of the Service in front of Portico (`publishService`), else the default
//!    Gateway address.
//!
//! Ingresses report the `publishService`'s addresses when it is set, else the configured ones.

use crate::Context;
use portico_resources::core::{ObjectMeta, Service, ServicePort, ServiceSpec};
use portico_resources::{ObjectKey, gateway::Gateway, labels};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Where a Gateway's address comes from, when it requests none.
pub enum Assigned {
    Addresses(Vec<IpAddr>),
    /// None yet, and why (shown in the Gateway's Programmed condition).
    Waiting(String),
}

/// The IPs in a Service's `status.loadBalancer.ingress` (hostnames are not addresses Portico can serve on).
pub fn load_balancer_ips(service: Option<&Service>) -> Vec<IpAddr> {
    let ingress = service.and_then(|s| s.status.as_ref()?.load_balancer.as_ref()?.ingress.as_ref());
    ingress.into_iter().flatten().filter_map(|i| i.ip.as_deref()?.parse().ok()).collect()
}

impl Context<'_> {
    /// The publish Service's load-balancer IPs, when one is configured.
    fn published_addresses(&self) -> Option<Vec<IpAddr>> {
        let key = self.options.publish_service.as_deref()?;
        let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
        Some(load_balancer_ips(self.snapshot.services.get(&ObjectKey::new(namespace, name)).map(AsRef::as_ref)))
    }

    /// The addresses Ingresses report.
    pub fn ingress_addresses(&self) -> Vec<IpAddr> {
        self.published_addresses().unwrap_or_else(|| self.options.ingress_addresses.clone())
    }

    /// The addresses Ingresses are served on: those they report, or, listening on every address (in a pod),
    /// the wildcard even before the publish Service has an address.
    pub fn ingress_bind_addresses(&self) -> Vec<IpAddr> {
        let addresses = self.ingress_addresses();
        if addresses.is_empty() && self.options.listen_any {
            return vec![IpAddr::from([0, 0, 0, 0])];
        }
        addresses
    }
}

/// Addresses of the static pool by Gateway: a Gateway keeps the address its status shows if the pool still
/// has it and no other Gateway asked for it; the others take the first free one, in `gateways`' order
/// (creation). Gateways with `spec.addresses` take none, and their addresses are not handed out.
pub fn assign_pool(pool: &[IpAddr], gateways: &[(&ObjectKey, &Gateway)]) -> BTreeMap<ObjectKey, IpAddr> {
    let requested = gateways.iter().flat_map(|(_, g)| g.spec.addresses.iter()).filter_map(|a| a.value.parse().ok());
    let mut taken: BTreeSet<IpAddr> = requested.collect();
    let mut assigned = BTreeMap::new();
    let wanting: Vec<&(&ObjectKey, &Gateway)> = gateways.iter().filter(|(_, g)| g.spec.addresses.is_empty()).collect();
    for (key, gateway) in &wanting {
        let shown = gateway.status.as_ref().into_iter().flat_map(|s| s.addresses.iter());
        if let Some(ip) = shown.filter_map(|a| a.value.parse::<IpAddr>().ok()).find(|ip| pool.contains(ip))
            && taken.insert(ip)
        {
            assigned.insert((*key).clone(), ip);
        }
    }
    for (key, _) in wanting {
        if assigned.contains_key(*key) {
            continue;
        }
        if let Some(ip) = pool.iter().find(|ip| !taken.contains(ip)) {
            taken.insert(*ip);
            assigned.insert((*key).clone(), *ip);
        }
    }
    assigned
}

/// FNV-1a of `namespace/name`: stable across versions and platforms, unlike std's hasher.
fn short_hash(key: &ObjectKey) -> String {
    let hash = key
        .to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{:08x}", hash as u32)
}

/// The name of the Service Portico manages for Gateway `key`: `portico-NAMESPACE-NAME-HASH`, cut to fit a DNS
/// label. The hash of `namespace/name` keeps Gateways apart whose names read the same once joined (`team-a`/`web`
/// and `team`/`a-web`) or cut.
pub fn gateway_service_name(key: &ObjectKey) -> String {
    let mut base = format!("portico-{}-{}", key.namespace, key.name).replace('.', "-");
    let mut cut = base.len().min(63 - 9);
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    base.truncate(cut);
    format!("{}-{}", base.trim_end_matches('-'), short_hash(key))
}

/// A label value naming `value` (at most 63 characters: longer names become their hash; the annotation keeps
/// them whole).
fn label_value(value: &str, key: &ObjectKey) -> String {
    if value.len() <= 63 { value.to_string() } else { short_hash(key) }
}

/// Resolves the address of a Gateway that requests none.
pub fn gateway_address(
    cx: &mut Context<'_>,
    key: &ObjectKey,
    gateway: &Gateway,
    pool: &BTreeMap<ObjectKey, IpAddr>,
) -> Assigned {
    if let Some(namespace) = cx.options.gateway_services_namespace.clone() {
        let service = managed_service(cx, key, gateway, &namespace);
        let service_key = ObjectKey::new(&namespace, service.metadata.name.as_deref().unwrap_or_default());
        cx.out.gateway_services.push(service);
        let ips = load_balancer_ips(cx.snapshot.services.get(&service_key).map(AsRef::as_ref));
        return if ips.is_empty() {
            Assigned::Waiting(format!("waiting for the LoadBalancer Service {service_key} to get an address"))
        } else {
            Assigned::Addresses(ips)
        };
    }
    if !cx.options.gateway_address_pool.is_empty() {
        return match pool.get(key) {
            Some(ip) => Assigned::Addresses(vec![*ip]),
            None => Assigned::Waiting(format!(
                "the address pool is exhausted (all {} addresses are in use)",
                cx.options.gateway_address_pool.len()
            )),
        };
    }
    if let Some(published) = cx.published_addresses() {
        return if published.is_empty() {
            let service = cx.options.publish_service.clone().unwrap_or_default();
            Assigned::Waiting(format!("waiting for the Service {service} to get a load-balancer address"))
        } else {
            Assigned::Addresses(published)
        };
    }
    match cx.options.default_gateway_address {
        Some(ip) => Assigned::Addresses(vec![ip]),
        None => Assigned::Waiting("No address: set spec.addresses or Portico's default Gateway address".into()),
    }
}

/// The LoadBalancer Service for a Gateway: one TCP port per listener port, to Portico's pods.
fn managed_service(cx: &Context<'_>, key: &ObjectKey, gateway: &Gateway, namespace: &str) -> Service {
    let ports: BTreeSet<i32> =
        gateway.spec.listeners.iter().map(|l| l.port).filter(|p| (1..=65535).contains(p)).collect();
    let labels = BTreeMap::from([
        (labels::MANAGED_BY.to_string(), labels::PORTICO.to_string()),
        (labels::GATEWAY_NAMESPACE.to_string(), label_value(&key.namespace, key)),
        (labels::GATEWAY_NAME.to_string(), label_value(&key.name, key)),
    ]);
    let annotations = BTreeMap::from([(labels::GATEWAY_NAME.to_string(), key.to_string())]);
    Service {
        metadata: ObjectMeta {
            name: Some(gateway_service_name(key)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            selector: Some(cx.options.gateway_service_selector.clone()),
            // Local keeps the client's address (X-Forwarded-For, client-IP persistence).
            external_traffic_policy: Some("Local".into()),
            ports: Some(
                ports
                    .into_iter()
                    .map(|port| ServicePort {
                        name: Some(format!("port-{port}")),
                        port,
                        protocol: Some("TCP".into()),
                        target_port: Some(portico_resources::core::IntOrString::Int(port)),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}
