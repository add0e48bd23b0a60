//! The IR compiled for the request path: regular expressions built, certificates parsed, pools with their
//! load-balancing state and upstream TLS settings. Built off the request path, then swapped in whole.

use crate::ProxyError;
use crate::metrics::{CounterSlot, Histogram, RouteCounter};
use portico_ir::{Action, Filter, Ir, PathMatch, Protocol, Redirect, StringMatch};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Everything the request path needs, for one configuration generation.
pub struct Compiled {
    pub listeners: HashMap<SocketAddr, CompiledListener, foldhash::fast::RandomState>,
}

/// One listening socket's routing table.
pub struct CompiledListener {
    pub name: Arc<str>,
    pub protocol: Protocol,
    /// Each virtual host's routes, in the order they are tried.
    pub hosts: HostTable<Vec<CompiledRoute>>,
    /// Certificates by server name.
    pub certificates: HostTable<Arc<CertifiedKey>>,
    /// The certificate for clients whose server name matches none: the one configured without a hostname, or
    /// else the first.
    pub default_certificate: Option<Arc<CertifiedKey>>,
    /// TLS routes by server name.
    pub tls_routes: HostTable<CompiledTlsRoute>,
    /// The listener's latency histogram, once found.
    pub latency: CounterSlot<Histogram>,
    /// The counter of requests that matched no route, once found.
    pub unrouted: CounterSlot<RouteCounter>,
}

impl CompiledListener {
    /// The TLS route for a server name (or for clients that send none, the `*` route).
    pub fn tls_route(&self, server_name: Option<&str>) -> Option<&CompiledTlsRoute> {
        self.tls_routes.find(server_name.unwrap_or(""))
    }

    /// The certificate for a (lower-case) server name.
    pub fn certificate(&self, server_name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        server_name.and_then(|name| self.certificates.find(name)).or(self.default_certificate.as_ref())
    }
}

/// Values by host name, found the way the Gateway API ranks hostnames: the exact name first, then the wildcard
/// with the longest suffix, then `*`. Exact names are hashed: with 10,000 virtual hosts tried in order, the last
/// one answered 3.7 times fewer requests per second than the first.
pub struct HostTable<T> {
    exact: HashMap<Box<str>, T, foldhash::fast::RandomState>,
    /// `*.suffix` and `*` entries, in the order given (most specific first).
    wildcards: Vec<(HostPattern, T)>,
}

impl<T> HostTable<T> {
    /// A table of hostnames (exact, `*.suffix` or `*`) and values, wildcards most specific first, as the
    /// translator orders them. Of two entries for one name, the first is kept.
    pub fn new(entries: impl IntoIterator<Item = (HostPattern, T)>) -> Self {
        let mut table = HostTable { exact: HashMap::default(), wildcards: Vec::new() };
        for (pattern, value) in entries {
            match pattern {
                HostPattern::Exact(name) => drop(table.exact.entry(name.into_boxed_str()).or_insert(value)),
                wildcard => table.wildcards.push((wildcard, value)),
            }
        }
        table
    }

    /// The value for a (lower-case, port-less) host.
    pub fn find(&self, host: &str) -> Option<&T> {
        // An empty map is not hashed into (a listener serving only `*` pays nothing).
        let exact = if self.exact.is_empty() { None } else { self.exact.get(host) };
        exact.or_else(|| self.wildcards.iter().find(|(pattern, _)| pattern.matches(host)).map(|(_, value)| value))
    }

    /// Whether the table has no entry.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcards.is_empty()
    }
}

/// A TLS route: weighted pools, and whether the connection passes through undecrypted.
pub struct CompiledTlsRoute {
    pub name: Arc<str>,
    pub passthrough: bool,
    pub pools: WeightedPools,
}

/// Pools with weights; a `None` pool is an invalid backend reference.
pub struct WeightedPools {
    pub pools: Vec<(Option<Arc<CompiledPool>>, u32)>,
    pub total_weight: u32,
}

