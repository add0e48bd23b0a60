//! DNS: the records Portico's authoritative server answers for the hostnames it serves, and the records the
//! external-dns compatible sync publishes into the corporate DNS.
//!
//! Runs after [`crate::assemble`], from the IR (which hostname is served on which VIP, by which resource) and
//! the resources' external-dns annotations:
//!
//! - **Served** (`ir.dns.records`): every hostname of a virtual host or TLS route (HTTPRoute, GRPCRoute,
//!   TLSRoute, Ingress rules, HostRule aliases) and every hostname of a ready Gateway listener that falls in
//!   one of the configured zones gets A/AAAA records to the VIPs it is served on; wildcards stay wildcards.
//! - **Published** (`ir.dns.publish`), as external-dns would: the names of the `hostname` annotation plus the
//!   names the resource is served on (only the annotation's with `*-hostname-source: annotation-only`), each
//!   pointing at the resource's `target` annotation, else (routes) its Gateways' `target` annotation, else a
//!   CNAME to the resource's first hostname in a served zone (zones in configured order), else A/AAAA to the
//!   VIPs. A name that would be its own CNAME target is not published: it is served here.

use crate::Context;
use crate::gateway::GatewayInfo;
use portico_ir::{DnsRecord, DnsRecordType};
use portico_resources::core::ObjectMeta;
use portico_resources::gateway::ParentReference;
use portico_resources::status::ResourceStatus;
use portico_resources::{Kind, ObjectKey, ResourceRef};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The annotation prefixes external-dns reads: the newer one (v0.22) wins when both are set.
const PREFIXES: [&str; 2] = ["external-dns.kubernetes.io/", "external-dns.alpha.kubernetes.io/"];

/// Default TTL of served and published records, seconds.
pub const DEFAULT_DNS_TTL: u32 = 30;

/// DNS settings of the translation (from Portico's config file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DnsOptions {
    /// Zones Portico's DNS server is authoritative for, in order of preference for canonical names: list the
    /// zone delegated to the load balancer (`avi.aclab.uk`) before the corporate zone (`aclab.uk`).
    pub zones: Vec<String>,
    /// TTL of served records, and of published records without a `ttl` annotation.
    pub ttl: u32,
    /// Compute the records to publish (a sync is configured).
    pub publish: bool,
    /// Publish A/AAAA to the VIPs instead of a CNAME to the canonical in-zone name when no `target` annotation
    /// says otherwise.
    pub publish_addresses: bool,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions { zones: Vec::new(), ttl: DEFAULT_DNS_TTL, publish: false, publish_addresses: false }
    }
}

impl DnsOptions {
    /// Whether DNS is configured at all (nothing is computed otherwise).
    pub fn enabled(&self) -> bool {
        !self.zones.is_empty() || self.publish
    }
}

/// Hostnames a resource is served on, with the VIPs of each.
type Served = BTreeMap<String, BTreeMap<String, BTreeSet<IpAddr>>>;

/// Fills `cx.out.ir.dns` from the assembled IR, the Gateways and the resources' annotations.
pub fn translate_dns(cx: &mut Context<'_>, gateways: &[GatewayInfo]) {
    let options = &cx.options.dns;
    if !options.enabled() {
        return;
    }
    let zones: Vec<String> = options.zones.iter().map(|z| normalize(z)).filter(|z| !z.is_empty()).collect();
    let served = served_hostnames(cx, gateways);

    let mut records = BTreeSet::new();
    for (resource, hosts) in &served {
        for (host, addresses) in hosts {
            if zones.iter().any(|z| in_zone(host, z)) {
                records.extend(address_records(host, addresses, options.ttl, resource));
            }
        }
    }
    cx.out.ir.dns.records = records.into_iter().collect();

    if options.publish {
        let mut publish = BTreeSet::new();
        publish.extend(publish_routes(cx, &served, &zones));
        publish.extend(publish_ingresses(cx, &served, &zones));
        cx.out.ir.dns.publish = publish.into_iter().collect();
    }
}

/// `httproute/dev/app` from a route name such as `httproute/dev/app/rule/0/match/0`.
fn resource_of(route_name: &str) -> String {
    route_name.splitn(4, '/').take(3).collect::<Vec<_>>().join("/")
}

