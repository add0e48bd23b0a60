//! TLS routing by server name on one address:port: passthrough (the client sees the backend's own
//! certificate), termination for HTTP, and TLSRoute termination to a TCP backend; the Ingress passthrough
//! annotation the operator uses. Real sockets, real TLS, and `openssl s_client` as an independent client.

mod common;

use bytes::Bytes;
use common::{Backends, Portico, repo, tls_config};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::Path;

const PASSTHROUGH_HOST: &str = "app01-aclab-nginx-pink-svc.dev.svc";
const TERMINATED_HOST: &str = "app01-lab.avi.aclab.uk";

fn der(pem_file: &Path) -> Vec<u8> {
    let pem = std::fs::read(pem_file).expect("read certificate");
    let first = rustls_pemfile::certs(&mut pem.as_slice()).next().expect("a certificate").expect("PEM");
    first.as_ref().to_vec()
}

/// Connects with `server_name` as SNI, checks the leaf the server presents, then sends one HTTP/1.1 GET.
async fn fetch(vip: SocketAddr, server_name: &str, expect_leaf: &Path) -> http::Response<Bytes> {
    let ca = repo().join("examples/article/tls/root-ca.crt");
    let tcp = tokio::net::TcpStream::connect(vip).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).expect("name");
    let stream =
        tokio_rustls::TlsConnector::from(tls_config(&ca, false)).connect(name, tcp).await.expect("TLS handshake");
    let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first().cloned()).expect("server certificate");
    assert_eq!(leaf.as_ref(), der(expect_leaf).as_slice(), "{server_name}: unexpected certificate");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP");
    tokio::spawn(connection);
    let request = http::Request::get("/pink").header("host", server_name).body(Empty::<Bytes>::new()).expect("request");
    let response = sender.send_request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    http::Response::from_parts(parts, body.collect().await.expect("body").to_bytes())
}

