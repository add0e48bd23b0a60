//! Active health checks: one task per pool probes every endpoint each interval (TCP connect, TLS handshake, or
//! an HTTP/1.1 request over TCP or TLS), with a timeout, and applies rise/fall counts.

use crate::config::{HealthCheck, HealthKind, HttpProbe, ProbeMethod, duration_format};
use crate::pool::{PoolState, Snapshot};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsConnector;

/// Most bytes of an HTTP probe's response that are read (status line, headers and body).
const MAX_RESPONSE: usize = 16 * 1024;

/// The running health checker of one pool. Dropping it stops the checks; they also stop by themselves when
/// the [`PoolState`] is dropped.
#[derive(Debug)]
pub struct HealthTask {
    handle: JoinHandle<()>,
}

impl HealthTask {
    /// Whether the checker has stopped (its pool was dropped).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

impl Drop for HealthTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Starts the active health checks of a pool: a Tokio task that probes every endpoint each `interval` (all
/// endpoints concurrently, each probe bounded by `timeout`), marks an endpoint down after `fall` failures in a
/// row and up after `rise` successes in a row. The first round runs at once. It follows [`PoolState::update`]
/// (new endpoints, a changed or removed check) and holds only a weak reference to the pool. A pool without an
/// active check costs an idle task.
///
/// # Panics
/// Outside a Tokio runtime, as `tokio::spawn` does.
pub fn spawn_health_checks(state: Arc<PoolState>) -> HealthTask {
    let weak = Arc::downgrade(&state);
    let wake = Arc::clone(&state.wake);
    drop(state);
    HealthTask { handle: tokio::spawn(run(weak, wake)) }
}

async fn run(pool: Weak<PoolState>, wake: Arc<Notify>) {
    let mut last_round: Option<Instant> = None;
    loop {
        // Registered before reading the configuration, so an update in between is not missed.
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let Some(strong) = pool.upgrade() else {
            return;
        };
        let snapshot = strong.current.load_full();
        let name = Arc::clone(&strong.name);
        drop(strong);
        let Some(probe) = snapshot.probe.clone() else {
            last_round = None;
            notified.await;
            continue;
        };
        if let Some(last) = last_round {
            let due = last + probe.check.interval;
            if Instant::now() < due {
                tokio::select! {
                    () = tokio::time::sleep_until(due.into()) => {}
                    () = &mut notified => {}
                }
                continue;
            }
        }
        last_round = Some(Instant::now());
        run_round(&name, &snapshot, &probe).await;
    }
}

/// Probes every endpoint of a snapshot once, concurrently, and applies the results.
pub(crate) async fn run_round(pool: &str, snapshot: &Snapshot, probe: &Arc<Probe>) {
    let mut probes = JoinSet::new();
    for state in snapshot.states() {
        let state = Arc::clone(state);
        let probe = Arc::clone(probe);
        probes.spawn(async move {
            let timeout = probe.check.timeout;
            let result = match tokio::time::timeout(timeout, probe.run(state.address)).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {}", duration_format::format(timeout))),
            };
            (state, result)
        });
    }
    while let Some(joined) = probes.join_next().await {
        if let Ok((state, result)) = joined {
            state.record_check(pool, result, probe.check.rise, probe.check.fall);
        }
    }
}

/// A health check ready to run: the TLS client built once.
pub(crate) struct Probe {
    pub(crate) check: HealthCheck,
    tls: Option<Result<TlsSetup, String>>,
}

struct TlsSetup {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl Probe {
    pub(crate) fn new(check: &HealthCheck) -> Self {
        let tls = match &check.kind {
            HealthKind::Tcp | HealthKind::Http(_) => None,
            HealthKind::Tls(tls) => Some(tls_setup(tls.ca_pem.as_deref(), tls.server_name.as_deref(), false)),
            HealthKind::Https(https) => {
                Some(tls_setup(https.tls.ca_pem.as_deref(), https.tls.server_name.as_deref(), true))
            }
        };
        Probe { check: check.clone(), tls }
    }

