//! Portico's data plane: an HTTP/1.1 and HTTP/2 reverse proxy on hyper, with TLS termination by SNI.
//!
//! [`Proxy::apply`] takes a new [`Ir`]: it is compiled off the request path, swapped in atomically (requests
//! in flight finish on the configuration they started with; the next request sees the new one), and the set
//! of listening sockets is reconciled. Connections are never dropped by a configuration change.

mod compile;
mod h1;
mod handler;
mod listener;
mod metrics;
mod pool;
mod upstream;

pub use metrics::Metrics;

use arc_swap::ArcSwap;
use compile::Compiled;
use portico_ir::Ir;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Errors of the data plane.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The IR holds something the data plane cannot use (the translator should have caught it).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A listening socket could not be opened.
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
    /// TLS settings could not be built.
    #[error("TLS setup for {address}: {source}")]
    Tls { address: SocketAddr, source: rustls::Error },
}

/// Requests in flight per pool at most, by default: far above what one pool's backends usually take, and with
/// the client's connections well under the usual hard limit of open files (nginx's `max_conns` is unlimited by
/// default; a proxy that opens one backend connection per waiting request runs out of descriptors first).
pub const DEFAULT_POOL_REQUEST_LIMIT: usize = 4096;

/// How long a client connection may go without a request while none is in progress, by default: then it is
/// closed (within 1 to 1.5 times this). A client that sends nothing, or a head byte by byte, holds a connection
/// no longer; nor does an idle kept-alive connection (HTTP/1.1 or HTTP/2). nginx's `client_header_timeout` is
/// 60 s too.
pub const DEFAULT_REQUEST_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Answers an ACME HTTP-01 challenge path with its key authorization, or `None`.
pub type ChallengeResponder = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// State shared by every listener and connection.
pub(crate) struct Shared {
    pub state: Arc<ArcSwap<Compiled>>,
    pub metrics: Arc<Metrics>,
    pub clients: compile::SharedClients,
    /// Live state of every pool (health, in-flight counts), kept across configuration swaps.
    pub pools: portico_balance::PoolRegistry,
    /// Answers ACME HTTP-01 challenges (`/.well-known/acme-challenge/TOKEN`) on every HTTP listener.
    pub challenges: arc_swap::ArcSwapOption<ChallengeResponder>,
    /// Turns true when Portico drains: each client connection holds a receiver until it has closed gracefully
    /// (listener.rs), and shutting down waits for the last one to go.
    pub draining: tokio::sync::watch::Sender<bool>,
    /// Milliseconds a client connection may go without a request while none is in progress.
    pub request_head_timeout_ms: std::sync::atomic::AtomicU64,
}

/// The proxy runtime.
pub struct Proxy {
    shared: Arc<Shared>,
    /// The tokio runtime that accepts and serves connections (every task a connection spawns runs there).
    serving: tokio::runtime::Handle,
    listeners: tokio::sync::Mutex<HashMap<SocketAddr, listener::ListenerHandle>>,
    reuse_port: std::sync::atomic::AtomicBool,
}

