//! Keep-alive connections to HTTP/1.1 backends, plain or TLS: a stack of idle connections per endpoint.
//!
//! Why not hyper-util's pooled client for HTTP/1.1: per request it parses an absolute URI, hashes a pool key
//! made of scheme and authority, clones the connector and spawns a task that returns the connection to the pool;
//! profiled under `bench/run.sh http1`, that was about a fifth of the proxy's user CPU per request. Here a
//! request pops an idle connection of its endpoint and the response body pushes it back when it ends. A
//! request without a body is exchanged by [`crate::h1`] in the client connection's own task; one with a body
//! or a protocol upgrade by hyper's client connection, which hands the connection back when it is done.
//! HTTP/2 backends (gRPC, h2c) keep hyper-util's client: one multiplexed connection serves many requests there.

use crate::h1::{BackendConnection, BackendIo, ExchangeError, FramingHeaders, LeanBody};
use crate::handler::{BoxError, ProxyBody, head_only_copy};
use crate::upstream::UpstreamBody;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long an idle connection is kept (hyper-util's default was the same 60 s here), give or take a sweep.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per endpoint at most; more are closed when their response ends.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;
/// Time to open a TCP connection (and the TLS handshake) to a backend.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections found closed (the backend timed them out) before a request opens a new connection.
const MAX_STALE_PER_REQUEST: usize = 16;
/// How often every idle connection is checked: closed ones (the backend timed them out) and those idle longer
/// than [`IDLE_TIMEOUT`] are dropped. Nothing watches an idle connection between requests, so without this a
/// backend's closed sockets would stay open here (CLOSE_WAIT) until their endpoint was used again.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Why a request did not get a response from a backend.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: refused, unreachable, timed out, TLS handshake failed. Nothing was sent.
    #[error("connect: {0}")]
    Connect(String),
    /// The connection broke while the request was sent or its response awaited.
    #[error("{0}")]
    Request(String),
}

impl UpstreamError {
    /// Whether the request certainly did not reach the backend (safe to retry elsewhere).
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

/// TLS towards the backends of a re-encrypting pool.
struct Tls {
    connector: tokio_rustls::TlsConnector,
    /// The name sent by SNI and verified; the endpoint's IP address when `None`.
    server_name: Option<ServerName<'static>>,
}

struct IdleConnection {
    connection: BackendConnection,
    since: Instant,
}

/// The idle connections of each endpoint, the most recently used last.
#[derive(Default)]
struct IdleSet {
    by_endpoint: HashMap<SocketAddr, Vec<IdleConnection>, foldhash::fast::RandomState>,
}

impl IdleSet {
    /// Drops the connections that are closed or idle too long, and the endpoints left with none.
    fn sweep(&mut self) {
        let now = Instant::now();
        self.by_endpoint.retain(|_, stack| {
            stack.retain_mut(|idle| now.duration_since(idle.since) < IDLE_TIMEOUT && idle.connection.is_open());
            !stack.is_empty()
        });
    }
}

/// HTTP/1.1 keep-alive connections to the endpoints of one or more pools.
pub struct Http1Pool {
    idle: Mutex<IdleSet>,
    tls: Option<Tls>,
}

impl Http1Pool {
    /// A pool of plain-text connections.
    pub fn plain() -> Arc<Self> {
        Arc::new(Http1Pool { idle: Mutex::default(), tls: None }).swept()
    }

    /// A pool of TLS connections with `config` (ALPN is set to http/1.1 here); `server_name` fixes the SNI and
    /// verified name, else the endpoint's IP address is used.
    pub fn tls(mut config: rustls::ClientConfig, server_name: Option<ServerName<'static>>) -> Arc<Self> {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        Arc::new(Http1Pool { idle: Mutex::default(), tls: Some(Tls { connector, server_name }) }).swept()
    }

    /// Sweeps the idle connections every [`SWEEP_EVERY`] while the pool exists (a pool made outside a tokio
    /// runtime is not swept).
    fn swept(self: Arc<Self>) -> Arc<Self> {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = Arc::downgrade(&self);
            runtime.spawn(async move {
                loop {
                    tokio::time::sleep(SWEEP_EVERY).await;
                    let Some(pool) = pool.upgrade() else { return };
                    if let Ok(mut idle) = pool.idle.lock() {
                        idle.sweep();
                    }
                }
            });
        }
        self
    }

