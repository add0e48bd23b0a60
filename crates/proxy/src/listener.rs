//! Listening sockets: accept, terminate TLS with the certificate chosen by SNI from the current
//! configuration, and serve HTTP/1.1 and HTTP/2 on each connection.

use crate::compile::Compiled;
use crate::{Shared, handler};
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
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
/// The first wait for more bytes while peeking at what a client sent first; doubled at each pass that saw none.
const PEEK_PAUSE_FIRST: Duration = Duration::from_millis(2);
/// The longest wait between two peeks.
const PEEK_PAUSE_MAX: Duration = Duration::from_millis(100);

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
                // What comes before serving (the first bytes' peek, the TLS handshake) runs in a box of its own,
                // freed once it is done: in the connection's state, its room (4.4 KB with a TLS handshake, 0.55
                // KB with the peek) stayed taken for as long as the connection lived.
                let serving = match tls {
                    None => Box::pin(prepare_plain(shared, stream, address, peer, watched)).await,
                    // The handshake (and the SNI peek) are time-limited inside; the connection itself is not.
                    Some(acceptor) => Box::pin(prepare_tls(shared, acceptor, stream, address, peer, watched)).await,
                };
                if let Some(serving) = serving {
                    serving.await
                }
            });
            tokio::spawn(close_when_idle(connection.abort_handle(), activity, head_timeout, peer));
            // One connection accepted per turn of the scheduler, as nginx does (`multi_accept off`): with a
            // backlog of new connections, accepting until the budget ran out (128) queued that many handshakes
            // ahead of the requests of connections already open.
            tokio::task::yield_now().await;
        }
    });
    Ok(ListenerHandle { protocol, task })
}

/// Peeks at the first bytes a client sent, without consuming them (they stay in the socket for whoever serves
/// the connection), until `decide` can tell from them. `decide` gets the bytes so far; an empty slice means the
/// client closed before sending any. Bounded by the caller: a timeout, or the connection's idle watchdog.
async fn peek_until<T>(
    stream: &tokio::net::TcpStream,
    buffer: &mut [u8],
    mut decide: impl FnMut(&[u8]) -> std::io::Result<Option<T>>,
) -> std::io::Result<T> {
    let mut seen = 0;
    let mut pause = PEEK_PAUSE_FIRST;
    loop {
        let read = stream.peek(buffer).await?;
        if let Some(answer) = decide(&buffer[..read])? {
            return Ok(answer);
        }
        // A peek returns at once while the bytes already seen are there: each pass waits for more, a little longer
        // each time nothing came, so that a client stalling after its first bytes costs a few wake-ups a second
        // rather than hundreds until the watchdog closes it.
        if read == seen {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(PEEK_PAUSE_MAX);
        } else {
            pause = PEEK_PAUSE_FIRST;
        }
        seen = read;
    }
}

/// Reads the ClientHello's server name without consuming it (the bytes stay in the socket for whoever
/// handles the connection: the backend for passthrough, rustls otherwise). `Ok(None)`: no SNI sent.
async fn peek_server_name(stream: &tokio::net::TcpStream) -> std::io::Result<Option<String>> {
    let mut buffer = vec![0u8; 16 * 1024];
    let capacity = buffer.len();
    peek_until(stream, &mut buffer, |hello| {
        if hello.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before the ClientHello"));
        }
        let mut acceptor = rustls::server::Acceptor::default();
        let mut bytes = hello;
        acceptor.read_tls(&mut bytes)?;
        match acceptor.accept() {
            Ok(Some(accepted)) => Ok(Some(accepted.client_hello().server_name().map(str::to_ascii_lowercase))),
            Ok(None) if hello.len() == capacity => {
                Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "ClientHello larger than 16 KiB"))
            }
            Ok(None) => Ok(None),
            Err((error, _)) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error)),
        }
    })
    .await
}

/// What a client connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Http1,
    Http2,
}

