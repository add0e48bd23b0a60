//! Keep-alive connections to HTTP/1.1 backends, plain or TLS: a stack of idle connections per endpoint.
//!
//! Why not hyper-util's pooled client for HTTP/1.1: per request it parses an absolute URI, hashes a pool key
//! made of scheme and authority, clones the connector and spawns a task that returns the connection to the pool;
//! profiled under `bench/run.sh http1`, that was about a fifth of the proxy's user CPU per request. Here a
//! request pops an idle connection of its endpoint and the response body pushes it back when it ends. HTTP/2
//! backends (gRPC, h2c) keep hyper-util's client: one multiplexed connection serves many requests there.

use crate::handler::{ProxyBody, head_only_copy};
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long an idle connection is kept (hyper-util's default was the same 60 s here).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per endpoint at most; more are closed when their response ends.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;
/// Time to open a TCP connection (and the TLS handshake) to a backend.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections found closed (the backend timed them out) before a request opens a new connection.
const MAX_STALE_PER_REQUEST: usize = 16;

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
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

/// HTTP/1.1 keep-alive connections to the endpoints of one or more pools.
pub struct Http1Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<IdleConnection>, foldhash::fast::RandomState>>,
    tls: Option<Tls>,
}

impl Http1Pool {
    /// A pool of plain-text connections.
    pub fn plain() -> Arc<Self> {
        Arc::new(Http1Pool { idle: Mutex::default(), tls: None })
    }

    /// A pool of TLS connections with `config` (ALPN is set to http/1.1 here); `server_name` fixes the SNI and
    /// verified name, else the endpoint's IP address is used.
    pub fn tls(mut config: rustls::ClientConfig, server_name: Option<ServerName<'static>>) -> Arc<Self> {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        Arc::new(Http1Pool { idle: Mutex::default(), tls: Some(Tls { connector, server_name }) })
    }

    /// Sends `request` (origin-form URI, Host header set) to `endpoint` on an idle connection, or a new one.
    /// The response body returns the connection to the pool when it has been read to its end.
    pub async fn send(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let mut stale = 0;
        loop {
            let reused = if stale < MAX_STALE_PER_REQUEST { self.take(endpoint) } else { None };
            let is_reused = reused.is_some();
            let mut sender = match reused {
                Some(sender) => sender,
                // Boxed: the TLS handshake's state is large, and this future is moved on every request.
                None => Box::pin(self.connect(endpoint)).await?,
            };
            if sender.ready().await.is_err() {
                // Closed by the backend while idle: nothing was sent.
                if is_reused {
                    stale += 1;
                    continue;
                }
                return Err(UpstreamError::Connect("the backend closed the new connection".into()));
            }
            // A kept connection may have been closed by the backend a moment ago, unnoticed yet: the request
            // is written into a dead socket and fails. Like nginx (`proxy_next_upstream error`), a request
            // that can safely be sent again (idempotent, no body) then goes on another connection.
            let replay = (is_reused && request.body().is_end_stream() && is_idempotent(request.method()))
                .then(|| head_only_copy(&request));
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.clone().wrap(endpoint, sender, response)),
                Err(mut error) => match (error.take_message(), replay) {
                    // Not written at all: try another connection.
                    (Some(unsent), _) if is_reused => {
                        request = unsent;
                        stale += 1;
                    }
                    (None, Some(copy)) => {
                        tracing::debug!(%endpoint, error = %error_chain(error.error()), "kept connection failed; sent again");
                        request = copy;
                        stale += 1;
                    }
                    _ => return Err(UpstreamError::Request(error_chain(&error.into_error()))),
                },
            }
        }
    }

    /// The most recently used idle connection to `endpoint` that is still open.
    fn take(&self, endpoint: SocketAddr) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().ok()?;
        let stack = idle.get_mut(&endpoint)?;
        while let Some(connection) = stack.pop() {
            if !connection.sender.is_closed() && connection.since.elapsed() < IDLE_TIMEOUT {
                return Some(connection.sender);
            }
        }
        None
    }

    /// Returns a connection whose response is done.
    fn put(&self, endpoint: SocketAddr, sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else { return };
        let stack = idle.entry(endpoint).or_default();
        // The oldest are at the bottom: drop those idle too long (closing their connections).
        let expired = stack.iter().take_while(|c| c.since.elapsed() >= IDLE_TIMEOUT).count();
        if expired > 0 {
            stack.drain(..expired);
        }
        if stack.len() < MAX_IDLE_PER_ENDPOINT {
            stack.push(IdleConnection { sender, since: Instant::now() });
        }
    }

    async fn connect(&self, endpoint: SocketAddr) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        let opening = async {
            let stream = tokio::net::TcpStream::connect(endpoint).await.map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            match &self.tls {
                None => handshake(stream).await,
                Some(tls) => {
                    let name = tls.server_name.clone().unwrap_or_else(|| ServerName::IpAddress(endpoint.ip().into()));
                    let stream = tls.connector.connect(name, stream).await.map_err(|e| format!("TLS: {e}"))?;
                    handshake(stream).await
                }
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, opening).await {
            Ok(result) => result.map_err(UpstreamError::Connect),
            Err(_) => Err(UpstreamError::Connect(format!("timed out after {} s", CONNECT_TIMEOUT.as_secs()))),
        }
    }

    fn wrap(
        self: Arc<Self>,
        endpoint: SocketAddr,
        sender: SendRequest<ProxyBody>,
        response: Response<Incoming>,
    ) -> Response<PooledBody> {
        // A switched protocol takes the connection for good.
        let reusable = response.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        let (parts, body) = response.into_parts();
        let mut pooled = PooledBody { body, back: reusable.then_some((self, endpoint, sender)) };
        if pooled.body.is_end_stream() {
            pooled.release();
        }
        Response::from_parts(parts, pooled)
    }
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

/// Starts the HTTP/1.1 client side of a connection; the connection is driven by its own task.
async fn handshake<S>(stream: S) -> Result<SendRequest<ProxyBody>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // One buffer and write(2), as on the server side (see `listener::serve`).
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| error_chain(&e))?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(error = %error_chain(&error), "backend connection ended");
        }
    });
    Ok(sender)
}

/// A backend's response body; when read to its end, its connection goes back to the pool. Dropped before
/// that, the connection closes (HTTP/1.1 cannot abandon a response and go on).
pub struct PooledBody {
    body: Incoming,
    back: Option<(Arc<Http1Pool>, SocketAddr, SendRequest<ProxyBody>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((pool, endpoint, sender)) = self.back.take() {
            pool.put(endpoint, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(),
            // An error leaves the connection unusable: it is dropped with this body.
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
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