impl Proxy {
    /// A proxy with no listeners, serving on the runtime of `serving`; call [`Proxy::apply`] to configure it.
    pub fn new(metrics: Arc<Metrics>, serving: tokio::runtime::Handle) -> Result<Self, ProxyError> {
        // The shared HTTP/1.1 pool's sweeper starts on the serving runtime, with the connections it sweeps.
        let _serving = serving.enter();
        let empty = Compiled { listeners: HashMap::default() };
        Ok(Proxy {
            shared: Arc::new(Shared {
                state: Arc::new(ArcSwap::from_pointee(empty)),
                metrics,
                clients: compile::SharedClients {
                    http1: upstream::Upstream::Http1(pool::Http1Pool::plain()),
                    h2c: upstream::h2c()?,
                    pool_request_limit: std::sync::atomic::AtomicUsize::new(DEFAULT_POOL_REQUEST_LIMIT),
                },
                draining: tokio::sync::watch::Sender::new(false),
                request_head_timeout_ms: std::sync::atomic::AtomicU64::new(
                    DEFAULT_REQUEST_HEAD_TIMEOUT.as_millis() as u64
                ),
                pools: portico_balance::PoolRegistry::new(),
                challenges: arc_swap::ArcSwapOption::empty(),
            }),
            serving,
            listeners: tokio::sync::Mutex::new(HashMap::new()),
            reuse_port: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Sets how many requests may be in flight to one pool's backends at once (each holds a backend connection);
    /// more wait for one to finish. Takes effect at the next [`Proxy::apply`].
    pub fn set_pool_request_limit(&self, limit: usize) {
        self.shared.clients.pool_request_limit.store(limit.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets how long a client connection may go without a request while none is in progress (see
    /// [`DEFAULT_REQUEST_HEAD_TIMEOUT`]), for connections accepted from now on; at least 1 ms.
    pub fn set_request_head_timeout(&self, timeout: std::time::Duration) {
        let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1);
        self.shared.request_head_timeout_ms.store(millis, std::sync::atomic::Ordering::Relaxed);
    }

    /// Opens listening sockets with SO_REUSEPORT from now on: several processes on one host (replicas on
    /// host networking, or an old and a new binary during an upgrade) then share each address, and the
    /// kernel spreads new connections between them. Off by default, so that a second Portico started by
    /// mistake on the same addresses fails loudly instead of taking half the traffic.
    pub fn set_reuse_port(&self, reuse_port: bool) {
        self.reuse_port.store(reuse_port, std::sync::atomic::Ordering::Relaxed);
    }

    /// Serves a new configuration. The IR is compiled first; if that fails nothing changes. Then it is
    /// swapped in, and sockets are opened and closed to match. Sockets that cannot be opened are reported;
    /// the rest of the configuration is served.
    pub async fn apply(&self, ir: &Ir, generation: u64) -> Result<Vec<ProxyError>, ProxyError> {
        for pool in ir.pools.values() {
            pool.balance.validate().map_err(|e| ProxyError::Config(format!("pool {}: {e}", pool.name)))?;
        }
        let specs = ir.pools.values().map(|p| portico_balance::PoolSpec {
            name: p.name.clone(),
            endpoints: p.endpoints.iter().map(|e| (*e, 1)).collect(),
            config: p.balance.clone(),
        });
        // The health checks and pool sweeps these start run on the serving runtime too.
        let compiled = {
            let _serving = self.serving.enter();
            let states = self.shared.pools.sync(specs);
            Compiled::new(ir, &self.shared.clients, &states)?
        };
        let wanted: HashMap<SocketAddr, portico_ir::Protocol> =
            compiled.listeners.iter().map(|(a, l)| (*a, l.protocol)).collect();
        self.shared.state.store(Arc::new(compiled));
        self.shared.metrics.set_generation(generation);

        let mut listeners = self.listeners.lock().await;
        listeners.retain(|address, handle| {
            let keep = wanted.get(address) == Some(&handle.protocol);
            if !keep {
                tracing::info!(%address, "listener closed");
                handle.stop();
            }
            keep
        });
        let mut errors = Vec::new();
        for (address, protocol) in wanted {
            if listeners.contains_key(&address) {
                continue;
            }
            // Registered with the serving runtime's reactor, which then wakes the accept loop itself.
            let bound = {
                let _serving = self.serving.enter();
                bind(address, self.reuse_port.load(std::sync::atomic::Ordering::Relaxed))
            };
            match bound {
                Ok(socket) => match listener::spawn(socket, address, protocol, self.shared.clone(), &self.serving) {
                    Ok(handle) => {
                        tracing::info!(%address, ?protocol, "listening");
                        listeners.insert(address, handle);
                    }
                    Err(source) => errors.push(ProxyError::Tls { address, source }),
                },
                Err(source) => errors.push(ProxyError::Bind { address, source }),
            }
        }
        Ok(errors)
    }

    /// Sets who answers ACME HTTP-01 challenges; they are answered before any route is consulted.
    pub fn set_challenge_responder(&self, responder: ChallengeResponder) {
        self.shared.challenges.store(Some(Arc::new(responder)));
    }

    /// Health and load of every endpoint of every pool, for the admin API.
    pub fn pool_health(&self) -> serde_json::Value {
        serde_json::to_value(self.shared.pools.health()).unwrap_or_default()
    }

    /// Per-endpoint metrics (health, in-flight, requests) in the Prometheus text format.
    pub fn pool_metrics(&self) -> String {
        self.shared.pools.render_metrics()
    }

    /// The addresses being listened on.
    pub async fn listening(&self) -> Vec<SocketAddr> {
        let mut addresses: Vec<_> = self.listeners.lock().await.keys().copied().collect();
        addresses.sort();
        addresses
    }

    /// Stops accepting, lets open connections finish their requests (up to `grace`), then returns.
    pub async fn shutdown(&self, grace: Duration) {
        self.listeners.lock().await.clear();
        self.shared.draining.send_replace(true);
        if tokio::time::timeout(grace, self.shared.draining.closed()).await.is_err() {
            tracing::warn!("connections still open after {grace:?}; closing them");
        }
    }
}

/// Binds with SO_REUSEADDR so a restart does not wait for TIME_WAIT sockets.
fn bind(address: SocketAddr, reuse_port: bool) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.set_nodelay(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}