/// The connection preface of HTTP/2 (RFC 9113 section 3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A plain connection speaks HTTP/2 (h2c, prior knowledge) when it starts with the HTTP/2 preface, else
/// HTTP/1.1: decided from the first bytes that differ from the preface, or all 24 of it.
///
/// Peeked rather than read: hyper-util's automatic server read the first 24 bytes itself (a `read(2)` of its
/// own, after an `EAGAIN` one) and handed them to hyper's HTTP/1.1 parser apart from the rest of the request.
/// That partial head made hyper grow its read buffer from 8 KB to 16 KB, kept for the connection's life.
fn plain_version(first_bytes: &[u8]) -> Option<Version> {
    let compared = first_bytes.len().min(HTTP2_PREFACE.len());
    if first_bytes[..compared] != HTTP2_PREFACE[..compared] || first_bytes.is_empty() {
        // Not HTTP/2; a client that closed at once gets HTTP/1.1's handling of an empty connection.
        Some(Version::Http1)
    } else if compared == HTTP2_PREFACE.len() {
        Some(Version::Http2)
    } else {
        None
    }
}

/// A TLS connection speaks what ALPN agreed on: HTTP/2 only when it was `h2` (RFC 9113 section 3.2).
fn tls_version(alpn: Option<&[u8]>) -> Version {
    if alpn == Some(b"h2") { Version::Http2 } else { Version::Http1 }
}

/// What serves a connection once it is prepared: HTTP, or a TLS route's relay.
type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A plain HTTP connection, once its first bytes tell its version: HTTP/1.1, or HTTP/2 with prior knowledge.
/// None when the client closed before.
async fn prepare_plain(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    local: SocketAddr,
    peer: SocketAddr,
    activity: Arc<handler::Activity>,
) -> Option<Serving> {
    let mut first_bytes = [0u8; HTTP2_PREFACE.len()];
    // Bounded by the connection's idle watchdog, which closes a connection whose head does not come.
    let version = match peek_until(&stream, &mut first_bytes, |bytes| Ok(plain_version(bytes))).await {
        Ok(version) => version,
        Err(error) => {
            tracing::debug!(%local, %peer, %error, "connection ended before its first request");
            return None;
        }
    };
    Some(serve(shared, stream, local, peer, "http", None, activity, version))
}

/// A TLS connection, once its handshake is done (or its ClientHello read, for a passthrough route): routed by
/// server name to a TLS route (passthrough, or terminate then TCP), or terminated here and served as HTTP. None
/// when it ended before, or no route takes it.
async fn prepare_tls(
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    address: SocketAddr,
    peer: SocketAddr,
    activity: Arc<handler::Activity>,
) -> Option<Serving> {
    let has_tls_routes = shared.state.load().listeners.get(&address).is_some_and(|l| !l.tls_routes.is_empty());
    let mut route = None;
    if has_tls_routes {
        let server_name = match tokio::time::timeout(HANDSHAKE_TIMEOUT, peek_server_name(&stream)).await {
            Ok(Ok(name)) => name,
            Ok(Err(error)) => {
                tracing::debug!(%address, %peer, %error, "no ClientHello");
                return None;
            }
            Err(_) => {
                tracing::debug!(%address, %peer, "no ClientHello in time");
                return None;
            }
        };
        let compiled = shared.state.load_full();
        let listener = compiled.listeners.get(&address)?;
        if let Some(tls_route) = listener.tls_route(server_name.as_deref()) {
            if tls_route.passthrough {
                activity.exempt();
                return relay(shared, tls_route, stream, peer);
            }
            route = Some(compiled.clone());
        } else if listener.protocol == Protocol::Tls {
            tracing::debug!(%address, %peer, ?server_name, "no TLS route for this server name");
            return None;
        }
    }
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%address, %peer, %error, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%address, %peer, "TLS handshake timed out");
            return None;
        }
    };
    if let Some(compiled) = route {
        let server_name = stream.get_ref().1.server_name();
        if let Some(tls_route) = compiled.listeners.get(&address).and_then(|l| l.tls_route(server_name)) {
            activity.exempt();
            return relay(shared, tls_route, stream, peer);
        }
    }
    let server_name = stream.get_ref().1.server_name().map(Box::from);
    let version = tls_version(stream.get_ref().1.alpn_protocol());
    Some(serve(shared, stream, address, peer, "https", server_name, activity, version))
}

/// Copies bytes between a client and an endpoint of the route's pool (TLSRoute). The pool and endpoint are
/// picked here; the copy is boxed with what it owns (the route is borrowed from a configuration that may be
/// swapped meanwhile). None when the route has no backend to take the connection.
fn relay<S>(
    shared: Arc<Shared>,
    route: &crate::compile::CompiledTlsRoute,
    mut client: S,
    peer: SocketAddr,
) -> Option<Serving>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(pool) = route.pools.pick() else {
        tracing::debug!(route = %route.name, %peer, "TLS route has no valid backend");
        return None;
    };
    let Some(pick) = pool.pick(peer.ip(), &http::HeaderMap::new()) else {
        tracing::debug!(route = %route.name, %peer, "TLS route's pool has no healthy endpoint");
        return None;
    };
    let (pool, route_name) = (pool.clone(), route.name.clone());
    Some(Box::pin(async move {
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
            tracing::debug!(route = %route_name, %error, "relay ended");
        }
        drop(pick);
    }))
}