fn served_hostnames(cx: &Context<'_>, gateways: &[GatewayInfo]) -> Served {
    let mut served: Served = BTreeMap::new();
    for listener in &cx.out.ir.listeners {
        let mut add = |host: &str, route: &str| {
            if host != "*" {
                let entry = served.entry(resource_of(route)).or_default().entry(normalize(host)).or_default();
                entry.insert(listener.address);
            }
        };
        for host in &listener.virtual_hosts {
            for route in &host.routes {
                add(&host.hostname, &route.name);
            }
        }
        for route in &listener.tls_routes {
            add(&route.hostname, &route.name);
        }
    }
    // A Gateway listener's hostname is answered even before a route attaches to it.
    for gateway in gateways.iter().filter(|g| g.conditions.iter().any(|c| c.kind == "Accepted" && c.is_true())) {
        let resource = format!("gateway/{}/{}", gateway.reference.key.namespace, gateway.reference.key.name);
        for listener in gateway.listeners.iter().filter(|l| l.ready) {
            if let Some(host) = &listener.hostname {
                let entry = served.entry(resource.clone()).or_default().entry(normalize(host)).or_default();
                entry.extend(gateway.addresses.iter().copied());
            }
        }
    }
    served
}

fn address_records(name: &str, addresses: &BTreeSet<IpAddr>, ttl: u32, resource: &str) -> Vec<DnsRecord> {
    let v4: Vec<String> = addresses.iter().filter(|a| a.is_ipv4()).map(ToString::to_string).collect();
    let v6: Vec<String> = addresses.iter().filter(|a| a.is_ipv6()).map(ToString::to_string).collect();
    [(DnsRecordType::A, v4), (DnsRecordType::Aaaa, v6)]
        .into_iter()
        .filter(|(_, targets)| !targets.is_empty())
        .map(|(kind, targets)| DnsRecord { name: name.to_string(), kind, targets, ttl, resource: resource.to_string() })
        .collect()
}

/// One source of published records: a route or an Ingress.
struct PublishSource<'a> {
    reference: ResourceRef,
    /// `httproute/dev/app`.
    resource: String,
    metadata: &'a ObjectMeta,
    /// Hostnames from the spec, in order (preferred canonical names come first).
    spec_hostnames: Vec<String>,
    /// `gateway-hostname-source` or `ingress-hostname-source`.
    source_annotation: &'static str,
    /// `target` annotations of the Gateways the route is accepted by.
    gateway_targets: Vec<String>,
    /// Publish the spec's hostnames even where they are not served (an Ingress's `tls.hosts`, as external-dns
    /// does); a route's names are those that matched a listener.
    spec_hostnames_published: bool,
}

fn publish_routes(cx: &mut Context<'_>, served: &Served, zones: &[String]) -> Vec<DnsRecord> {
    let snapshot = cx.snapshot;
    let mut sources = Vec::new();
    let routes = snapshot
        .http_routes
        .iter()
        .map(|(k, r)| (Kind::HttpRoute, k, &r.metadata, &r.spec.hostnames))
        .chain(snapshot.grpc_routes.iter().map(|(k, r)| (Kind::GrpcRoute, k, &r.metadata, &r.spec.hostnames)))
        .chain(snapshot.tls_routes.iter().map(|(k, r)| (Kind::TlsRoute, k, &r.metadata, &r.spec.hostnames)));
    for (kind, key, metadata, hostnames) in routes {
        let reference = ResourceRef { kind, key: key.clone() };
        // external-dns publishes a route only once a parent has accepted it.
        let Some(ResourceStatus::Route(status)) = cx.status(&reference) else {
            continue;
        };
        let accepted: Vec<&ParentReference> = status
            .parents
            .iter()
            .filter(|p| p.conditions.iter().any(|c| c.kind == "Accepted" && c.is_true()))
            .map(|p| &p.parent_ref)
            .collect();
        if accepted.is_empty() {
            continue;
        }
        let mut gateway_targets = Vec::new();
        for parent in accepted {
            let gateway_key = ObjectKey::new(parent.namespace.as_deref().unwrap_or(&key.namespace), &parent.name);
            if let Some(gateway) = snapshot.gateways.get(&gateway_key)
                && let Some((value, _)) = annotation(&gateway.metadata, "target")
            {
                gateway_targets.extend(split_list(value));
            }
        }
        sources.push(PublishSource {
            resource: format!("{}/{}/{}", kind.as_str().to_ascii_lowercase(), key.namespace, key.name),
            reference,
            metadata,
            spec_hostnames: hostnames.iter().map(|h| normalize(h)).collect(),
            source_annotation: "gateway-hostname-source",
            gateway_targets,
            spec_hostnames_published: false,
        });
    }
    sources.into_iter().flat_map(|source| publish_source(cx, &source, served, zones)).collect()
}

