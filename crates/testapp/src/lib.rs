//! Portico test application: a tiny HTTP/HTTPS server used as a post-deployment
//! check and as a backend in proxy tests.
//!
//! Routes (any method):
//! - `?delay=MS` and `?status=CODE` on any page answer late or with another status (for testing proxies).
//! - `/` serves a white HTML page; `/pink`, `/blue` and `/green` (plus a trailing
//!   slash or any subpath such as `/pink/x`) serve a page of that colour. The colour
//!   word is the page `<title>`, and `<p id="instance">NAME</p>` names the instance.
//! - `/healthz` returns `{"status":"UP"}` as `application/json`.
//! - anything else is a `404`.
//!
//! Every response, 404s included, carries these headers describing the request:
//! `x-testapp-instance`, `x-testapp-path` (path and query), `x-testapp-host` (the
//! `Host` header, or `:authority` for HTTP/2), `x-testapp-method`, `x-testapp-proto`
//! (`http` or `https`), `x-testapp-request-headers` (a JSON object of all request
//! headers, lowercased name to value, last wins) and, for every request header
//! `x-echo-<name>`, a response header `x-testapp-echo-<name>` with the same value.
//!
//! The plain listener speaks HTTP/1.1 and h2c; the TLS listener accepts TLS 1.2 and
//! 1.3 only and offers ALPN `h2` and `http/1.1`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// How long [`RunningTestApp::shutdown`] waits for open connections before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Upper bound on a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors returned while starting the test application.
#[derive(Debug, thiserror::Error)]
pub enum TestAppError {
    /// Neither an HTTP nor an HTTPS address was configured.
    #[error("no listener configured: set at least one of http or https")]
    NoListeners,
    /// The instance name cannot be sent as an HTTP header value.
    #[error("invalid instance name {0:?}: it must be a valid HTTP header value")]
    InvalidName(String),
    /// Only one of the certificate and key files was given.
    #[error("tls_cert and tls_key must be given together")]
    IncompleteTlsFiles,
    /// Binding a listening socket failed.
    #[error("failed to bind {addr}: {source}")]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A certificate or key file could not be read or parsed.
    #[error("failed to load {}: {reason}", .path.display())]
    Pem {
        /// The offending file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Generating the self-signed certificate failed.
    #[error("failed to generate self-signed certificate: {0}")]
    CertGen(#[from] rcgen::Error),
    /// rustls rejected the certificate/key pair or the protocol configuration.
    #[error("invalid TLS configuration{context}: {source}")]
    Tls {
        /// Where the certificate came from (empty, or " for CERT and KEY").
        context: String,
        /// The rustls error.
        source: rustls::Error,
    },
}

/// Configuration of a test application instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestAppConfig {
    /// Instance name, shown in pages and in the `x-testapp-instance` header.
    pub name: String,
    /// Plain-text (HTTP/1.1 and h2c) listen address; `None` disables it.
    pub http: Option<SocketAddr>,
    /// TLS listen address; `None` disables it.
    pub https: Option<SocketAddr>,
    /// PEM certificate chain file; a self-signed certificate is generated if unset.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key file (PKCS#8, PKCS#1/RSA or SEC1), required with `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for TestAppConfig {
    fn default() -> Self {
        Self {
            name: "testapp".to_owned(),
            http: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            https: Some(SocketAddr::from(([0, 0, 0, 0], 8443))),
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// Handle to a started test application.
///
/// Dropping the handle without calling [`RunningTestApp::shutdown`] also stops the
/// listeners (without waiting for them).
#[derive(Debug)]
pub struct RunningTestApp {
    /// Actual bound HTTP address (useful when the configured port was 0).
    pub http_addr: Option<SocketAddr>,
    /// Actual bound HTTPS address (useful when the configured port was 0).
    pub https_addr: Option<SocketAddr>,
    https_certs: Vec<CertificateDer<'static>>,
    shutdown: watch::Sender<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningTestApp {
    /// The certificate chain served on the HTTPS listener (empty without HTTPS).
    /// With a self-generated certificate, clients can trust `https_certificates()[0]`.
    pub fn https_certificates(&self) -> &[CertificateDer<'static>] {
        &self.https_certs
    }

    /// Stops accepting connections, lets open connections finish gracefully for up to
    /// about 5 seconds, then aborts the rest and waits for all server tasks to end.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Binds the sockets (so port 0 works and the actual addresses are reported), spawns
/// the servers on the current tokio runtime and returns at once.
pub async fn start(config: TestAppConfig) -> Result<RunningTestApp, TestAppError> {
    if config.http.is_none() && config.https.is_none() {
        return Err(TestAppError::NoListeners);
    }
    let instance = HeaderValue::from_str(&config.name).map_err(|_| TestAppError::InvalidName(config.name.clone()))?;
    let (tls, https_certs) = match config.https {
        Some(_) => {
            let (certs, key, context) = match (&config.tls_cert, &config.tls_key) {
                (Some(cert), Some(key)) => {
                    let ctx = format!(" for {} and {}", cert.display(), key.display());
                    (load_certs(cert)?, load_key(key)?, ctx)
                }
                (None, None) => {
                    let (certs, key) = self_signed(&config.name)?;
                    (certs, key, String::new())
                }
                _ => return Err(TestAppError::IncompleteTlsFiles),
            };
            let server_config =
                server_tls_config(certs.clone(), key).map_err(|source| TestAppError::Tls { context, source })?;
            (Some(TlsAcceptor::from(Arc::new(server_config))), certs)
        }
        None => (None, Vec::new()),
    };

    let http = match config.http {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let https = match config.https {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };

    let app = Arc::new(App { name: config.name, instance });
    let (shutdown, rx) = watch::channel(());
    let mut running = RunningTestApp { http_addr: None, https_addr: None, https_certs, shutdown, tasks: Vec::new() };
    for (listener, tls) in [(http, None), (https, tls)] {
        if let Some((listener, addr)) = listener {
            if tls.is_some() {
                running.https_addr = Some(addr);
            } else {
                running.http_addr = Some(addr);
            }
            tracing::info!(%addr, tls = tls.is_some(), name = %app.name, "testapp listening");
            let task = serve(listener, tls, app.clone(), rx.clone());
            running.tasks.push(tokio::spawn(task));
        }
    }
    Ok(running)
}

/// Generates a self-signed certificate with subject CN `portico-testapp <name>` and
/// subject alternative names `localhost` and `127.0.0.1`, returning the chain (one
/// certificate) and its PKCS#8 private key.
pub fn self_signed(name: &str) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TestAppError> {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, format!("portico-testapp {name}"));
    params.distinguished_name = dn;
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((vec![cert.der().clone()], key_der))
}

/// Builds the server TLS configuration: ring provider, TLS 1.3 and 1.2 only, ALPN
/// `h2` then `http/1.1`.
fn server_tls_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn pem_error(path: &Path, reason: impl ToString) -> TestAppError {
    TestAppError::Pem { path: path.to_owned(), reason: reason.to_string() }
}

fn open(path: &Path) -> Result<BufReader<File>, TestAppError> {
    File::open(path).map(BufReader::new).map_err(|e| pem_error(path, e))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TestAppError> {
    let certs =
        rustls_pemfile::certs(&mut open(path)?).collect::<Result<Vec<_>, _>>().map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no PEM certificate found"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TestAppError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|e| pem_error(path, e))?
        .ok_or_else(|| pem_error(path, "no PKCS#8, RSA or SEC1 private key found"))
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), TestAppError> {
    let err = |source| TestAppError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// Shared per-instance state.
struct App {
    name: String,
    instance: HeaderValue,
}

/// Accept loop of one listener; returns after a shutdown signal once connections
/// have drained (or the grace period has elapsed).
async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, app: Arc<App>, mut shutdown: watch::Receiver<()>) {
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            // Fires on an explicit shutdown and when the handle is dropped.
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "testapp accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let watcher = graceful.watcher();
                let (tls, app) = (tls.clone(), app.clone());
                conns.spawn(async move {
                    let https = tls.is_some();
                    let service = service_fn(move |req| handle(req, app.clone(), https));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let result = match tls {
                        None => {
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                            watcher.watch(conn).await
                        }
                        Some(acceptor) => {
                            let stream =
                                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                                    .await
                                {
                                    Ok(Ok(stream)) => stream,
                                    Ok(Err(error)) => {
                                        tracing::debug!(%peer, %error, "testapp TLS handshake failed");
                                        return;
                                    }
                                    Err(_) => return,
                                };
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                            watcher.watch(conn).await
                        }
                    };
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "testapp connection error");
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("testapp graceful shutdown timed out; aborting connections");
    }
    conns.shutdown().await;
}

/// Which page a request path maps to.
fn route(path: &str) -> Option<&'static str> {
    if path == "/" {
        return Some("white");
    }
    if path == "/healthz" {
        return Some("healthz");
    }
    let first = path.strip_prefix('/')?.split('/').next()?;
    ["pink", "blue", "green"].into_iter().find(|c| *c == first)
}

/// `/ws`: a WebSocket echo, for checking that upgrades pass through a proxy.
fn websocket_echo(req: &mut Request<Incoming>, app: &App) -> Option<Response<Full<Bytes>>> {
    let wants = req.uri().path() == "/ws"
        && req
            .headers()
            .get(http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !wants {
        return None;
    }
    let key = req.headers().get("sec-websocket-key")?.as_bytes().to_vec();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let upgrade = hyper::upgrade::on(req);
    let name = app.name.clone();
    tokio::spawn(async move {
        use futures_util::{SinkExt, StreamExt};
        let Ok(upgraded) = upgrade.await else { return };
        let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        // Bounded: a test client sends a few messages; the echo stops when the client closes.
        while let Some(Ok(message)) = socket.next().await {
            let reply = match message {
                tokio_tungstenite::tungstenite::Message::Text(text) => {
                    tokio_tungstenite::tungstenite::Message::text(format!("{name}: {}", text.as_str()))
                }
                tokio_tungstenite::tungstenite::Message::Binary(data) => {
                    tokio_tungstenite::tungstenite::Message::Binary(data)
                }
                tokio_tungstenite::tungstenite::Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(http::header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert("sec-websocket-accept", HeaderValue::from_str(&accept).ok()?);
    headers.insert("x-testapp-instance", app.instance.clone());
    Some(response)
}

async fn handle(mut req: Request<Incoming>, app: Arc<App>, https: bool) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(response) = websocket_echo(&mut req, &app) {
        return Ok(response);
    }
    let (parts, mut body) = req.into_parts();
    // Drain the request body so the connection stays reusable.
    while let Some(Ok(_)) = body.frame().await {}

    // Test knobs for proxies: `?delay=MS` answers late (at most 10 s), `?status=CODE` answers with that code.
    let query = parts.uri.query().unwrap_or("");
    let knob = |name: &str| query.split('&').find_map(|p| p.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok());
    if let Some(ms) = knob("delay") {
        tokio::time::sleep(Duration::from_millis(ms.min(10_000))).await;
    }
    let forced = knob("status").and_then(|s| u16::try_from(s).ok()).and_then(|s| StatusCode::from_u16(s).ok());

    let (status, content_type, body) = match route(parts.uri.path()) {
        Some("healthz") => (StatusCode::OK, "application/json", r#"{"status":"UP"}"#.to_owned()),
        Some(colour) => (StatusCode::OK, "text/html; charset=utf-8", page(colour, &app.name)),
        None => (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = forced.unwrap_or(status);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("x-testapp-instance", app.instance.clone());
    describe_request(&parts, https, headers);
    Ok(response)
}

/// Adds the `x-testapp-*` headers describing the received request.
fn describe_request(parts: &http::request::Parts, https: bool, out: &mut HeaderMap) {
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let authority = parts.uri.authority().map(|a| a.as_str());
    let host_header = parts.headers.get(HOST).and_then(|h| h.to_str().ok());
    let host = if parts.version == Version::HTTP_2 { authority.or(host_header) } else { host_header.or(authority) };
    let pairs = [
        ("x-testapp-path", Some(path)),
        ("x-testapp-host", host),
        ("x-testapp-method", Some(parts.method.as_str())),
        ("x-testapp-proto", Some(if https { "https" } else { "http" })),
    ];
    for (name, value) in pairs {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            out.insert(name, value);
        }
    }

    let mut all = BTreeMap::new();
    for (name, value) in &parts.headers {
        all.insert(name.as_str(), String::from_utf8_lossy(value.as_bytes()));
        if let Some(rest) = name.as_str().strip_prefix("x-echo-")
            && let Ok(echo) = HeaderName::try_from(format!("x-testapp-echo-{rest}"))
        {
            out.append(echo, value.clone());
        }
    }
    if let Ok(json) = serde_json::to_string(&all)
        && let Ok(value) = HeaderValue::from_bytes(json.as_bytes())
    {
        out.insert("x-testapp-request-headers", value);
    }
}

fn page(colour: &str, name: &str) -> String {
    let name = html_escape(name);
    format!(
        "<!DOCTYPE html>\n<html>\n<head><meta charset=\"utf-8\"><title>{colour}</title></head>\n\
         <body style=\"background-color: {colour};\">\n<h1>{colour}</h1>\n\
         <p id=\"instance\">{name}</p>\n</body>\n</html>\n"
    )
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