    /// Sends `request` (origin-form URI, Host header set) to `endpoint` on an idle connection, or a new one.
    /// The response body returns the connection to the pool when it has been read to its end.
    pub async fn send(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let lean = request.body().is_end_stream() && !request.headers().contains_key(http::header::UPGRADE);
        let mut stale = 0;
        loop {
            let reused = if stale < MAX_STALE_PER_REQUEST { self.take(endpoint) } else { None };
            let is_reused = reused.is_some();
            let mut connection = match reused {
                Some(connection) => connection,
                // Boxed: the TLS handshake's state is large, and this future is moved on every request.
                None => Box::pin(self.connect(endpoint)).await?,
            };
            if lean {
                match connection.exchange(&request).await {
                    Ok(head) => {
                        let response = LeanBody::response(connection, head, self.clone(), endpoint);
                        return Ok(response.map(UpstreamBody::Lean));
                    }
                    // A kept connection may have been closed by the backend a moment ago, unnoticed yet: the
                    // request went into a dead socket. Like nginx (`proxy_next_upstream error`), a request that
                    // can safely be sent again then goes on another connection.
                    Err(ExchangeError::NoResponse(error)) if is_reused && is_idempotent(request.method()) => {
                        tracing::debug!(%endpoint, %error, "kept connection failed; sent again");
                        stale += 1;
                        continue;
                    }
                    Err(error) => return Err(UpstreamError::Request(error.to_string())),
                }
            }
            // Boxed: hyper's handshake and send futures are large, and most requests (no body) never get here;
            // inline, they made every request's future larger, and it is copied whenever it moves.
            match Box::pin(self.clone().send_driven(endpoint, connection, is_reused, request)).await {
                Driven::Sent(response) => return Ok(response),
                Driven::Again(unsent) => {
                    request = unsent;
                    stale += 1;
                }
                Driven::Failed(error) => return Err(error),
            }
        }
    }

    /// Sends `request` through hyper's client on `connection` (see [`Http1Pool::drive`]).
    async fn send_driven(
        self: Arc<Self>,
        endpoint: SocketAddr,
        connection: BackendConnection,
        is_reused: bool,
        request: Request<ProxyBody>,
    ) -> Driven {
        let upgrade = request.headers().contains_key(http::header::UPGRADE);
        let (mut sender, done) = match self.drive(endpoint, connection, upgrade).await {
            Ok(driven) => driven,
            Err(error) => return Driven::Failed(error),
        };
        if sender.ready().await.is_err() {
            return Driven::Failed(UpstreamError::Connect("the backend closed the connection".into()));
        }
        // A kept connection may have been closed by the backend a moment ago, unnoticed yet (see `send`).
        let replay = (is_reused && request.body().is_end_stream() && is_idempotent(request.method()))
            .then(|| head_only_copy(&request));
        match sender.try_send_request(request).await {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                // A response that closes its connection leaves nothing to put back.
                let done = FramingHeaders::of(&parts.headers).keeps_alive(parts.version).then_some(done);
                let body = DrivenBody { body, sender: Some(sender), done };
                Driven::Sent(Response::from_parts(parts, UpstreamBody::Driven(body.ended_if_empty())))
            }
            Err(mut error) => match (error.take_message(), replay) {
                // Not written at all: try another connection.
                (Some(unsent), _) if is_reused => Driven::Again(unsent),
                (None, Some(copy)) => {
                    tracing::debug!(%endpoint, error = %error_chain(error.error()), "kept connection failed; sent again");
                    Driven::Again(copy)
                }
                _ => Driven::Failed(UpstreamError::Request(error_chain(&error.into_error()))),
            },
        }
    }

    /// The most recently used idle connection to `endpoint` that is still open.
    fn take(&self, endpoint: SocketAddr) -> Option<BackendConnection> {
        let mut idle = self.idle.lock().ok()?;
        let stack = idle.by_endpoint.get_mut(&endpoint)?;
        while let Some(mut idle) = stack.pop() {
            // Expired ones are left to the sweep: a connection idle a few seconds longer is still checked here.
            if idle.connection.is_open() {
                return Some(idle.connection);
            }
        }
        None
    }

    /// Returns a connection whose response is done.
    pub(crate) fn put(&self, endpoint: SocketAddr, connection: BackendConnection) {
        let Ok(mut idle) = self.idle.lock() else { return };
        let stack = idle.by_endpoint.entry(endpoint).or_default();
        if stack.len() < MAX_IDLE_PER_ENDPOINT {
            stack.push(IdleConnection { connection, since: Instant::now() });
        }
    }

    async fn connect(&self, endpoint: SocketAddr) -> Result<BackendConnection, UpstreamError> {
        let opening = async {
            let stream = tokio::net::TcpStream::connect(endpoint).await.map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            match &self.tls {
                None => Ok(BackendIo::Plain(stream)),
                Some(tls) => {
                    let name = tls.server_name.clone().unwrap_or_else(|| ServerName::IpAddress(endpoint.ip().into()));
                    let stream = tls.connector.connect(name, stream).await.map_err(|e| format!("TLS: {e}"))?;
                    Ok(BackendIo::Tls(Box::new(stream)))
                }
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, opening).await {
            Ok(result) => result.map(BackendConnection::new).map_err(UpstreamError::Connect),
            Err(_) => Err(UpstreamError::Connect(format!("timed out after {} s", CONNECT_TIMEOUT.as_secs()))),
        }
    }

    /// Hands `connection` to hyper's HTTP/1.1 client, driven by a task of its own. For an upgrade the
    /// connection stays with the switched protocol; otherwise, once the response has been read to its end
    /// (the returned flag is set) and the sender dropped, the task puts the connection back into the pool.
    async fn drive(
        self: Arc<Self>,
        endpoint: SocketAddr,
        connection: BackendConnection,
        upgrade: bool,
    ) -> Result<(SendRequest<ProxyBody>, Arc<AtomicBool>), UpstreamError> {
        // One buffer and write(2), as on the server side (see `listener::serve`).
        let (sender, driven) = hyper::client::conn::http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(connection.into_io()))
            .await
            .map_err(|e| UpstreamError::Connect(error_chain(&e)))?;
        let done = Arc::new(AtomicBool::new(false));
        let reusable = done.clone();
        tokio::spawn(async move {
            let ended = if upgrade {
                driven.with_upgrades().await.map(|()| None)
            } else {
                driven.without_shutdown().await.map(Some)
            };
            match ended {
                Ok(Some(parts)) if reusable.load(Ordering::Acquire) && parts.read_buf.is_empty() => {
                    self.put(endpoint, BackendConnection::new(parts.io.into_inner()));
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(error = %error_chain(&error), "backend connection ended"),
            }
        });
        Ok((sender, done))
    }
}