fn publish_ingresses(cx: &mut Context<'_>, served: &Served, zones: &[String]) -> Vec<DnsRecord> {
    let snapshot = cx.snapshot;
    let mut sources = Vec::new();
    for (key, ingress) in &snapshot.ingresses {
        let reference = ResourceRef { kind: Kind::Ingress, key: key.clone() };
        // Only Portico's Ingresses have a status.
        if !matches!(cx.status(&reference), Some(ResourceStatus::Ingress(_))) {
            continue;
        }
        let spec = ingress.spec.clone().unwrap_or_default();
        let mut hostnames: Vec<String> = spec.rules.iter().flatten().filter_map(|r| r.host.clone()).collect();
        hostnames.extend(spec.tls.iter().flatten().flat_map(|t| t.hosts.clone().unwrap_or_default()));
        sources.push(PublishSource {
            resource: format!("ingress/{}/{}", key.namespace, key.name),
            reference,
            metadata: &ingress.metadata,
            spec_hostnames: hostnames.iter().map(|h| normalize(h)).collect(),
            source_annotation: "ingress-hostname-source",
            gateway_targets: Vec::new(),
            spec_hostnames_published: true,
        });
    }
    sources.into_iter().flat_map(|source| publish_source(cx, &source, served, zones)).collect()
}

/// What a record points at.
enum Targets {
    Name(String),
    Addresses(BTreeSet<IpAddr>),
}

fn publish_source(
    cx: &mut Context<'_>,
    source: &PublishSource<'_>,
    served: &Served,
    zones: &[String],
) -> Vec<DnsRecord> {
    let empty = BTreeMap::new();
    let hosts = served.get(&source.resource).unwrap_or(&empty);
    let field = |key: &str| format!("metadata.annotations[{key}]");

    // Which names: the annotation's, and (unless annotation-only) those the resource is served on.
    let mut names: Vec<String> = Vec::new();
    if let Some((value, key)) = annotation(source.metadata, "hostname") {
        for name in split_list(value) {
            match crate::hostname::validate(&name) {
                Ok(()) => names.push(name),
                Err(error) => cx.warning(&source.reference, field(&key), format!("{error}; not published")),
            }
        }
    }
    let mut defined: Vec<String> = hosts.keys().cloned().collect();
    if source.spec_hostnames_published {
        defined.extend(source.spec_hostnames.iter().filter(|h| !h.is_empty()).cloned());
    }
    let only = annotation(source.metadata, source.source_annotation).map(|(v, _)| v.trim().to_string());
    match only.as_deref() {
        Some("annotation-only") => {}
        Some("defined-hosts-only") => names = defined,
        _ => names.extend(defined),
    }
    let mut seen = BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    if names.is_empty() {
        return Vec::new();
    }

    let ttl = match annotation(source.metadata, "ttl") {
        Some((value, key)) => match parse_ttl(value) {
            Ok(ttl) => ttl,
            Err(error) => {
                cx.warning(&source.reference, field(&key), format!("{error}; using {} s", cx.options.dns.ttl));
                cx.options.dns.ttl
            }
        },
        None => cx.options.dns.ttl,
    };

    // Where they point: own target annotation, the Gateways' target annotation, the canonical in-zone name, or
    // the VIPs.
    let own = annotation(source.metadata, "target").map(|(v, key)| (split_list(v), field(&key)));
    let from_gateways = (!source.gateway_targets.is_empty())
        .then(|| (source.gateway_targets.clone(), "the Gateway's external-dns target annotation".to_string()));
    let targets = match own.or(from_gateways) {
        Some((list, origin)) => parse_targets(cx, source, &list, &origin),
        None => {
            let canonical = (!cx.options.dns.publish_addresses).then(|| canonical_name(source, hosts, zones)).flatten();
            match canonical {
                Some(name) => Some(Targets::Name(name)),
                None => Some(Targets::Addresses(hosts.values().flatten().copied().collect())),
            }
        }
    };
    let Some(targets) = targets else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names {
        match &targets {
            // Its own canonical name: served by Portico's DNS, nothing to publish.
            Targets::Name(target) if *target == name => {}
            Targets::Name(target) => out.push(DnsRecord {
                name,
                kind: DnsRecordType::Cname,
                targets: vec![target.clone()],
                ttl,
                resource: source.resource.clone(),
            }),
            Targets::Addresses(addresses) => out.extend(address_records(&name, addresses, ttl, &source.resource)),
        }
    }
    out
}

/// The resource's first hostname (spec order, then the other served names) in the first zone that holds one.
fn canonical_name(
    source: &PublishSource<'_>,
    hosts: &BTreeMap<String, BTreeSet<IpAddr>>,
    zones: &[String],
) -> Option<String> {
    let mut ordered: Vec<&String> = source.spec_hostnames.iter().filter(|h| hosts.contains_key(*h)).collect();
    ordered.extend(hosts.keys().filter(|h| !source.spec_hostnames.contains(h)));
    zones
        .iter()
        .find_map(|zone| ordered.iter().find(|h| !h.starts_with("*.") && in_zone(h, zone)).map(|h| (*h).clone()))
}