fn openssl_subject(vip: &str, server_name: &str) -> String {
    let ca = repo().join("examples/article/tls/root-ca.crt");
    let output = std::process::Command::new("openssl")
        .args(["s_client", "-connect", vip, "-servername", server_name, "-CAfile"])
        .arg(&ca)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client (scripts/test.sh installs openssl)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn header<'a>(response: &'a http::Response<Bytes>, name: &str) -> &'a str {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn service(name: &str, port: u16) -> String {
    common::service(name, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_and_terminated_hosts_share_one_port() {
    let backends = Backends::start(&["pink", "web"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(repo().join("examples/article/common/tls-secret.yaml"), dir.path().join("secret.yaml"))
        .expect("copy");
    let config = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: portico}}\nspec: {{controllerName: portico.dev/gateway-controller}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge}}\nspec:\n  gatewayClassName: portico\n  addresses: [{{type: IPAddress, value: 127.0.0.71}}]\n  listeners:\n  - name: https\n    port: 443\n    protocol: HTTPS\n    hostname: {TERMINATED_HOST}\n    tls: {{certificateRefs: [{{name: app01-aclab-nginx-tls-secret}}]}}\n  - name: passthrough\n    port: 443\n    protocol: TLS\n    hostname: {PASSTHROUGH_HOST}\n    tls: {{mode: Passthrough}}\n  - name: tcp-over-tls\n    port: 8443\n    protocol: TLS\n    tls: {{mode: Terminate, certificateRefs: [{{name: app01-aclab-nginx-tls-secret}}]}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web}}\nspec:\n  parentRefs: [{{name: edge, sectionName: https}}]\n  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]\n---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {{name: pink-passthrough}}\nspec:\n  parentRefs: [{{name: edge, sectionName: passthrough}}]\n  hostnames: [{PASSTHROUGH_HOST}]\n  rules: [{{backendRefs: [{{name: pink-tls, port: 80}}]}}]\n---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {{name: tcp}}\nspec:\n  parentRefs: [{{name: edge, sectionName: tcp-over-tls}}]\n  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]\n{}{}",
        service("web", backends.http_port(1)),
        service("pink-tls", backends.https_port(0)),
    );
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    let portico = Portico::start(&[dir.path()], 19971, &["--default-namespace", "dev", "--request-head-timeout", "1"]);
    let tls = repo().join("examples/article/tls");
    let vip: SocketAddr = "127.0.0.71:443".parse().expect("vip");

    // Passthrough: the client talks TLS to the backend itself, and sees its certificate.
    let passed = fetch(vip, PASSTHROUGH_HOST, &tls.join("backend.crt")).await;
    assert_eq!(passed.status(), 200);
    assert_eq!(header(&passed, "x-testapp-instance"), "pink");
    assert_eq!(header(&passed, "x-testapp-proto"), "https", "the backend terminated TLS");

    // A passthrough relay carries no HTTP of Portico's: the request head timeout (1 s here) does not close it
    // while it is idle. Two requests 2.5 s apart on one connection.
    let ca = repo().join("examples/article/tls/root-ca.crt");
    let tcp = tokio::net::TcpStream::connect(vip).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(PASSTHROUGH_HOST.to_string()).expect("name");
    let stream = tokio_rustls::TlsConnector::from(tls_config(&ca, false)).connect(name, tcp).await.expect("TLS");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP");
    tokio::spawn(connection);
    for round in 0..2 {
        if round == 1 {
            tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        }
        let request =
            http::Request::get("/pink").header("host", PASSTHROUGH_HOST).body(Empty::<Bytes>::new()).expect("request");
        let response = sender.send_request(request).await.expect("the idle relay is still open");
        assert_eq!(response.status(), 200);
        let _ = response.into_body().collect().await;
    }

    // Same port, other name: Portico terminates with the Gateway's certificate and proxies HTTP.
    let terminated = fetch(vip, TERMINATED_HOST, &tls.join("app01.crt")).await;
    assert_eq!(terminated.status(), 200);
    assert_eq!(header(&terminated, "x-testapp-instance"), "web");
    assert_eq!(header(&terminated, "x-testapp-proto"), "http");

    // TLSRoute in Terminate mode: Portico's certificate, then the plaintext stream to a TCP backend.
    let tcp = fetch("127.0.0.71:8443".parse().expect("vip"), TERMINATED_HOST, &tls.join("app01.crt")).await;
    assert_eq!(header(&tcp, "x-testapp-instance"), "web");

    // An independent client agrees.
    let shown = openssl_subject("127.0.0.71:443", PASSTHROUGH_HOST);
    assert!(shown.contains("testapp.dev.svc"), "openssl saw:\n{shown}");
    assert!(shown.contains("Verify return code: 0 (ok)"), "{shown}");
    let shown = openssl_subject("127.0.0.71:443", TERMINATED_HOST);
    assert!(shown.contains("CN=app01-lab.avi.aclab.uk") || shown.contains("CN = app01-lab.avi.aclab.uk"), "{shown}");

    let status: serde_json::Value = serde_json::from_str(&portico.admin_get("/api/status")).expect("status");
    let route = status["statuses"]["TLSRoute/dev/pink-passthrough"].to_string();
    assert!(route.contains("\"Accepted\"") && !route.contains("\"False\""), "{route}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_passthrough_annotation_works_on_ingress() {
    let backends = Backends::start(&["pink"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {{name: avi-lb}}\nspec: {{controller: portico.dev/ingress-controller}}\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: pink\n  annotations: {{passthrough.ako.vmware.com/enabled: \"true\"}}\nspec:\n  ingressClassName: avi-lb\n  rules:\n  - host: {PASSTHROUGH_HOST}\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: pink-tls, port: {{number: 80}}}}}}}}\n{}",
        service("pink-tls", backends.https_port(0)),
    );
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    let _portico = Portico::start(&[dir.path()], 19972, &["--ingress-address", "127.0.0.72"]);
    let tls = repo().join("examples/article/tls");
    let passed = fetch("127.0.0.72:443".parse().expect("vip"), PASSTHROUGH_HOST, &tls.join("backend.crt")).await;
    assert_eq!(header(&passed, "x-testapp-proto"), "https");
    let redirect = common::get("127.0.0.72:80".parse().expect("vip"), PASSTHROUGH_HOST, "/pink?x=1").await;
    assert_eq!(redirect.status, 301);
    assert_eq!(redirect.header("location"), format!("https://{PASSTHROUGH_HOST}/pink?x=1"));
}
