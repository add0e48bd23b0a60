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
    pub hosts: Vec<CompiledHost>,
    pub certificates: Vec<(Option<String>, Arc<CertifiedKey>)>,
    /// TLS routes by server name, most specific first.
    pub tls_routes: Vec<CompiledTlsRoute>,
    /// The listener's latency histogram, once found.
    pub latency: CounterSlot<Histogram>,
    /// The counter of requests that matched no route, once found.
    pub unrouted: CounterSlot<RouteCounter>,
}

impl CompiledListener {
    /// The TLS route for a server name (or for clients that send none, the `*` route).
    pub fn tls_route(&self, server_name: Option<&str>) -> Option<&CompiledTlsRoute> {
        let name = server_name.unwrap_or("");
        self.tls_routes.iter().find(|r| r.pattern.matches(name))
    }
}

/// A TLS route: server name pattern and weighted pools.
pub struct CompiledTlsRoute {
    pub name: Arc<str>,
    pub pattern: HostPattern,
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
    pub fn pick(&self) -> Result<&CompiledPool, ()> {
        if self.total_weight == 0 {
            return Err(());
        }
        let mut ticket = if self.pools.len() == 1 { 0 } else { rand::random_range(0..self.total_weight) };
        for (pool, weight) in &self.pools {
            if ticket < *weight {
                return pool.as_deref().ok_or(());
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

/// A virtual host.
pub struct CompiledHost {
    pub pattern: HostPattern,
    pub routes: Vec<CompiledRoute>,
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
            let mut hosts = Vec::new();
            for vhost in &listener.virtual_hosts {
                let mut routes = Vec::new();
                for route in &vhost.routes {
                    routes.push(compile_route(route, &pools)?);
                }
                hosts.push(CompiledHost { pattern: HostPattern::new(&vhost.hostname), routes });
            }
            let tls_routes = listener
                .tls_routes
                .iter()
                .map(|r| CompiledTlsRoute {
                    name: Arc::from(r.name.as_str()),
                    pattern: HostPattern::new(&r.hostname),
                    passthrough: r.passthrough,
                    pools: WeightedPools::new(&r.backends, &pools),
                })
                .collect();
            let certs = listener
                .certificates
                .iter()
                .filter_map(|c| certificates.get(&c.certificate).map(|k| (c.hostname.clone(), k.clone())))
                .collect();
            listeners.insert(
                SocketAddr::new(listener.address, listener.port),
                CompiledListener {
                    name: Arc::from(listener.name.as_str()),
                    protocol: listener.protocol,
                    hosts,
                    certificates: certs,
                    tls_routes,
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
    fn wildcard_hosts_need_a_label() {
        let h = HostPattern::new("*.example.com");
        assert!(h.matches("a.example.com"));
        assert!(!h.matches("example.com"));
    }
}