fn parse_targets(cx: &mut Context<'_>, source: &PublishSource<'_>, list: &[String], origin: &str) -> Option<Targets> {
    let mut addresses = BTreeSet::new();
    let mut names = Vec::new();
    for target in list {
        match target.parse::<IpAddr>() {
            Ok(ip) => drop(addresses.insert(ip)),
            Err(_) => match crate::hostname::validate(target) {
                Ok(()) if !target.starts_with("*.") => names.push(target.clone()),
                Ok(()) => cx.warning(&source.reference, origin, format!("target {target:?} is a wildcard; ignored")),
                Err(error) => cx.warning(&source.reference, origin, format!("target {error}; ignored")),
            },
        }
    }
    if !addresses.is_empty() {
        if !names.is_empty() {
            cx.warning(
                &source.reference,
                origin,
                format!("names {names:?} and addresses together: a CNAME cannot live beside addresses; the names are ignored"),
            );
        }
        return Some(Targets::Addresses(addresses));
    }
    if names.len() > 1 {
        cx.warning(
            &source.reference,
            origin,
            format!("a CNAME has one target: {:?} is published, {:?} ignored", names[0], &names[1..]),
        );
    }
    names.into_iter().next().map(Targets::Name)
}

/// An external-dns annotation (`external-dns.kubernetes.io/KEY`, or the alpha prefix) and its full key.
fn annotation<'a>(metadata: &'a ObjectMeta, key: &str) -> Option<(&'a str, String)> {
    let annotations = metadata.annotations.as_ref()?;
    PREFIXES.iter().find_map(|prefix| {
        let full = format!("{prefix}{key}");
        annotations.get(&full).map(|v| (v.as_str(), full))
    })
}

/// A comma-separated list, lower case, without trailing dots or empty items.
fn split_list(value: &str) -> Vec<String> {
    value.split(',').map(normalize).filter(|s| !s.is_empty()).collect()
}

fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn in_zone(name: &str, zone: &str) -> bool {
    name == zone || name.strip_suffix(zone).is_some_and(|head| head.ends_with('.'))
}

/// A TTL as external-dns reads it: whole seconds (`"10"`) or a Go duration (`"1m30s"`), 1 s to 2^31-1 s.
fn parse_ttl(value: &str) -> Result<u32, String> {
    let text = value.trim();
    let bad = || format!("ttl {value:?} is not a number of seconds or a duration such as 30s, 5m, 1h");
    let seconds: u64 = if let Ok(n) = text.parse::<i64>() {
        u64::try_from(n).map_err(|_| bad())?
    } else {
        let mut total = 0u64;
        let mut digits = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let n: u64 = digits.parse().map_err(|_| bad())?;
            digits.clear();
            total += n * match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                _ => return Err(bad()),
            };
        }
        if !digits.is_empty() || text.is_empty() {
            return Err(bad());
        }
        total
    };
    match u32::try_from(seconds) {
        Ok(ttl) if (1..=i32::MAX as u32).contains(&ttl) => Ok(ttl),
        _ => Err(format!("ttl {value:?} is outside 1 s .. 2147483647 s")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_read_like_external_dns() {
        assert_eq!(parse_ttl("10"), Ok(10));
        assert_eq!(parse_ttl(" 1m30s "), Ok(90));
        assert_eq!(parse_ttl("2h"), Ok(7200));
        assert!(parse_ttl("0").unwrap_err().contains("outside"));
        assert!(parse_ttl("-5").unwrap_err().contains("not a number"));
        assert!(parse_ttl("10x").unwrap_err().contains("not a number"));
        assert!(parse_ttl("5m3").unwrap_err().contains("not a number"));
    }

    #[test]
    fn zones_and_resources() {
        assert!(in_zone("app01-lab.avi.aclab.uk", "avi.aclab.uk"));
        assert!(in_zone("*.avi.aclab.uk", "avi.aclab.uk"));
        assert!(in_zone("aclab.uk", "aclab.uk"));
        assert!(!in_zone("xavi.aclab.uk", "avi.aclab.uk"));
        assert_eq!(resource_of("httproute/dev/app/rule/0/match/0"), "httproute/dev/app");
        assert_eq!(resource_of("tlsroute/dev/db"), "tlsroute/dev/db");
        assert_eq!(
            split_list("Application01.aclab.uk., ,b.example.com"),
            vec!["application01.aclab.uk", "b.example.com"]
        );
    }
}
