//! End-to-end tests of the test application over real sockets on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_testapp::{RunningTestApp, TestAppConfig, TestAppError, self_signed, start};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Reply {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("<missing>")
    }
}

fn local() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 0)))
}

async fn start_http(name: &str) -> Result<RunningTestApp, TestAppError> {
    start(TestAppConfig { name: name.to_owned(), http: local(), https: None, ..TestAppConfig::default() }).await
}

async fn start_https(name: &str) -> Result<RunningTestApp, TestAppError> {
    start(TestAppConfig { name: name.to_owned(), http: None, https: local(), ..TestAppConfig::default() }).await
}

async fn collect(resp: http::Response<hyper::body::Incoming>) -> Result<Reply, hyper::Error> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// One HTTP/1.1 request on a fresh connection.
async fn send_h1<IO>(io: IO, req: Request<Empty<Bytes>>) -> Result<Reply, hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    collect(sender.send_request(req).await?).await
}

/// One HTTP/2 request on a fresh connection (prior knowledge or after ALPN).
async fn send_h2<IO>(io: IO, req: Request<Empty<Bytes>>) -> Result<Reply, hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
    tokio::spawn(conn);
    collect(sender.send_request(req).await?).await
}

async fn get(addr: SocketAddr, path: &str) -> Result<Reply, Box<dyn std::error::Error>> {
    let req = Request::get(path).header("host", format!("localhost:{}", addr.port())).body(Empty::new())?;
    Ok(send_h1(TcpStream::connect(addr).await?, req).await?)
}

/// TLS client trusting exactly `cert`, limited to `versions`, offering `alpn`.
async fn tls_connect(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Result<TlsStream<TcpStream>, Box<dyn std::error::Error>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost")?;
    Ok(TlsConnector::from(Arc::new(config)).connect(name, tcp).await?)
}

fn https_parts(app: &RunningTestApp) -> Result<(SocketAddr, CertificateDer<'static>), String> {
    let addr = app.https_addr.ok_or("no https address")?;
    let cert = app.https_certificates().first().cloned().ok_or("no https certificate")?;
    Ok((addr, cert))
}

