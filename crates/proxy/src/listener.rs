//! Listening sockets: accept, terminate TLS with the certificate chosen by SNI from the current
//! configuration, and serve HTTP/1.1 and HTTP/2 on each connection.

use crate::compile::Compiled;
use crate::{Shared, handler};
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use portico_ir::Protocol;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses a PEM chain and key into what rustls serves.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate chain: {e}"))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|_| "private key is not valid PEM".to_string())?
        .ok_or_else(|| "no private key".to_string())?;
    let key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|_| "unsupported private key type".to_string())?;
    Ok(CertifiedKey::new(chain, key))
}

/// Picks the certificate for a ClientHello from the configuration in force *now*, so a certificate added or
/// renewed by a configuration swap is served on the next handshake.
struct SniResolver {
    state: Arc<ArcSwap<Compiled>>,
    address: SocketAddr,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver").field("address", &self.address).finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let compiled = self.state.load();
        let listener = compiled.listeners.get(&self.address)?;
        let name = hello.server_name().map(|n| n.to_ascii_lowercase());
        listener.certificate(name.as_deref()).cloned()
    }
}

/// TLS settings for a listening socket: TLS 1.2 and 1.3 only, ALPN h2 then http/1.1, session tickets on.
fn server_config(
    state: Arc<ArcSwap<Compiled>>,
    address: SocketAddr,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { state, address }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// A running accept loop; dropping it (or calling [`ListenerHandle::stop`]) stops accepting, while
/// connections already accepted carry on.
pub struct ListenerHandle {
    pub protocol: Protocol,
    task: JoinHandle<()>,
}

impl ListenerHandle {
    /// Stops accepting new connections.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts accepting on a bound socket, on the runtime of `serving`.
pub fn spawn(
    listener: TcpListener,
    address: SocketAddr,
    protocol: Protocol,
    shared: Arc<Shared>,
    serving: &tokio::runtime::Handle,
) -> Result<ListenerHandle, rustls::Error> {
    let tls = match protocol {
        Protocol::Https | Protocol::Tls => {
            Some(tokio_rustls::TlsAcceptor::from(server_config(shared.state.clone(), address)?))
        }
        Protocol::Http => None,
    };
    let task = serving.spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%address, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            shared.metrics.connection_opened();
            let shared = shared.clone();
            let tls = tls.clone();
            let activity = Arc::new(handler::Activity::default());
            let head_timeout =
                Duration::from_millis(shared.request_head_timeout_ms.load(std::sync::atomic::Ordering::Relaxed));
            let watched = activity.clone();
            let connection = tokio::spawn(async move {
                let _ended = watched.end_guard();
                // Each kind of connection in a box of its own size: in one state machine, every plain HTTP
                // connection took the room of a TLS one for as long as it lived (8.8 KB against 1.6 KB).
                let connection: Pin<Box<dyn Future<Output = ()> + Send>> = match tls {
                    None => Box::pin(serve(shared, stream, address, peer, "http", None, watched)),
                    // The handshake (and the SNI peek) are time-limited inside; the connection itself is not.
                    Some(acceptor) => Box::pin(serve_tls(shared, acceptor, stream, address, peer, watched)),
                };
                connection.await
            });
            tokio::spawn(close_when_idle(connection.abort_handle(), activity, head_timeout, peer));
        }
    });
    Ok(ListenerHandle { protocol, task })
}

/// Reads the ClientHello's server name without consuming it (the bytes stay in the socket for whoever
/// handles the connection: the backend for passthrough, rustls otherwise). `Ok(None)`: no SNI sent.
async fn peek_server_name(stream: &tokio::net::TcpStream) -> std::io::Result<Option<String>> {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut seen = 0;
    // Bounded by the handshake timeout around the caller; each pass waits for more bytes.
    loop {
        let read = stream.peek(&mut buffer).await?;
        if read == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before the ClientHello"));
        }
        let mut acceptor = rustls::server::Acceptor::default();
        let mut bytes = &buffer[..read];
        acceptor.read_tls(&mut bytes)?;
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok(accepted.client_hello().server_name().map(str::to_ascii_lowercase)),
            Ok(None) if read == buffer.len() => {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "ClientHello larger than 16 KiB"));
            }
            Ok(None) => {
                if read == seen {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                seen = read;
            }
            Err((error, _)) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error)),
        }
    }
}

/// A TLS connection: routed by server name to a TLS route (passthrough, or terminate then TCP), or
/// terminated here and served as HTTP.
async fn serve_tls(
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    address: SocketAddr,
    peer: SocketAddr,
    activity: Arc<handler::Activity>,
) {
    let has_tls_routes = shared.state.load().listeners.get(&address).is_some_and(|l| !l.tls_routes.is_empty());
    let mut route = None;
    if has_tls_routes {
        let server_name = match tokio::time::timeout(HANDSHAKE_TIMEOUT, peek_server_name(&stream)).await {
            Ok(Ok(name)) => name,
            Ok(Err(error)) => {
                tracing::debug!(%address, %peer, %error, "no ClientHello");
                return;
            }
            Err(_) => {
                tracing::debug!(%address, %peer, "no ClientHello in time");
                return;
            }
        };
        let compiled = shared.state.load_full();
        let Some(listener) = compiled.listeners.get(&address) else { return };
        if let Some(tls_route) = listener.tls_route(server_name.as_deref()) {
            if tls_route.passthrough {
                activity.exempt();
                return relay(&shared, tls_route, stream, peer).await;
            }
            route = Some(compiled.clone());
        } else if listener.protocol == Protocol::Tls {
            tracing::debug!(%address, %peer, ?server_name, "no TLS route for this server name");
            return;
        }
    }
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%address, %peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%address, %peer, "TLS handshake timed out");
            return;
        }
    };
    if let Some(compiled) = route {
        let server_name = stream.get_ref().1.server_name().map(str::to_string);
        if let Some(tls_route) = compiled.listeners.get(&address).and_then(|l| l.tls_route(server_name.as_deref())) {
            activity.exempt();
            return relay(&shared, tls_route, stream, peer).await;
        }
    }
    let server_name = stream.get_ref().1.server_name().map(Box::from);
    serve(shared, stream, address, peer, "https", server_name, activity).await
}

