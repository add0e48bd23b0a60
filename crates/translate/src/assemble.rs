//! The last stage: listeners, virtual hosts and routes gathered by the earlier stages are ordered into the IR.

use portico_ir::{Ir, Listener, PathMatch, Protocol, Route, SniCertificate, TlsRoute, VirtualHost};
use portico_resources::core::{ObjectMeta, Time};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

/// Listeners and their routes, keyed for merging, before ordering.
#[derive(Default)]
pub struct RouteTable {
    listeners: BTreeMap<SocketAddr, ListenerEntry>,
    /// Every address becomes the wildcard of its family (see `TranslateOptions::listen_any`).
    listen_any: bool,
}

/// One address:port being built.
pub struct ListenerEntry {
    pub protocol: Protocol,
    /// Who claimed the socket first (`Gateway/ns/name`, `Ingress`), for conflict messages.
    pub owner: String,
    pub certificates: Vec<SniCertificate>,
    /// Routes by virtual host, hashed: [`RouteTable::assemble`] orders the hosts (with 10,000 hosts, each
    /// insert into a sorted map compared a hostname at every step of its path).
    pub hosts: HashMap<String, Vec<RankedRoute>, foldhash::fast::RandomState>,
    /// TLS routes by server name; the first one added for a name wins (routes come oldest first).
    pub tls_routes: BTreeMap<String, TlsRoute>,
}

/// A route with the key that orders it among the routes of its virtual host.
#[derive(Clone)]
pub struct RankedRoute {
    pub rank: RouteRank,
    pub route: Route,
}

/// The Gateway API's precedence, most important first: exact path, then regular expression, then the
/// longest prefix; a method match; more header matches; more query matches; the older route; the route's
/// namespace/name alphabetically; then rule and match order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteRank(
    Reverse<u8>,
    Reverse<usize>,
    Reverse<bool>,
    Reverse<usize>,
    Reverse<usize>,
    Age,
    String,
    usize,
    usize,
);

/// When a route's resource was created, for precedence: the older first, then resources without a creation
/// time, then an Ingress's default backend, which ranks after every rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Age {
    Created(Time),
    Unknown,
    DefaultBackend,
}

impl Age {
    /// The age of a resource from its metadata.
    pub fn of(metadata: &ObjectMeta) -> Age {
        metadata.creation_timestamp.clone().map_or(Age::Unknown, Age::Created)
    }
}

impl RouteRank {
    /// The rank of a route from its match and its origin.
    pub fn new(route: &Route, created: Age, source: String, rule: usize, matched: usize) -> Self {
        let m = &route.matcher;
        let (kind, len) = match &m.path {
            PathMatch::Exact(p) => (3, p.len()),
            PathMatch::Regex(p) => (2, p.len()),
            PathMatch::Prefix(p) => (1, p.trim_end_matches('/').len()),
        };
        RouteRank(
            Reverse(kind),
            Reverse(len),
            Reverse(m.method.is_some()),
            Reverse(m.headers.len()),
            Reverse(m.query_params.len()),
            created,
            source,
            rule,
            matched,
        )
    }

    /// The rank of a GRPCRoute match, which the Gateway API orders by the characters of the matching service,
    /// then of the matching method (`names`), then by header matches, age, name and order as for HTTP. (The
    /// path a method match becomes says nothing about this: a method alone is a regular expression, which
    /// would outrank a service alone.)
    pub fn grpc(
        route: &Route,
        names: (usize, usize),
        created: Age,
        source: String,
        rule: usize,
        matched: usize,
    ) -> Self {
        let mut rank = RouteRank::new(route, created, source, rule, matched);
        // Service and method names are at most 1024 characters each.
        let (service, method) = (names.0.min(2047), names.1.min(2047));
        rank.0 = Reverse(0);
        rank.1 = Reverse(service * 2048 + method);
        rank
    }
}

impl RouteTable {
    /// An empty table.
    pub fn new(listen_any: bool) -> Self {
        RouteTable { listeners: BTreeMap::new(), listen_any }
    }