#[tokio::test]
async fn http_serves_colour_pages_with_instance_name() -> TestResult {
    let app = start_http("alpha").await?;
    let addr = app.http_addr.ok_or("no http address")?;
    assert_ne!(addr.port(), 0, "actual port is reported");

    for (path, colour) in [
        ("/", "white"),
        ("/pink", "pink"),
        ("/pink/", "pink"),
        ("/pink/x/y", "pink"),
        ("/blue", "blue"),
        ("/green/", "green"),
    ] {
        let reply = get(addr, path).await?;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert!(reply.header("content-type").starts_with("text/html"));
        assert!(reply.body.contains(&format!("<title>{colour}</title>")), "{path}: {}", reply.body);
        assert!(reply.body.contains(&format!("background-color: {colour};")));
        assert!(reply.body.contains(r#"<p id="instance">alpha</p>"#));
        assert_eq!(reply.header("x-testapp-instance"), "alpha");
    }
    app.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn healthz_returns_json_and_unknown_paths_404() -> TestResult {
    let app = start_http("beta").await?;
    let addr = app.http_addr.ok_or("no http address")?;

    let health = get(addr, "/healthz").await?;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.header("content-type"), "application/json");
    assert_eq!(health.body, r#"{"status":"UP"}"#);
    assert_eq!(health.header("x-testapp-instance"), "beta");

    for path in ["/nope", "/pinky", "/healthz/extra", "/white"] {
        let reply = get(addr, path).await?;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.header("x-testapp-instance"), "beta");
        assert_eq!(reply.header("x-testapp-path"), path);
    }
    app.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn responses_describe_the_received_request() -> TestResult {
    let app = start_http("gamma").await?;
    let addr = app.http_addr.ok_or("no http address")?;

    let req = Request::post("/nope/a?b=1&c=2")
        .header("host", "example.test:8080")
        .header("x-echo-colour", "mauve")
        .header("x-echo-multi", "one")
        .header("x-echo-multi", "two")
        .header("x-other", "first")
        .header("x-other", "last")
        .body(Empty::new())?;
    let reply = send_h1(TcpStream::connect(addr).await?, req).await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.header("x-testapp-path"), "/nope/a?b=1&c=2");
    assert_eq!(reply.header("x-testapp-host"), "example.test:8080");
    assert_eq!(reply.header("x-testapp-method"), "POST");
    assert_eq!(reply.header("x-testapp-proto"), "http");
    assert_eq!(reply.header("x-testapp-echo-colour"), "mauve");
    let multi: Vec<_> = reply.headers.get_all("x-testapp-echo-multi").iter().filter_map(|v| v.to_str().ok()).collect();
    assert_eq!(multi, ["one", "two"]);
    assert!(reply.headers.get("x-testapp-echo-x-other").is_none());

    let json: serde_json::Value = serde_json::from_str(reply.header("x-testapp-request-headers"))?;
    assert_eq!(json["host"], "example.test:8080");
    assert_eq!(json["x-echo-colour"], "mauve");
    assert_eq!(json["x-other"], "last");
    app.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn plain_listener_speaks_h2c() -> TestResult {
    let app = start_http("delta").await?;
    let addr = app.http_addr.ok_or("no http address")?;
    let req = Request::get(format!("http://h2c.test:{}/blue/deep", addr.port())).body(Empty::new())?;
    let reply = send_h2(TcpStream::connect(addr).await?, req).await?;
    assert_eq!(reply.version, Version::HTTP_2);
    assert!(reply.body.contains("<title>blue</title>"));
    assert_eq!(reply.header("x-testapp-host"), format!("h2c.test:{}", addr.port()));
    assert_eq!(reply.header("x-testapp-proto"), "http");
    app.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn https_self_signed_negotiates_modern_tls() -> TestResult {
    let app = start_https("epsilon").await?;
    let (addr, cert) = https_parts(&app)?;
    assert!(app.http_addr.is_none());
    // The generated certificate names this instance, not rcgen's default subject.
    let der: &[u8] = cert.as_ref();
    assert!(der.windows(23).any(|w| w == b"portico-testapp epsilon"));

    let tls = tls_connect(addr, &cert, rustls::DEFAULT_VERSIONS, &[b"http/1.1"]).await?;
    let version = tls.get_ref().1.protocol_version();
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let req = Request::get("/pink").header("host", "localhost").body(Empty::new())?;
    let reply = send_h1(tls, req).await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains("<title>pink</title>"));
    assert_eq!(reply.header("x-testapp-instance"), "epsilon");
    assert_eq!(reply.header("x-testapp-proto"), "https");

    // A TLS-1.2-only client is accepted too.
    let tls12 = tls_connect(addr, &cert, &[&rustls::version::TLS12], &[]).await?;
    let version = tls12.get_ref().1.protocol_version();
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
    let req = Request::get("/healthz").header("host", "localhost").body(Empty::new())?;
    let reply = send_h1(tls12, req).await?;
    assert_eq!(reply.body, r#"{"status":"UP"}"#);
    app.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn https_negotiates_h2_via_alpn() -> TestResult {
    let app = start_https("zeta").await?;
    let (addr, cert) = https_parts(&app)?;
    let tls = tls_connect(addr, &cert, rustls::DEFAULT_VERSIONS, &[b"h2", b"http/1.1"]).await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    let req = Request::get(format!("https://localhost:{}/green?x=1", addr.port()))
        .header("x-echo-via", "h2")
        .body(Empty::new())?;
    let reply = send_h2(tls, req).await?;
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains("<title>green</title>"));
    assert!(reply.body.contains(r#"<p id="instance">zeta</p>"#));
    assert_eq!(reply.header("x-testapp-proto"), "https");
    assert_eq!(reply.header("x-testapp-path"), "/green?x=1");
    assert_eq!(reply.header("x-testapp-host"), format!("localhost:{}", addr.port()));
    assert_eq!(reply.header("x-testapp-echo-via"), "h2");
    app.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn https_uses_pem_files() -> TestResult {
    let (certs, key) = self_signed("from-files")?;
    let dir = tempfile::tempdir()?;
    let cert_path = dir.path().join("tls.crt");
    let key_path = dir.path().join("tls.key");
    let cert_pem =
        format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", base64_lines(certs[0].as_ref()));
    let key_pem =
        format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", base64_lines(key.secret_der()));
    std::fs::write(&cert_path, cert_pem)?;
    std::fs::write(&key_path, key_pem)?;

    let app = start(TestAppConfig {
        name: "files".to_owned(),
        http: local(),
        https: local(),
        tls_cert: Some(cert_path),
        tls_key: Some(key_path),
    })
    .await?;
    let addr = app.https_addr.ok_or("no https address")?;
    assert_eq!(app.https_certificates(), &certs[..]);
    let tls = tls_connect(addr, &certs[0], rustls::DEFAULT_VERSIONS, &[]).await?;
    let req = Request::get("/blue").header("host", "localhost").body(Empty::new())?;
    let reply = send_h1(tls, req).await?;
    assert!(reply.body.contains("<title>blue</title>"));
    assert_eq!(reply.header("x-testapp-instance"), "files");
    // The plain listener runs alongside.
    let plain = get(app.http_addr.ok_or("no http address")?, "/healthz").await?;
    assert_eq!(plain.status, StatusCode::OK);
    app.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn start_errors_name_the_culprit() -> TestResult {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let err = start(TestAppConfig { http: Some(addr), https: None, ..TestAppConfig::default() })
        .await
        .err()
        .ok_or("bind to a taken port succeeded")?;
    assert!(err.to_string().contains(&addr.to_string()), "{err}");

    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("missing.crt");
    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, "not a key")?;
    let (certs, _) = self_signed("x")?;
    let cert_path = dir.path().join("ok.crt");
    let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", base64_lines(certs[0].as_ref()));
    std::fs::write(&cert_path, pem)?;

    for (cert, key, culprit) in [(&missing, &garbage, &missing), (&cert_path, &garbage, &garbage)] {
        let err = start(TestAppConfig {
            http: None,
            https: local(),
            tls_cert: Some(cert.clone()),
            tls_key: Some(key.clone()),
            ..TestAppConfig::default()
        })
        .await
        .err()
        .ok_or("bad TLS files accepted")?;
        assert!(err.to_string().contains(&culprit.display().to_string()), "{err}");
    }
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_stops_listening() -> TestResult {
    let app = start_http("eta").await?;
    let addr = app.http_addr.ok_or("no http address")?;

    // Keep an HTTP/1.1 keep-alive and an h2c connection open and idle.
    let (mut h1, h1_conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(TcpStream::connect(addr).await?)).await?;
    let h1_conn = tokio::spawn(h1_conn);
    let req = Request::get("/").header("host", "x").body(Empty::<Bytes>::new())?;
    assert_eq!(collect(h1.send_request(req).await?).await?.status, StatusCode::OK);
    let (mut h2, h2_conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(TcpStream::connect(addr).await?))
            .await?;
    let h2_conn = tokio::spawn(h2_conn);
    let req = Request::get(format!("http://{addr}/")).body(Empty::<Bytes>::new())?;
    assert_eq!(collect(h2.send_request(req).await?).await?.status, StatusCode::OK);

    // Graceful: idle connections are closed by the server, well before the 5 s cap.
    let started = std::time::Instant::now();
    app.shutdown().await;
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    let closed = std::time::Duration::from_secs(3);
    tokio::time::timeout(closed, h1_conn).await??.ok();
    tokio::time::timeout(closed, h2_conn).await??.ok();
    assert!(TcpStream::connect(addr).await.is_err());
    Ok(())
}

/// Standard base64 in 64-column lines, for writing PEM files.
fn base64_lines(data: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let lines: Vec<&str> = encoded.as_bytes().chunks(64).filter_map(|line| std::str::from_utf8(line).ok()).collect();
    lines.join("\n")
}
