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
use portico_pki::testing::{ensure_pebble, free_port, start_pebble};
use portico_pki::{KeyAlgorithm, tool};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