impl WeightedPools {
    fn new(backends: &[portico_ir::WeightedPool], pools: &HashMap<String, Arc<CompiledPool>>) -> Self {
        let pools: Vec<_> =
            backends.iter().map(|b| (b.pool.as_ref().and_then(|p| pools.get(p).cloned()), b.weight)).collect();
        WeightedPools { total_weight: pools.iter().map(|(_, w)| *w).sum(), pools }
    }

    /// A pool chosen by weight: `Err(())` when the choice falls on an invalid backend (or all weights are 0).
    pub fn pick(&self) -> Result<&Arc<CompiledPool>, ()> {
        if self.total_weight == 0 {
            return Err(());
        }
        let mut ticket = if self.pools.len() == 1 { 0 } else { rand::random_range(0..self.total_weight) };
        for (pool, weight) in &self.pools {
            if ticket < *weight {
                return pool.as_ref().ok_or(());
            }
            ticket -= weight;
        }
        Err(())
    }
}

/// How a virtual host's name matches the request's host.
pub enum HostPattern {
    Exact(String),
    /// `*.suffix`: stored as `.suffix`.
    Suffix(String),
    Any,
}

impl HostPattern {
    /// The pattern of an IR hostname (`*`, `*.suffix` or exact).
    pub fn new(hostname: &str) -> Self {
        if hostname == "*" {
            HostPattern::Any
        } else if let Some(suffix) = hostname.strip_prefix('*') {
            HostPattern::Suffix(suffix.to_string())
        } else {
            HostPattern::Exact(hostname.to_string())
        }
    }

    /// Whether the (lower-case, port-less) host matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            HostPattern::Any => true,
        }
    }
}

/// A compiled string condition.
pub enum Matcher {
    Exact(String),
    Regex(regex::Regex),
}

impl Matcher {
    fn new(m: &StringMatch) -> Result<Self, ProxyError> {
        Ok(match m {
            StringMatch::Exact(v) => Matcher::Exact(v.clone()),
            StringMatch::Regex(r) => Matcher::Regex(anchored(r)?),
        })
    }

    /// Whether the value satisfies the condition.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(v) => v == value,
            Matcher::Regex(r) => r.is_match(value),
        }
    }
}

fn anchored(pattern: &str) -> Result<regex::Regex, ProxyError> {
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| ProxyError::Config(format!("regex {pattern:?}: {e}")))
}

/// A compiled path condition.
pub enum PathMatcher {
    Exact(String),
    /// Prefix without its trailing slash (empty for `/`).
    Prefix(String),
    Regex(regex::Regex),
}

impl PathMatcher {
    /// Whether the path matches; prefixes match whole segments only.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(p) => p == path,
            PathMatcher::Prefix(p) => {
                p.is_empty()
                    || (path.starts_with(p.as_str()) && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
            PathMatcher::Regex(r) => r.is_match(path),
        }
    }
}

/// A route ready for matching.
pub struct CompiledRoute {
    pub name: Arc<str>,
    pub path: PathMatcher,
    pub headers: Vec<(http::HeaderName, Matcher)>,
    pub query: Vec<(String, Matcher)>,
    pub method: Option<http::Method>,
    pub filters: Vec<Filter>,
    pub action: CompiledAction,
    pub timeouts: portico_ir::Timeouts,
    pub retry: Option<portico_ir::Retry>,
    /// Pools that get a copy of each request, with the share in millionths.
    pub mirrors: Vec<(Arc<CompiledPool>, u32)>,
    pub cors: Option<portico_ir::Cors>,
    /// The route's request counter, once found.
    pub counter: CounterSlot<RouteCounter>,
}

/// What to do with a matched request.
pub enum CompiledAction {
    /// Weighted pools; `None` is an invalid backend (answers 500).
    Forward(WeightedPools),
    Redirect(Redirect),
    Respond {
        status: http::StatusCode,
        body: bytes::Bytes,
    },
}

