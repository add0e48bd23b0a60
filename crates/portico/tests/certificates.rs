//! Certificates end to end: a subordinate CA made with `portico ca` (root -> SubCA-template CSR -> signed
//! subordinate -> issuer Secret), the article's Certificate issued by Portico from the team's ClusterIssuer,
//! served and verified with only the root; restart re-uses the stored certificate; a short-lived certificate
//! is renewed under load without a failed request; issuer failures are reported.

mod common;

use bytes::Bytes;
use common::{Backends, Portico, repo, tls_config};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn portico(args: &[&str], dir: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_portico")).args(args).current_dir(dir).output().expect("run portico");
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "portico {args:?} failed:\n{text}");
    text
}

/// Builds the team's PKI with `portico ca`: offline root, subordinate with the SubCA template, issuer Secret.
fn make_pki(dir: &Path) {
    std::fs::create_dir_all(dir.join("config")).expect("mkdir");
    portico(&["ca", "init-root", "--subject", "CN=Example Corp Root CA,O=Example Corp", "--out", "root"], dir);
    portico(
        &[
            "ca",
            "csr",
            "--subject",
            "CN=TanzuSub01,DC=aclab,DC=uk",
            "--key",
            "ecdsa256",
            "--subca-template",
            "--out",
            "sub",
        ],
        dir,
    );
    portico(
        &[
            "ca",
            "sign",
            "--csr",
            "sub.csr",
            "--ca-cert",
            "root.crt",
            "--ca-key",
            "root.key",
            "--path-len",
            "0",
            "--out",
            "sub.crt",
        ],
        dir,
    );
    portico(
        &[
            "ca",
            "secret",
            "--name",
            "tanzu-sub01-tls-secret",
            "--cert",
            "sub.crt",
            "--key",
            "sub.key",
            "--root",
            "root.crt",
            "--out",
            "config/issuer-secret.yaml",
        ],
        dir,
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["root.key", "sub.key", "config/issuer-secret.yaml"] {
            let mode = std::fs::metadata(dir.join(key)).expect("key file").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key} must be readable by its owner only");
        }
    }
}

/// The article's Gateway flavour with the team's ClusterIssuer and Certificate, and no static TLS Secret.
fn article_config(dir: &Path, backends: &Backends, vip: &str, certificate_extra: &str) {
    let config = dir.join("config");
    let staging = dir.join("example");
    let extra = certificate_extra.to_string();
    common::copy_example(&staging, &["httproute"], backends, vip, &|text| {
        if extra.is_empty() {
            text
        } else {
            text.replace(
                "  secretName: app01-aclab-nginx-tls-secret\n",
                &format!("  secretName: app01-aclab-nginx-tls-secret\n{extra}"),
            )
        }
    });
    std::fs::create_dir_all(&config).expect("mkdir");
    for entry in std::fs::read_dir(staging.join("httproute")).expect("staged example").flatten() {
        std::fs::rename(entry.path(), config.join(entry.file_name())).expect("move");
    }
    std::fs::copy(repo().join("examples/article/common/namespace.yaml"), config.join("namespace.yaml")).expect("copy");
    std::fs::copy(
        repo().join("../shared/fixtures/article/platform/clusterissuer.yaml"),
        config.join("clusterissuer.yaml"),
    )
    .expect("the team's ClusterIssuer");
}

/// Fetches /pink over HTTPS trusting only `root`, returning the served leaf (DER) and chain.
async fn fetch(vip: SocketAddr, root: &Path) -> (u16, Vec<Vec<u8>>) {
    let tcp = tokio::net::TcpStream::connect(vip).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("app01-lab.avi.aclab.uk").expect("name");
    let stream = tokio_rustls::TlsConnector::from(tls_config(root, false))
        .connect(name, tcp)
        .await
        .expect("TLS verified against the root only");
    let chain: Vec<Vec<u8>> =
        stream.get_ref().1.peer_certificates().unwrap_or_default().iter().map(|c| c.as_ref().to_vec()).collect();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP");
    tokio::spawn(connection);
    let request = http::Request::get("/pink")
        .header("host", "app01-lab.avi.aclab.uk")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    (status, chain)
}

fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = encoded.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or("")).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_article_certificate_is_issued_from_a_portico_ca_and_survives_restart() {
    let backends = Backends::start(&["root", "pink", "blue", "green"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    make_pki(dir.path());
    article_config(dir.path(), &backends, "127.0.0.101", "");
    let state = tempfile::tempdir().expect("state");
    let config = dir.path().join("config");
    let vip: SocketAddr = "127.0.0.101:443".parse().expect("vip");
    let root = dir.path().join("root.crt");

    let first = Portico::start_with_state(&[&config], 20001, &["--default-namespace", "dev"], state.path());
    let (status, chain) = fetch(vip, &root).await;
    assert_eq!(status, 200);
    assert_eq!(chain.len(), 2, "leaf and subordinate are served");
    // An independent judge: openssl verifies what the listener serves against the root alone.
    std::fs::write(dir.path().join("leaf.pem"), pem(&chain[0])).expect("write");
    std::fs::write(dir.path().join("chain.pem"), pem(&chain[1])).expect("write");
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile", "root.crt", "-untrusted", "chain.pem", "leaf.pem"])
        .current_dir(dir.path())
        .output()
        .expect("openssl");
    assert!(verify.status.success(), "openssl verify: {}", String::from_utf8_lossy(&verify.stdout));
    let status_doc = first.admin_get("/api/status");
    assert!(status_doc.contains("KeyPairVerified"), "{status_doc}");
    assert!(!status_doc.contains("PRIVATE KEY"), "no key material on the admin API");
    let key_file = state.path().join("certificates/dev/app01-aclab-nginx-cert.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).expect("stored certificate").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    drop(first);

    // Restart on the same state: the same certificate is served, not a new one.
    let second = Portico::start_with_state(&[&config], 20002, &["--default-namespace", "dev"], state.path());
    let (status, again) = fetch(vip, &root).await;
    assert_eq!(status, 200);
    assert_eq!(again[0], chain[0], "restart re-uses the stored certificate");
    drop(second);

    // A corrupt stored file is reported and replaced, never used.
    std::fs::write(&key_file, "{\"version\": 1, \"tls_crt\": \"garbage\"").expect("corrupt the store");
    let third = Portico::start_with_state(&[&config], 20005, &["--default-namespace", "dev"], state.path());
    let (status, replaced) = fetch(vip, &root).await;
    assert_eq!(status, 200);
    assert_ne!(replaced[0], chain[0], "a new certificate replaces the corrupt file");
    let report = third.admin_get("/api/status");
    assert!(report.contains("stored certificate not used"), "{report}");
    drop(third);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_certificate_is_renewed_under_load() {
    let backends = Backends::start(&["root", "pink", "blue", "green"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    make_pki(dir.path());
    // 40 s certificates renewed 30 s before expiry: a renewal every 10 s.
    article_config(dir.path(), &backends, "127.0.0.102", "  duration: 40s\n  renewBefore: 30s\n");
    let config = dir.path().join("config");
    let _portico = Portico::start(&[&config], 20003, &["--default-namespace", "dev"]);
    let vip: SocketAddr = "127.0.0.102:443".parse().expect("vip");
    let root = dir.path().join("root.crt");
    let (_, first) = fetch(vip, &root).await;
    let started = Instant::now();
    let (mut ok, mut failed) = (0, 0);
    let mut renewed = None;
    // Bounded: at most 25 s of requests, one connection each (each handshake sees the current certificate).
    while started.elapsed() < Duration::from_secs(25) {
        let (status, chain) = fetch(vip, &root).await;
        if status == 200 {
            ok += 1
        } else {
            failed += 1
        }
        if chain[0] != first[0] && renewed.is_none() {
            renewed = Some(started.elapsed());
        }
        if renewed.is_some_and(|at| started.elapsed() > at + Duration::from_secs(1)) {
            break;
        }
    }
    println!("renewal under load: {ok} requests succeeded, {failed} failed, renewed after {renewed:?}");
    assert!(renewed.is_some(), "the certificate was not renewed within 25 s");
    assert_eq!(failed, 0);
}

#[test]
fn issuer_failures_are_reported_by_validate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = repo().join("examples/article/tls");
    let read = |name: &str| std::fs::read_to_string(tls.join(name)).expect("test material");
    let indent = |text: String| text.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let secret = |name: &str, cert: String, key: String| {
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: cert-manager}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(cert),
            indent(key)
        )
    };
    let issuer = |name: &str, secret: &str| {
        format!(
            "---\napiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {{name: {name}}}\nspec: {{ca: {{secretName: {secret}}}}}\n"
        )
    };
    let config = String::new()
        + &issuer("missing-secret", "nope")
        + &issuer("not-a-ca", "leaf")
        + &secret("leaf", read("app01.crt"), read("app01.key"))
        + &issuer("wrong-key", "mismatch")
        + &secret("mismatch", read("sub-ca.crt"), read("other-ca.key"))
        + "---\napiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: web, namespace: default}\nspec:\n  secretName: web-tls\n  dnsNames: [web.example]\n  issuerRef: {name: not-a-ca, kind: ClusterIssuer}\n";
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["validate", "--config", "config.yaml"])
        .current_dir(dir.path())
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("ClusterIssuer/missing-secret: Ready=False(ErrGetKeyPair)"), "{text}");
    assert!(text.contains("ClusterIssuer/not-a-ca: Ready=False(ErrInvalidKeyPair)"), "{text}");
    assert!(text.contains("ClusterIssuer/wrong-key: Ready=False(ErrInvalidKeyPair)"), "{text}");
    assert!(text.contains("Certificate/default/web: Ready=False(IssuerNotReady)"), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "no key material in messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_certificate_is_issued_and_served_for_hosts_without_a_secret() {
    let backends = Backends::start(&["web"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    make_pki(dir.path());
    let config = dir.path().join("config");
    // The team's default ingress certificate (avi-system/router-certs-default), issued by their ClusterIssuer.
    for (from, to) in [("default-ingress-cert.yaml", "default-cert.yaml"), ("clusterissuer.yaml", "clusterissuer.yaml")]
    {
        std::fs::copy(repo().join("../shared/fixtures/article/platform").join(from), config.join(to)).expect("fixture");
    }
    let ingress = format!(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {{name: avi-lb}}\nspec: {{controller: portico.dev/ingress-controller}}\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: web, namespace: dev}}\nspec:\n  ingressClassName: avi-lb\n  tls: [{{hosts: [web.aclab.uk]}}]\n  rules:\n  - host: web.aclab.uk\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: dev}}\nspec: {{ports: [{{port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web, namespace: dev, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: \"\", port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n",
        backends.http_port(0)
    );
    std::fs::write(config.join("ingress.yaml"), ingress).expect("write");
    let _portico = Portico::start(
        &[&config],
        20004,
        &["--ingress-address", "127.0.0.105", "--default-certificate", "avi-system/router-certs-default"],
    );
    let root = dir.path().join("root.crt");
    let tcp = tokio::net::TcpStream::connect("127.0.0.105:443").await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("web.aclab.uk").expect("name");
    let stream = tokio_rustls::TlsConnector::from(tls_config(&root, false))
        .connect(name, tcp)
        .await
        .expect("the default certificate (*.aclab.uk) verifies against the root");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP");
    tokio::spawn(connection);
    let request =
        http::Request::get("/blue").header("host", "web.aclab.uk").body(Empty::<Bytes>::new()).expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);
}