/// How a request sent through hyper's client ended.
enum Driven {
    Sent(Response<UpstreamBody>),
    /// The request may go again on another connection (not sent, or safe to send twice).
    Again(Request<ProxyBody>),
    Failed(UpstreamError),
}

/// Methods that mean the same when sent twice (RFC 9110 section 9.2.2).
fn is_idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    )
}

/// The body of a response from hyper's client. When it has been read to its end, the sender is dropped and the
/// connection's task told that the connection may be kept; dropped before that, the connection closes.
pub struct DrivenBody {
    body: Incoming,
    sender: Option<SendRequest<ProxyBody>>,
    done: Option<Arc<AtomicBool>>,
}

impl DrivenBody {
    fn ended_if_empty(mut self) -> Self {
        if self.body.is_end_stream() {
            self.release();
        }
        self
    }

    fn release(&mut self) {
        if let Some(done) = self.done.take() {
            done.store(true, Ordering::Release);
        }
        self.sender = None;
    }
}

impl Body for DrivenBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(),
            // An error leaves the connection unusable: it closes when the sender is dropped.
            Poll::Ready(Some(Err(_))) => {
                self.done = None;
                self.sender = None;
            }
            _ => {}
        }
        polled.map(|frame| frame.map(|result| result.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An error with its sources, `outer: inner: innermost`.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection whose backend has closed it is dropped (and its socket closed) by the next sweep,
    /// while one still open stays.
    #[tokio::test]
    async fn a_sweep_drops_the_connections_backends_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = listener.local_addr().expect("address");
        let pool = Http1Pool::plain();
        let mut accepted = Vec::new();
        for _ in 0..2 {
            let connection = pool.connect(endpoint).await.expect("connect");
            accepted.push(listener.accept().await.expect("accept").0);
            pool.put(endpoint, connection);
        }
        // The backend closes the first connection; its end of stream reaches Portico's socket.
        drop(accepted.remove(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
        {
            let mut idle = pool.idle.lock().expect("lock");
            assert_eq!(idle.by_endpoint[&endpoint].len(), 2);
            idle.sweep();
            assert_eq!(idle.by_endpoint[&endpoint].len(), 1, "the closed connection was kept");
        }
        // The one left is the open one: the backend sees no end of stream on it.
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(100), accepted[0].peek(&mut byte)).await;
        assert!(read.is_err(), "the open connection was closed");
    }

    /// A kept connection that takes the request and closes without a byte of answer (the backend's idle timeout
    /// racing the request): the request goes again, byte for byte, on the next kept connection.
    #[tokio::test]
    async fn a_request_lost_in_a_closing_connection_goes_again_on_another() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = listener.local_addr().expect("address");
        let pool = Arc::new(Http1Pool::plain());
        let mut accepted = Vec::new();
        for _ in 0..2 {
            let connection = pool.connect(endpoint).await.expect("connect");
            accepted.push(listener.accept().await.expect("accept").0);
            pool.put(endpoint, connection);
        }
        // The pool hands out the most recently kept connection first: the second one, which closes.
        let (mut answering, mut closing) = (accepted.remove(0), accepted.remove(0));
        async fn read_head(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(stream.read(&mut byte).await.expect("read"), 1, "the head ended early");
                head.push(byte[0]);
            }
            head
        }
        let backend = tokio::spawn(async move {
            let lost = read_head(&mut closing).await;
            drop(closing);
            let again = read_head(&mut answering).await;
            answering.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.expect("write");
            (lost, again)
        });
        let request =
            Request::get("/again?x=1").header("host", "h.example").body(crate::handler::empty_body()).expect("request");
        let sent = tokio::time::timeout(Duration::from_secs(5), pool.send(endpoint, request)).await;
        let response = sent.expect("an answer in time").expect("sent again");
        assert_eq!(response.status(), http::StatusCode::OK);
        let (lost, again) = backend.await.expect("backend");
        assert_eq!(String::from_utf8_lossy(&again), String::from_utf8_lossy(&lost), "the same request, again");
        assert!(again.starts_with(b"GET /again?x=1 HTTP/1.1\r\n"), "{}", String::from_utf8_lossy(&again));
    }
}