/// Serves HTTP on a client connection until it closes, or closes it gracefully once Portico drains.
///
/// A plain function that builds the connection and boxes it, rather than an `async fn`: an `async fn` keeps
/// its arguments in its state beside what it moves them into, so `io` (a TLS stream, with rustls's state) and
/// hyper's connection would each take their room twice for as long as the connection lives.
#[allow(clippy::too_many_arguments)]
fn serve<I>(
    shared: Arc<Shared>,
    io: I,
    local: SocketAddr,
    peer: SocketAddr,
    scheme: &'static str,
    server_name: Option<Box<str>>,
    activity: Arc<handler::Activity>,
    version: Version,
) -> Serving
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let draining = shared.draining.subscribe();
    let watched = activity.clone();
    let client = Arc::new(handler::ClientConnection::new(shared, local, peer, scheme, server_name, activity));
    let service = service_fn(move |request| {
        let in_progress = InProgress::begin(client.clone());
        async move {
            let response = handler::handle(&in_progress.0, request).await;
            Ok::<_, Infallible>(response.map(|body| Tracked { body, _in_progress: in_progress }))
        }
    });
    let io = TokioIo::new(io);
    match version {
        Version::Http1 => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            // Head and body copied into one buffer and written with write(2), rather than gathered by
            // writev(2): for the small responses most requests get, 2% fewer instructions per request
            // (bench/callgrind.sh).
            // Half-closed client connections are allowed: hyper otherwise reads on while each request is in
            // flight, to notice a client that closed, and took the end of the stream of a client that shuts
            // down its sending side after its request (`nc -N`) for a request given up, answering nothing.
            // That read also made hyper set up a second read buffer for every request (the first one still held
            // the request's head): 22,233 -> 21,427 instructions per request (bench/callgrind.sh). A client that
            // goes away meanwhile is noticed when its answer is written; the backend's request runs on until
            // then, within the route's timeouts (HAProxy's default too, without `option abortonclose`).
            builder.writev(false).half_close(true);
            let connection = builder.serve_connection(io, service).with_upgrades();
            Box::pin(drained(connection, draining, watched, local, peer))
        }
        Version::Http2 => {
            let connection =
                hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, service);
            Box::pin(drained(connection, draining, watched, local, peer))
        }
    }
}

/// A hyper server connection that can be told to finish what it is doing and close.
trait GracefulClose: Future<Output = hyper::Result<()>> {
    fn close_gracefully(self: Pin<&mut Self>);
}

impl<I, S> GracefulClose for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> GracefulClose for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

