//! ACME against a real pebble (Debian package `pebble`), started by the test with its own TLS root made by
//! Portico, and pebble-challtestsrv as the DNS that sends every name to 127.0.0.1. HTTP-01 is answered by an
//! `Http01Responder` behind a tiny HTTP server (what Portico's listeners will do), DNS-01 by a sink that
//! publishes TXT records into challtestsrv (what Portico's DNS will do).
//!
//! Without pebble the tests try `scripts/install-test-deps.sh`; if it still is not there they print why and
//! skip, unless `PORTICO_REQUIRE_PEBBLE=1`, which makes that a failure.

mod common;

use common::{openssl_ok, pem_blocks, write};
use portico_pki::acme::{self, AcmeAccount, AcmeError, Challenge, ChallengeKind, ChallengeSink, Http01Responder};
use portico_pki::{CertificateAuthority, CertificateRequest, KeyAlgorithm, issue, tool};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Child processes killed (by their own handle) when the test ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Pebble {
    _procs: Procs,
    dir: tempfile::TempDir,
    directory_url: String,
    management: u16,
    challtestsrv_management: u16,
    root_pem: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn have(binary: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {binary}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure pebble is installed; `None` (with the reason printed) if it cannot be.
fn ensure_pebble() -> Option<()> {
    if have("pebble") && have("pebble-challtestsrv") {
        return Some(());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-test-deps.sh");
    let out = Command::new("bash").arg(&script).output();
    if have("pebble") && have("pebble-challtestsrv") {
        return Some(());
    }
    let why = match out {
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("running bash {}: {e}", script.display()),
    };
    let message = format!("SKIPPED: pebble is not installed and could not be installed ({why})");
    if std::env::var("PORTICO_REQUIRE_PEBBLE").is_ok_and(|v| v == "1") {
        panic!("{message}");
    }
    // Straight to the process's stderr, past the test harness's capture, so the skip is seen.
    let _ = writeln!(std::io::stderr(), "{message}");
    None
}

fn wait_for_port(port: u16, what: &str, procs: &mut Procs) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        for child in &mut procs.0 {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{what}: a test server exited early with {status}");
            }
        }
        assert!(Instant::now() < deadline, "{what} did not listen on 127.0.0.1:{port} within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(dir.join(name)).map(Stdio::from).unwrap_or_else(|_| Stdio::null())
}

/// Starts challtestsrv and pebble; HTTP-01 validation goes to 127.0.0.1:`http_port`.
fn start_pebble(http_port: u16) -> Pebble {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // Pebble ships no usable certificate: make one with Portico's own tools.
    let (root_pem, root_key) = tool::init_root("CN=Pebble Test Root", 2, KeyAlgorithm::EcdsaP256).expect("root");
    let root = CertificateAuthority::from_pem(&root_pem, root_key.expose()).expect("root CA");
    let tls = issue(
        &root,
        &CertificateRequest {
            common_name: Some("pebble".into()),
            dns_names: vec!["localhost".into()],
            ip_addresses: vec!["127.0.0.1".parse().expect("ip")],
            key_algorithm: KeyAlgorithm::EcdsaP256,
            ..Default::default()
        },
    )
    .expect("pebble TLS certificate");
    let cert: PathBuf = write(d, "pebble.crt", &tls.chain_pem);
    let key: PathBuf = write(d, "pebble.key", tls.key_pem.expose());

    let (listen, management, dns, cts_management) = (free_port(), free_port(), free_port(), free_port());
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{listen}"),
        "managementListenAddress": format!("127.0.0.1:{management}"),
        "certificate": cert, "privateKey": key,
        "httpPort": http_port, "tlsPort": free_port(),
        "ocspResponderURL": "", "externalAccountBindingRequired": false
    }});
    let config_path = write(d, "pebble-config.json", &config.to_string());

    let mut procs = Procs(Vec::new());
    let cts = Command::new("pebble-challtestsrv")
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-http01", "", "-https01", "", "-tlsalpn01", ""])
        .args(["-dns01", &format!("127.0.0.1:{dns}"), "-management", &format!("127.0.0.1:{cts_management}")])
        .stdout(log_file(d, "challtestsrv.log"))
        .stderr(log_file(d, "challtestsrv.err"))
        .spawn()
        .expect("start pebble-challtestsrv");
    procs.0.push(cts);
    wait_for_port(cts_management, "pebble-challtestsrv", &mut procs);
    let pebble = Command::new("pebble")
        .arg("-config")
        .arg(&config_path)
        .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_VA_ALWAYS_VALID", "0")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(log_file(d, "pebble.log"))
        .stderr(log_file(d, "pebble.err"))
        .spawn()
        .expect("start pebble");
    procs.0.push(pebble);
    wait_for_port(listen, "pebble", &mut procs);
    wait_for_port(management, "pebble management", &mut procs);
    Pebble {
        _procs: procs,
        directory_url: format!("https://127.0.0.1:{listen}/dir"),
        management,
        challtestsrv_management: cts_management,
        root_pem,
        dir,
    }
}