    /// The socket that serves `address`.
    fn bound(&self, address: SocketAddr) -> SocketAddr {
        match (self.listen_any, address.ip()) {
            (false, _) => address,
            (true, IpAddr::V4(_)) => SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), address.port()),
            (true, IpAddr::V6(_)) => SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), address.port()),
        }
    }

    /// The listener on `address`, created with `protocol` if new. HTTPS and TLS share a socket (it becomes
    /// HTTPS: TLS with HTTP unless the server name has a TLS route). Fails with the existing owner's name when
    /// the socket already serves plain HTTP and TLS is asked, or the reverse.
    pub fn listener(
        &mut self,
        address: SocketAddr,
        protocol: Protocol,
        owner: &str,
    ) -> Result<&mut ListenerEntry, String> {
        let address = self.bound(address);
        let entry = self.listeners.entry(address).or_insert_with(|| ListenerEntry {
            protocol,
            owner: owner.to_string(),
            certificates: Vec::new(),
            hosts: HashMap::default(),
            tls_routes: BTreeMap::new(),
        });
        if entry.protocol.is_tls() != protocol.is_tls() {
            return Err(format!("{address} already serves {:?} for {}", entry.protocol, entry.owner));
        }
        if protocol == Protocol::Https {
            entry.protocol = Protocol::Https;
        }
        Ok(entry)
    }

    /// The protocol already bound to an address, if any.
    pub fn protocol_of(&self, address: SocketAddr) -> Option<(Protocol, &str)> {
        self.listeners.get(&self.bound(address)).map(|l| (l.protocol, l.owner.as_str()))
    }

    /// Every listener, for stages that edit virtual hosts across listeners (aliases).
    pub fn listeners_mut(&mut self) -> impl Iterator<Item = &mut ListenerEntry> {
        self.listeners.values_mut()
    }

    /// Orders everything into the IR, keeping the pools and certificates already in `ir`.
    pub fn assemble(self, ir: &mut Ir) -> Ir {
        let mut listeners = Vec::new();
        for (address, entry) in self.listeners {
            let mut hosts: Vec<VirtualHost> = entry
                .hosts
                .into_iter()
                .map(|(hostname, mut routes)| {
                    routes.sort_by(|a, b| a.rank.cmp(&b.rank));
                    // A vector of the routes' own size: collected in place, the IR kept the staging vector's
                    // memory (ranked routes, with room to grow) as long as it served, 1.8 KB a host where 340
                    // bytes hold its one route; 14 MB more for 10,000 routes, and twice that during an update.
                    let mut ordered = Vec::with_capacity(routes.len());
                    ordered.extend(routes.into_iter().map(|r| r.route));
                    VirtualHost { hostname, routes: ordered }
                })
                .collect();
            hosts.sort_by(|a, b| host_order(&a.hostname).cmp(&host_order(&b.hostname)));
            let mut certificates = entry.certificates;
            // A certificate without a hostname is the listener's default: last, like `*`.
            certificates.sort_by(|a, b| {
                host_order(a.hostname.as_deref().unwrap_or("*")).cmp(&host_order(b.hostname.as_deref().unwrap_or("*")))
            });
            certificates.dedup();
            let mut tls_routes: Vec<TlsRoute> = entry.tls_routes.into_values().collect();
            tls_routes.sort_by(|a, b| host_order(&a.hostname).cmp(&host_order(&b.hostname)));
            listeners.push(Listener {
                name: address.to_string(),
                address: address.ip(),
                port: address.port(),
                protocol: entry.protocol,
                certificates,
                virtual_hosts: hosts,
                tls_routes,
            });
        }
        // Pools and certificates that nothing refers to any more (a pool replaced by its TLS variant, the
        // certificate of a listener that lost a conflict) are left out.
        let mut pools = std::mem::take(&mut ir.pools);
        let mut certificates = std::mem::take(&mut ir.certificates);
        let mut used_pools = std::collections::BTreeSet::new();
        let mut used_certificates = std::collections::BTreeSet::new();
        for listener in &listeners {
            used_certificates.extend(listener.certificates.iter().map(|c| c.certificate.clone()));
            let forwards =
                listener.virtual_hosts.iter().flat_map(|h| h.routes.iter()).filter_map(|r| match &r.action {
                    portico_ir::Action::Forward(backends) => Some(backends.as_slice()),
                    _ => None,
                });
            let tls = listener.tls_routes.iter().map(|r| r.backends.as_slice());
            used_pools.extend(forwards.chain(tls).flatten().filter_map(|b| b.pool.clone()));
            let mirrors = listener.virtual_hosts.iter().flat_map(|h| h.routes.iter()).flat_map(|r| r.filters.iter());
            used_pools.extend(mirrors.filter_map(|f| match f {
                portico_ir::Filter::Mirror(m) => m.pool.clone(),
                _ => None,
            }));
        }
        pools.retain(|name, _| used_pools.contains(name));
        certificates.retain(|name, _| used_certificates.contains(name));
        Ir { listeners, pools, certificates, dns: portico_ir::Dns::default() }
    }
}

/// Exact names first (alphabetically), then wildcards with the longest suffix first, then `*`.
fn host_order(hostname: &str) -> (u8, Reverse<usize>, &str) {
    if hostname == "*" {
        (2, Reverse(0), "")
    } else if hostname.starts_with("*.") {
        (1, Reverse(hostname.len()), hostname)
    } else {
        (0, Reverse(0), hostname)
    }
}

/// The socket address of a VIP and port.
pub fn socket(address: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(address, port)
}