pin_project_lite::pin_project! {
    /// A client connection driven until it closes; once Portico drains, or its idle watchdog asks, told to
    /// finish its request in progress (HTTP/1.1) or to send GOAWAY (HTTP/2), and close.
    struct Drained<C, S> {
        #[pin]
        connection: C,
        // Completes once Portico drains or the watchdog asks.
        #[pin]
        signal: S,
        // Where the signal stands: not polled yet, waiting, or come.
        signal_state: SignalState,
        // Tells cheaply whether Portico drains, so that the signal is polled only when it may have come; also
        // what shutting down waits for (every receiver gone), dropped with the connection.
        draining: tokio::sync::watch::Receiver<bool>,
        // Tells cheaply whether the watchdog asked.
        activity: Arc<handler::Activity>,
        local: SocketAddr,
        peer: SocketAddr,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SignalState {
    NotPolled,
    Waiting,
    Come,
}

/// `connection`, closed gracefully once Portico drains or its watchdog asks.
fn drained<C: GracefulClose>(
    connection: C,
    draining: tokio::sync::watch::Receiver<bool>,
    activity: Arc<handler::Activity>,
    local: SocketAddr,
    peer: SocketAddr,
) -> Drained<C, impl Future<Output = ()>> {
    let (mut signal_draining, signal_activity) = (draining.clone(), activity.clone());
    let signal = async move {
        tokio::select! {
            // An error means the proxy itself is gone: closing is right then too.
            _ = signal_draining.wait_for(|draining| *draining) => {}
            () = signal_activity.asked_to_close() => {}
        }
    };
    Drained { connection, signal, signal_state: SignalState::NotPolled, draining, activity, local, peer }
}

impl<C, S> Future for Drained<C, S>
where
    C: GracefulClose,
    S: Future<Output = ()>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let mut this = self.project();
        // Polling the signal (a watch and a Notify, each behind a lock) at every wake-up of the connection cost
        // 641 instructions per request (bench/callgrind.sh: 20,391 -> 19,750); once it has registered the
        // task's waker, it is polled again only when one of two atomic loads says it may have come.
        let may_have_come = match *this.signal_state {
            SignalState::NotPolled => true,
            SignalState::Waiting => this.activity.was_asked_to_close() || this.draining.has_changed().unwrap_or(true),
            SignalState::Come => false,
        };
        if may_have_come {
            *this.signal_state = SignalState::Waiting;
            if this.signal.poll(cx).is_ready() {
                *this.signal_state = SignalState::Come;
                this.connection.as_mut().close_gracefully();
            }
        }
        if let Err(error) = std::task::ready!(this.connection.poll(cx)) {
            tracing::debug!(local = %this.local, peer = %this.peer, %error, "connection ended with an error");
        }
        std::task::Poll::Ready(())
    }
}

/// Watches a client connection's task from a task of its own: closes a connection that received no request and
/// had none in progress for the request head timeout, checking every half of it. After 1 to 1.5 times the
/// timeout the connection is asked to close gracefully (an idle HTTP/1.1 connection closes at once, an HTTP/2
/// one sends GOAWAY first, so that its client knows no request was lost); half a timeout later, one still open
/// is closed outright. That covers a client that sends nothing (or stalls in the TLS handshake), a head byte by
/// byte (HTTP/1.1, or the HTTP/2 preface), a client that ignores the GOAWAY, and a connection kept alive but idle.
/// TLS routes' relays are exempt.
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
    // Checks in a row that saw no request and none in progress.
    let mut quiet = 0;
    loop {
        tokio::select! {
            () = activity.ended() => return,
            () = tokio::time::sleep(timeout / 2) => {}
        }
        let requests = activity.requests();
        if requests != seen || activity.in_progress() > 0 {
            seen = requests;
            quiet = 0;
            continue;
        }
        quiet += 1;
        if quiet == 2 {
            tracing::debug!(%peer, "no request within the request head timeout; connection asked to close");
            activity.ask_to_close();
        } else if quiet > 2 {
            tracing::debug!(%peer, "connection still open after it was asked to close; closed");
            connection.abort();
            return;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_connection_is_http2_only_once_the_whole_preface_came() {
        assert_eq!(plain_version(HTTP2_PREFACE), Some(Version::Http2));
        let mut longer = HTTP2_PREFACE.to_vec();
        longer.extend_from_slice(b"\0\0\x12\x04");
        assert_eq!(plain_version(&longer), Some(Version::Http2));
        // Part of the preface: wait for more.
        assert_eq!(plain_version(b"P"), None);
        assert_eq!(plain_version(b"PRI * HTTP/2.0\r\n"), None);
    }

    #[test]
    fn a_plain_connection_is_http1_from_its_first_byte_unlike_the_preface() {
        assert_eq!(plain_version(b"G"), Some(Version::Http1));
        assert_eq!(plain_version(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(Version::Http1));
        // POST, PUT and PATCH share the preface's first letter only.
        assert_eq!(plain_version(b"PO"), Some(Version::Http1));
        assert_eq!(plain_version(b"PUT /x HTTP/1.1\r\n"), Some(Version::Http1));
        // A request shorter than the preface.
        assert_eq!(plain_version(b"GET / HTTP/1.0\r\n\r\n"), Some(Version::Http1));
        // Closed before sending anything: hyper's HTTP/1.1 side sees the end and closes.
        assert_eq!(plain_version(b""), Some(Version::Http1));
    }

    #[test]
    fn a_tls_connection_is_http2_only_when_alpn_agreed_on_h2() {
        assert_eq!(tls_version(Some(b"h2")), Version::Http2);
        assert_eq!(tls_version(Some(b"http/1.1")), Version::Http1);
        assert_eq!(tls_version(None), Version::Http1);
    }
}