/// A pool: its live balancing state (kept across swaps) and how to talk to it.
pub struct CompiledPool {
    pub name: Arc<str>,
    pub state: Arc<portico_balance::PoolState>,
    /// The client for this pool's protocol (shared for plain pools, so connections outlive swaps).
    pub client: crate::upstream::Upstream,
    /// Bounds the requests in flight to the pool's backends, hence their connections (each holds a connection
    /// until its response body is done): beyond it requests wait, instead of opening connections until the
    /// process runs out of descriptors.
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

impl CompiledPool {
    /// An endpoint for a request, by the pool's algorithm, persistence and health; `None` when no endpoint
    /// is healthy.
    pub fn pick(&self, client_ip: std::net::IpAddr, headers: &http::HeaderMap) -> Option<portico_balance::Pick> {
        self.state.pick(&portico_balance::RequestInfo { client_ip, headers })
    }
}

/// Clients shared by every plain-text pool, kept across configuration swaps.
pub struct SharedClients {
    pub http1: crate::upstream::Upstream,
    pub h2c: crate::upstream::Upstream,
    /// Requests in flight per pool at most (see [`CompiledPool::in_flight`]).
    pub pool_request_limit: std::sync::atomic::AtomicUsize,
}

impl Compiled {
    /// Compiles an IR. Fails only on what the translator should already have rejected.
    pub fn new(
        ir: &Ir,
        shared: &SharedClients,
        states: &HashMap<String, Arc<portico_balance::PoolState>>,
    ) -> Result<Self, ProxyError> {
        let mut pools = HashMap::new();
        for (name, pool) in &ir.pools {
            let client = match &pool.tls {
                Some(tls) => {
                    let config = crate::upstream::client_config(tls.ca_pem.as_deref(), &tls.subject_alt_names)?;
                    crate::upstream::tls(config, tls.server_name.as_deref(), pool.http2)?
                }
                None if pool.http2 => shared.h2c.clone(),
                None => shared.http1.clone(),
            };
            pools.insert(
                name.clone(),
                Arc::new(CompiledPool {
                    name: Arc::from(name.as_str()),
                    state: match states.get(name) {
                        Some(state) => state.clone(),
                        None => portico_balance::PoolState::new(name, pool.endpoints.clone(), pool.balance.clone()),
                    },
                    client,
                    in_flight: Arc::new(tokio::sync::Semaphore::new(
                        shared.pool_request_limit.load(std::sync::atomic::Ordering::Relaxed),
                    )),
                }),
            );
        }
        let mut certificates = HashMap::new();
        for (name, certificate) in &ir.certificates {
            let key = crate::listener::certified_key(&certificate.chain_pem, certificate.key_pem.expose())
                .map_err(|e| ProxyError::Config(format!("certificate {name}: {e}")))?;
            certificates.insert(name.clone(), Arc::new(key));
        }
        let mut listeners = HashMap::default();
        for listener in &ir.listeners {
            let mut hosts = Vec::with_capacity(listener.virtual_hosts.len());
            for vhost in &listener.virtual_hosts {
                // Sized exactly: most hosts have one route, and a CompiledRoute is large (with 10,000 hosts,
                // growing each Vec from empty was two thirds of this function's time, most of it page faults).
                let mut routes = Vec::with_capacity(vhost.routes.len());
                for route in &vhost.routes {
                    routes.push(compile_route(route, &pools)?);
                }
                hosts.push((HostPattern::new(&vhost.hostname), routes));
            }
            let tls_routes = listener.tls_routes.iter().map(|r| {
                let route = CompiledTlsRoute {
                    name: Arc::from(r.name.as_str()),
                    passthrough: r.passthrough,
                    pools: WeightedPools::new(&r.backends, &pools),
                };
                (HostPattern::new(&r.hostname), route)
            });
            let certs: Vec<(Option<&str>, &Arc<CertifiedKey>)> = listener
                .certificates
                .iter()
                .filter_map(|c| certificates.get(&c.certificate).map(|k| (c.hostname.as_deref(), k)))
                .collect();
            let default_certificate =
                certs.iter().find(|(hostname, _)| hostname.is_none()).or(certs.first()).map(|(_, k)| Arc::clone(k));
            let certs = HostTable::new(
                certs.iter().filter_map(|(hostname, k)| hostname.map(|h| (HostPattern::new(h), Arc::clone(k)))),
            );
            listeners.insert(
                SocketAddr::new(listener.address, listener.port),
                CompiledListener {
                    name: Arc::from(listener.name.as_str()),
                    protocol: listener.protocol,
                    hosts: HostTable::new(hosts),
                    certificates: certs,
                    default_certificate,
                    tls_routes: HostTable::new(tls_routes),
                    latency: CounterSlot::new(),
                    unrouted: CounterSlot::new(),
                },
            );
        }
        Ok(Compiled { listeners })
    }
}

fn compile_route(
    route: &portico_ir::Route,
    pools: &HashMap<String, Arc<CompiledPool>>,
) -> Result<CompiledRoute, ProxyError> {
    let path = match &route.matcher.path {
        PathMatch::Exact(p) => PathMatcher::Exact(p.clone()),
        PathMatch::Prefix(p) => PathMatcher::Prefix(p.trim_end_matches('/').to_string()),
        PathMatch::Regex(r) => PathMatcher::Regex(anchored(r)?),
    };
    let mut headers = Vec::new();
    for h in &route.matcher.headers {
        let name = http::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| ProxyError::Config(format!("header name {:?}", h.name)))?;
        headers.push((name, Matcher::new(&h.value)?));
    }
    let mut query = Vec::new();
    for q in &route.matcher.query_params {
        query.push((q.name.clone(), Matcher::new(&q.value)?));
    }
    let method = match &route.matcher.method {
        Some(m) => {
            Some(http::Method::from_bytes(m.as_bytes()).map_err(|_| ProxyError::Config(format!("method {m:?}")))?)
        }
        None => None,
    };
    let action = match &route.action {
        Action::Forward(backends) => CompiledAction::Forward(WeightedPools::new(backends, pools)),
        Action::Redirect(r) => CompiledAction::Redirect(r.clone()),
        Action::Respond { status, body } => CompiledAction::Respond {
            status: http::StatusCode::from_u16(*status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
            body: bytes::Bytes::from(body.clone()),
        },
    };
    Ok(CompiledRoute {
        name: Arc::from(route.name.as_str()),
        path,
        headers,
        query,
        method,
        filters: route.filters.clone(),
        action,
        timeouts: route.timeouts.clone(),
        retry: route.retry.clone(),
        mirrors: route
            .filters
            .iter()
            .filter_map(|f| match f {
                Filter::Mirror(m) => m.pool.as_ref().and_then(|p| pools.get(p)).map(|p| (p.clone(), m.per_million)),
                _ => None,
            })
            .collect(),
        cors: route.filters.iter().find_map(|f| match f {
            Filter::Cors(c) => Some(c.clone()),
            _ => None,
        }),
        counter: CounterSlot::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        let p = PathMatcher::Prefix("/pink".into());
        assert!(p.matches("/pink"));
        assert!(p.matches("/pink/"));
        assert!(p.matches("/pink/x"));
        assert!(!p.matches("/pinky"));
        assert!(PathMatcher::Prefix(String::new()).matches("/anything"));
    }

    #[test]
    fn host_tables_rank_exact_then_longest_suffix_then_any() {
        // In the translator's order: exact names, wildcards longest suffix first, then `*`.
        let table = HostTable::new(
            ["a.example.com", "b.example.com", "a.example.com", "*.deep.example.com", "*.example.com", "*"]
                .iter()
                .enumerate()
                .map(|(i, h)| (HostPattern::new(h), i)),
        );
        assert_eq!(table.find("a.example.com"), Some(&0), "the first entry of a repeated name wins");
        assert_eq!(table.find("b.example.com"), Some(&1));
        assert_eq!(table.find("x.deep.example.com"), Some(&3), "the longer suffix wins");
        assert_eq!(table.find("c.example.com"), Some(&4));
        assert_eq!(table.find("example.com"), Some(&5), "a wildcard needs a label in front");
        assert_eq!(table.find(""), Some(&5), "`*` answers clients that send no name");
        let without_any = HostTable::new([(HostPattern::new("a.example.com"), 0)]);
        assert_eq!(without_any.find("b.example.com"), None);
        assert!(!without_any.is_empty());
        assert!(HostTable::<u8>::new([]).is_empty());
    }

    #[test]
    fn wildcard_hosts_need_a_label() {
        let h = HostPattern::new("*.example.com");
        assert!(h.matches("a.example.com"));
        assert!(!h.matches("example.com"));
    }
}