    async fn run(&self, endpoint: SocketAddr) -> Result<(), String> {
        let target = SocketAddr::new(endpoint.ip(), self.check.port.unwrap_or(endpoint.port()));
        let tcp = TcpStream::connect(target).await.map_err(|e| format!("connect to {target}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        match &self.check.kind {
            HealthKind::Tcp => Ok(()),
            HealthKind::Tls(_) => self.handshake(tcp, target).await.map(drop),
            HealthKind::Http(http) => exchange(tcp, http, target).await,
            HealthKind::Https(https) => exchange(self.handshake(tcp, target).await?, &https.http, target).await,
        }
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
        target: SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let setup = match &self.tls {
            Some(Ok(setup)) => setup,
            Some(Err(error)) => return Err(error.clone()),
            None => return Err("no TLS settings".into()),
        };
        let name = setup.server_name.clone().unwrap_or_else(|| ServerName::IpAddress(target.ip().into()));
        setup.connector.connect(name, tcp).await.map_err(|e| format!("TLS handshake with {target}: {e}"))
    }
}

fn tls_setup(ca_pem: Option<&str>, server_name: Option<&str>, http: bool) -> Result<TlsSetup, String> {
    let mut config = client_config(ca_pem)?;
    if http {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    let server_name = match server_name {
        Some(name) => Some(
            ServerName::try_from(name.to_string()).map_err(|_| format!("{name:?} is not a valid TLS server name"))?,
        ),
        None => None,
    };
    Ok(TlsSetup { connector: TlsConnector::from(Arc::new(config)), server_name })
}

/// TLS 1.2+ client settings for probes: verifying against `ca_pem`, or accepting any certificate when `None`.
pub(crate) fn client_config(ca_pem: Option<&str>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?;
    let config = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("CA bundle: {e}"))?;
                roots.add(cert).map_err(|e| format!("CA bundle: {e}"))?;
            }
            if roots.is_empty() {
                return Err("the CA bundle holds no certificate".into());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Accepts any certificate (handshake signatures are still checked): a probe without a CA only checks that
/// the endpoint speaks TLS.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Sends the probe's request and checks the answer's status (and body text).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    http: &HttpProbe,
    target: SocketAddr,
) -> Result<(), String> {
    let method = match http.method {
        ProbeMethod::Get => "GET",
        ProbeMethod::Head => "HEAD",
    };
    let host = http.host.clone().unwrap_or_else(|| target.to_string());
    let request = format!(
        "{method} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: portico-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        http.path
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("sending the request: {e}"))?;
    stream.flush().await.map_err(|e| format!("sending the request: {e}"))?;

    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut head: Option<(usize, Option<usize>)> = None; // (end of head, content length)
    loop {
        let read = match stream.read(&mut chunk).await {
            Ok(n) => n,
            // Servers often close TLS without close_notify; after a complete head that is the end of the body.
            Err(_) if head.is_some() => 0,
            Err(e) => return Err(format!("reading the response: {e}")),
        };
        let room = MAX_RESPONSE.saturating_sub(buffer.len());
        buffer.extend_from_slice(&chunk[..read.min(room)]);
        if head.is_none()
            && let Some(end) = find(&buffer, b"\r\n\r\n")
        {
            let status = status_code(&buffer[..end])?;
            if !http.accepts(status) {
                return Err(format!("status {status}"));
            }
            if http.body.is_none() {
                return Ok(());
            }
            head = Some((end + 4, content_length(&buffer[..end])));
        }
        if let (Some((start, length)), Some(text)) = (head, http.body.as_deref()) {
            let body = &buffer[start..];
            if find(body, text.as_bytes()).is_some() {
                return Ok(());
            }
            let complete = length.is_some_and(|l| body.len() >= l);
            if read == 0 || complete || buffer.len() >= MAX_RESPONSE {
                return Err(format!("the body does not contain {text:?}"));
            }
        } else if read == 0 || buffer.len() >= MAX_RESPONSE {
            return Err(if buffer.is_empty() {
                "the connection closed without an answer".into()
            } else {
                "no complete HTTP response head".into()
            });
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn status_code(head: &[u8]) -> Result<u16, String> {
    let line_end = find(head, b"\r\n").unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let mut words = line.split_whitespace();
    match (words.next(), words.next().and_then(|c| c.parse::<u16>().ok())) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") => Ok(code),
        _ => Err(format!("not an HTTP/1 status line: {:?}", line.chars().take(80).collect::<String>())),
    }
}

fn content_length(head: &[u8]) -> Option<usize> {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_and_lengths_parse() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\nA: b"), Ok(204));
        assert_eq!(status_code(b"HTTP/1.0 503"), Ok(503));
        assert!(status_code(b"SSH-2.0-OpenSSH").is_err());
        assert_eq!(content_length(b"HTTP/1.1 200 OK\r\nContent-Type: x\r\ncontent-length: 12"), Some(12));
        assert_eq!(content_length(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"), None);
    }
}