impl Pebble {
    fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("--- pebble ---\n{}{}", read("pebble.log"), read("pebble.err"))
    }

    /// Pebble's issuing root (regenerated at each start), from its management interface.
    fn issuing_root(&self) -> String {
        let d = self.dir.path();
        write(d, "tls-root.pem", &self.root_pem);
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--cacert", "tls-root.pem"])
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .current_dir(d)
            .output()
            .expect("curl is installed");
        assert!(out.status.success(), "GET /roots/0: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// What Portico's HTTP listeners will do: answer /.well-known/acme-challenge/TOKEN from the responder.
async fn serve_http01(listener: tokio::net::TcpListener, responder: Http01Responder) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { return };
        let responder = responder.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => len += n,
                }
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            let response = match responder.respond(&path) {
                Some(body) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
            };
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_order_against_pebble_yields_a_certificate_for_the_names() {
    if ensure_pebble().is_none() {
        return;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http_port = listener.local_addr().expect("addr").port();
    let responder = Http01Responder::new();
    tokio::spawn(serve_http01(listener, responder.clone()));
    let pebble = start_pebble(http_port);

    let names = vec!["app01-lab.avi.aclab.uk".to_string(), "www.aclab.uk".to_string()];
    let issued =
        acme::order_http01(&pebble.directory_url, Some(&pebble.root_pem), Some("ops@aclab.uk"), &names, &responder)
            .await
            .unwrap_or_else(|e| panic!("ACME order failed: {e}\n{}", pebble.logs()));

    let mut got = issued.dns_names.clone();
    got.sort();
    assert_eq!(got, ["app01-lab.avi.aclab.uk", "www.aclab.uk"]);
    assert!(issued.ca_pem.is_none(), "an ACME server does not hand out its root");
    assert!(responder.is_empty(), "challenges are unpublished once the order is done");
    let blocks = pem_blocks(&issued.chain_pem);
    assert!(blocks.len() >= 2, "leaf + pebble's intermediate");
    // The chain verifies against pebble's issuing root.
    let d = pebble.dir.path();
    write(d, "acme-root.pem", &pebble.issuing_root());
    write(d, "acme-chain.pem", &issued.chain_pem);
    write(d, "acme-leaf.pem", &blocks[0]);
    let out = openssl_ok(d, &["verify", "-CAfile", "acme-root.pem", "-untrusted", "acme-chain.pem", "acme-leaf.pem"]);
    assert!(out.contains("acme-leaf.pem: OK"), "{out}");
    assert!(issued.private_key().expect("key").algorithm() == KeyAlgorithm::EcdsaP256);
}

/// A sink that answers HTTP-01 with the wrong key authorization.
struct WrongAnswers(Http01Responder);

impl ChallengeSink for WrongAnswers {
    fn kind(&self) -> ChallengeKind {
        ChallengeKind::Http01
    }
    fn publish(&self, challenge: &Challenge) -> Result<(), String> {
        self.0.publish(&Challenge { key_authorization: "wrong".into(), ..challenge.clone() })
    }
    fn unpublish(&self, challenge: &Challenge) {
        self.0.unpublish(challenge)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_challenge_is_reported_with_the_servers_reason_and_accounts_are_restored() {
    if ensure_pebble().is_none() {
        return;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http_port = listener.local_addr().expect("addr").port();
    let responder = Http01Responder::new();
    tokio::spawn(serve_http01(listener, responder.clone()));
    let pebble = start_pebble(http_port);

    let (account, creds) = AcmeAccount::connect(&pebble.directory_url, Some(&pebble.root_pem), None, None)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));
    assert!(!format!("{creds:?}").contains("BEGIN") && format!("{creds:?}").contains("redacted"));
    let (restored, _) = AcmeAccount::connect(&pebble.directory_url, Some(&pebble.root_pem), None, Some(&creds))
        .await
        .expect("restore the account from its credentials");
    assert_eq!(format!("{restored:?}"), format!("{account:?}"), "same account id");

    let sink = WrongAnswers(responder.clone());
    let names = vec!["bad.aclab.uk".to_string()];
    let err = restored.order(&names, KeyAlgorithm::EcdsaP256, &sink, Duration::from_secs(60)).await.unwrap_err();
    let msg = err.to_string();
    eprintln!("refused as: {msg}");
    // Pebble may refuse the answer at once or mark the order invalid after validating: both say why.
    assert!(matches!(err, AcmeError::ChallengeFailed { .. } | AcmeError::OrderFailed { .. }), "{msg}");
    assert!(msg.contains("bad.aclab.uk"), "{msg}");
    assert!(msg.to_lowercase().contains("key authorization"), "the server's reason is kept: {msg}");
    assert!(responder.is_empty(), "unpublished after a failure too");

    // Untrusted directory certificate: a clear error, not a hang.
    let other_root = tool::init_root("CN=Someone Else", 1, KeyAlgorithm::EcdsaP256).expect("root").0;
    let err = AcmeAccount::connect(&pebble.directory_url, Some(&other_root), None, None).await.unwrap_err();
    assert!(err.to_string().contains(&pebble.directory_url), "{err}");
}

/// What Portico's DNS will do for DNS-01: publish the TXT record (here into challtestsrv's mock DNS).
struct ChallTestSrvDns {
    management: u16,
}

impl ChallTestSrvDns {
    fn post(&self, path: &str, body: serde_json::Value) -> Result<(), String> {
        let body = body.to_string();
        let mut stream = TcpStream::connect(("127.0.0.1", self.management)).map_err(|e| e.to_string())?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
        if response.starts_with("HTTP/1.1 200") { Ok(()) } else { Err(response) }
    }
}

impl ChallengeSink for ChallTestSrvDns {
    fn kind(&self) -> ChallengeKind {
        ChallengeKind::Dns01
    }
    fn publish(&self, c: &Challenge) -> Result<(), String> {
        self.post("/set-txt", serde_json::json!({"host": c.dns_record_name(), "value": c.dns_value}))
    }
    fn unpublish(&self, c: &Challenge) {
        let _ = self.post("/clear-txt", serde_json::json!({"host": c.dns_record_name()}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_order_against_pebble_covers_a_wildcard() {
    if ensure_pebble().is_none() {
        return;
    }
    let pebble = start_pebble(free_port());
    let (account, _) = AcmeAccount::connect(&pebble.directory_url, Some(&pebble.root_pem), None, None)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));
    let sink = ChallTestSrvDns { management: pebble.challtestsrv_management };
    let names = vec!["*.region01.aclab.uk".to_string(), "region01.aclab.uk".to_string()];
    let issued = account
        .order(&names, KeyAlgorithm::EcdsaP384, &sink, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("DNS-01 order failed: {e}\n{}", pebble.logs()));
    let mut got = issued.dns_names.clone();
    got.sort();
    assert_eq!(got, ["*.region01.aclab.uk", "region01.aclab.uk"]);
    assert_eq!(issued.private_key().expect("key").algorithm(), KeyAlgorithm::EcdsaP384);
}
