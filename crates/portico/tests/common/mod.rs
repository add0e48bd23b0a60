//! Shared helpers of the end-to-end tests: start the real `portico` binary and test applications, and a
//! small HTTP client that connects to a VIP with any SNI and Host (what `curl --resolve` does).
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A `portico run` process, killed on drop.
pub struct Portico {
    pub child: Child,
    pub admin: SocketAddr,
    pub log: PathBuf,
    _state: Option<tempfile::TempDir>,
}

impl Portico {
    /// Starts `portico run` with the given extra arguments and waits until /readyz answers 200.
    pub fn start(config_dirs: &[&Path], admin_port: u16, extra: &[&str]) -> Portico {
        let state = tempfile::tempdir().expect("state dir");
        let mut portico = Portico::start_with_state(config_dirs, admin_port, extra, state.path());
        portico._state = Some(state);
        portico
    }

    /// Like [`Portico::start`], with a state directory the caller keeps (to restart on the same state).
    pub fn start_with_state(config_dirs: &[&Path], admin_port: u16, extra: &[&str], state: &Path) -> Portico {
        let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("admin address");
        let log = state.join(format!("portico-{}.log", std::process::id()));
        let log = if log.exists() { state.join(format!("portico-{}-again.log", std::process::id())) } else { log };
        let mut command = Command::new(env!("CARGO_BIN_EXE_portico"));
        command.arg("run").arg("--admin").arg(admin.to_string()).arg("--state-dir").arg(state);
        for dir in config_dirs {
            command.arg("--config").arg(dir);
        }
        command.args(extra);
        let log_file = std::fs::File::create(&log).expect("log file");
        command.stdout(Stdio::null()).stderr(log_file).env("RUST_LOG", "info");
        let child = command.spawn().expect("start portico");
        let portico = Portico { child, admin, log, _state: None };
        portico.wait_ready();
        portico
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut stream) = std::net::TcpStream::connect(self.admin) {
                use std::io::{Read, Write};
                let _ = stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("portico did not become ready; log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    /// GET on the admin endpoint; the body as text.
    pub fn admin_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.admin).expect("admin connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).expect("admin write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("admin read");
        answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
    }

    /// The configuration generation being served.
    pub fn generation(&self) -> u64 {
        let status: serde_json::Value = serde_json::from_str(&self.admin_get("/api/status")).unwrap_or_default();
        status["generation"].as_u64().unwrap_or(0)
    }

    /// Waits until the generation is past `after`.
    pub fn wait_generation(&self, after: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.generation();
            if now > after {
                return now;
            }
            assert!(Instant::now() < deadline, "no new configuration generation after {after}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Portico {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Four test applications (root, pink, blue, green) on ephemeral ports, HTTP and HTTPS with the example's
/// backend certificate.
pub struct Backends {
    pub apps: Vec<portico_testapp::RunningTestApp>,
}

impl Backends {
    pub async fn start(names: &[&str]) -> Backends {
        let tls = repo().join("examples/article/tls");
        let mut apps = Vec::new();
        for name in names {
            let config = portico_testapp::TestAppConfig {
                name: name.to_string(),
                http: Some("127.0.0.1:0".parse().expect("address")),
                https: Some("127.0.0.1:0".parse().expect("address")),
                tls_cert: Some(tls.join("backend-chain.crt")),
                tls_key: Some(tls.join("backend.key")),
            };
            apps.push(portico_testapp::start(config).await.expect("start test application"));
        }
        Backends { apps }
    }

    pub fn http_port(&self, i: usize) -> u16 {
        self.apps[i].http_addr.expect("http").port()
    }

    pub fn https_port(&self, i: usize) -> u16 {
        self.apps[i].https_addr.expect("https").port()
    }
}

/// What a request returned.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
    pub version: http::Version,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// TLS client settings trusting only `ca` (a PEM file).
pub fn tls_config(ca: &Path, alpn_h2: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("read CA");
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = if alpn_h2 { vec![b"h2".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    Arc::new(config)
}

/// One request on a new connection to `vip`, with `host` as SNI (when `tls` is set) and as Host.
pub async fn request(
    vip: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Answer, String> {
    let stream = tokio::net::TcpStream::connect(vip).await.map_err(|e| format!("connect {vip}: {e}"))?;
    let mut builder = http::Request::builder().method(method).header("host", host);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    match tls {
        None => {
            let request = builder.uri(path).body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
            send_http1(TokioIo::new(stream), request).await
        }
        Some(config) => {
            let h2 = config.alpn_protocols.first().is_some_and(|p| p == b"h2");
            let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            if h2 {
                let request = builder
                    .uri(format!("https://{host}{path}"))
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| e.to_string())?;
                let (mut sender, connection) =
                    hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
                collect(response).await
            } else {
                let request = builder.uri(path).body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
                send_http1(TokioIo::new(stream), request).await
            }
        }
    }
}

async fn send_http1<T>(io: TokioIo<T>, request: http::Request<Empty<Bytes>>) -> Result<Answer, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    collect(response).await
}

async fn collect(response: http::Response<hyper::body::Incoming>) -> Result<Answer, String> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        version: parts.version,
    })
}

/// Plain-HTTP GET.
pub async fn get(vip: SocketAddr, host: &str, path: &str) -> Answer {
    request(vip, host, "GET", path, &[], None).await.expect("request")
}

/// Writes `text` to `dir/name` atomically (write + rename), as a deploy tool would.
pub fn write_file(dir: &Path, name: &str, text: &str) {
    let temp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temp, text).expect("write temp");
    std::fs::rename(&temp, dir.join(name)).expect("rename");
}

/// The header of a Gateway API configuration: a GatewayClass and a Gateway with one HTTP listener on `vip`.
pub fn http_gateway(vip: &str, port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: portico\nspec:\n  controllerName: portico.dev/gateway-controller\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  gatewayClassName: portico\n  addresses: [{{type: IPAddress, value: \"{vip}\"}}]\n  listeners:\n  - name: http\n    port: {port}\n    protocol: HTTP\n    allowedRoutes: {{namespaces: {{from: All}}}}\n"
    )
}

/// A Service with one port 80 and an EndpointSlice pointing at `127.0.0.1:port`.
/// A port on 127.0.0.1 where connections are refused, held for as long as the socket lives: bound but not
/// listening. A port bound and released instead can be taken meanwhile by another test's backend (which then
/// answered 404 where the test expected a refused connection).
pub fn refused_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let port = socket.local_addr().expect("address").port();
    (socket, port)
}

pub fn service(name: &str, port: u16) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports: [{{port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: \"\", port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n"
    )
}

/// Copies `folders` of `examples/article` into `dest`, pointing the EndpointSlices at the test applications
/// (HTTP ports 18080.. and HTTPS ports 18443.. of the example become the backends' ports), the Gateway at
/// `vip`, and applying `edit` to each file's text.
pub fn copy_example(dest: &Path, folders: &[&str], backends: &Backends, vip: &str, edit: &dyn Fn(String) -> String) {
    let source = repo().join("examples/article");
    for folder in folders {
        std::fs::create_dir_all(dest.join(folder)).expect("mkdir");
        for entry in std::fs::read_dir(source.join(folder)).expect("example folder").flatten() {
            let mut text = std::fs::read_to_string(entry.path()).expect("read example");
            for i in 0..backends.apps.len().min(4) {
                text = text.replace(&format!("port: {}", 18080 + i), &format!("port: {}", backends.http_port(i)));
                text = text.replace(&format!("port: {}", 18443 + i), &format!("port: {}", backends.https_port(i)));
            }
            text = edit(text.replace("127.0.0.10", vip));
            std::fs::write(dest.join(folder).join(entry.file_name()), text).expect("write");
        }
    }
}

/// A test application whose HTTPS certificate comes from a CA clients do not trust (`other-ca`).
pub async fn rogue_backend() -> portico_testapp::RunningTestApp {
    let tls = repo().join("examples/article/tls");
    portico_testapp::start(portico_testapp::TestAppConfig {
        name: "rogue".into(),
        http: None,
        https: Some("127.0.0.1:0".parse().expect("address")),
        tls_cert: Some(tls.join("other-backend.crt")),
        tls_key: Some(tls.join("other-backend.key")),
    })
    .await
    .expect("rogue backend")
}