/// Copies bytes between a client and an endpoint of the route's pool (TLSRoute).
async fn relay<S>(shared: &Shared, route: &crate::compile::CompiledTlsRoute, mut client: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(pool) = route.pools.pick() else {
        tracing::debug!(route = %route.name, %peer, "TLS route has no valid backend");
        return;
    };
    let Some(pick) = pool.pick(peer.ip(), &http::HeaderMap::new()) else {
        tracing::debug!(route = %route.name, %peer, "TLS route's pool has no healthy endpoint");
        return;
    };
    let endpoint = pick.endpoint;
    let mut upstream =
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(endpoint)).await {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(error)) => {
                pool.state.report(endpoint, portico_balance::Outcome::ConnectError);
                shared.metrics.upstream_error(&pool.name, "connect");
                tracing::warn!(pool = %pool.name, %endpoint, %error, "cannot reach the TLS route's backend");
                return;
            }
            Err(_) => {
                shared.metrics.upstream_error(&pool.name, "timeout");
                return;
            }
        };
    let _ = upstream.set_nodelay(true);
    pool.state.report(endpoint, portico_balance::Outcome::Success);
    // The pick's guard counts this connection as in flight until the relay ends.
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(route = %route.name, %error, "relay ended");
    }
    drop(pick);
}

async fn serve<I>(
    shared: Arc<Shared>,
    io: I,
    local: SocketAddr,
    peer: SocketAddr,
    scheme: &'static str,
    server_name: Option<Box<str>>,
    activity: Arc<handler::Activity>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let watcher = shared.graceful.lock().ok().and_then(|g| g.as_ref().map(|g| g.watcher()));
    let client = Arc::new(handler::ClientConnection::new(shared, local, peer, scheme, server_name, activity));
    let service = service_fn(move |request| {
        let in_progress = InProgress::begin(client.clone());
        async move {
            let response = handler::handle(&in_progress.0, request).await;
            Ok::<_, Infallible>(response.map(|body| Tracked { body, _in_progress: in_progress }))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Head and body copied into one buffer and written with write(2), rather than gathered by writev(2): for
    // the small responses most requests get, 2% fewer instructions per request (bench/callgrind.sh).
    // Half-closed client connections are allowed: hyper otherwise reads on while each request is in flight, to
    // notice a client that closed, and took the end of the stream of a client that shuts down its sending side
    // after its request (`nc -N`) for a request given up, answering nothing. That read also made hyper set up a
    // second read buffer for every request (the first one still held the request's head): 22,233 -> 21,427
    // instructions per request (bench/callgrind.sh). A client that goes away meanwhile is noticed when its
    // answer is written; the backend's request runs on until then, within the route's timeouts (HAProxy's
    // default too, without `option abortonclose`).
    builder.http1().writev(false).half_close(true);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
    let result = match watcher {
        Some(watcher) => watcher.watch(connection).await,
        None => connection.await,
    };
    if let Err(error) = result {
        tracing::debug!(%local, %peer, %error, "connection ended with an error");
    }
}

/// Watches a client connection's task from a task of its own: closes a connection that received no request and
/// had none in progress for the request head timeout, checking every half of it (so after 1 to 1.5 times the
/// timeout). That covers a client that sends nothing (or stalls in the TLS handshake), a head byte by byte
/// (HTTP/1.1, or the HTTP/2 preface), and a connection kept alive but idle. TLS routes' relays are exempt.
///
/// hyper's own header timeout (HTTP/1.1 only) re-arms a timer per request: 1,600 instructions per request, 7%
/// (bench/callgrind.sh); this costs three atomic operations per request. A task of its own, not a wrapper around
/// the connection: the wrapper polled its timer at each wake-up, and as the connection's parent task it kept a
/// second future of 9 KB per connection (`size_of_val` of the accept loop's task).
async fn close_when_idle(
    connection: tokio::task::AbortHandle,
    activity: Arc<handler::Activity>,
    timeout: Duration,
    peer: SocketAddr,
) {
    let mut seen = activity.requests();
    let mut quiet = false;
    loop {
        tokio::select! {
            () = activity.ended() => return,
            () = tokio::time::sleep(timeout / 2) => {}
        }
        let requests = activity.requests();
        if requests != seen || activity.in_progress() > 0 {
            seen = requests;
            quiet = false;
        } else if quiet {
            tracing::debug!(%peer, "no request within the request head timeout; connection closed");
            connection.abort();
            return;
        } else {
            quiet = true;
        }
    }
}

/// A request counted as in progress on its client connection until its response is sent whole, or dropped.
struct InProgress(Arc<handler::ClientConnection>);

impl InProgress {
    fn begin(client: Arc<handler::ClientConnection>) -> Self {
        client.activity().request_began();
        InProgress(client)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.activity().request_ended();
    }
}

/// A response body that keeps its request in progress while it is sent.
struct Tracked {
    body: handler::ProxyBody,
    _in_progress: InProgress,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = handler::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
