//! The article's deployment, both flavours, end to end: real `portico` process, real sockets, real TLS
//! verified against the example's root CA only, test applications as the backends.

mod common;

use common::{Backends, Portico, repo, request, tls_config};
use std::net::SocketAddr;

const COLOURS: [(&str, &str); 4] = [("/", "white"), ("/pink", "pink"), ("/blue", "blue"), ("/green", "green")];
const HOSTS: [&str; 2] = ["app01-lab.avi.aclab.uk", "application01.aclab.uk"];

/// Copies `common` and one flavour of the example into a temp dir, pointing the EndpointSlices at the test
/// applications and the Gateway at `vip`.
fn example(flavour: &str, backends: &Backends, vip: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    common::copy_example(dir.path(), &["common", flavour], backends, vip, &|text| text);
    dir
}

async fn check_pages(vip: &str, h2: bool, expect_proto: &str) {
    let ca = repo().join("examples/article/tls/root-ca.crt");
    let address: SocketAddr = format!("{vip}:443").parse().expect("vip");
    for host in HOSTS {
        for (path, colour) in COLOURS {
            let answer =
                request(address, host, "GET", path, &[], Some(tls_config(&ca, h2))).await.expect("HTTPS request");
            assert_eq!(answer.status, 200, "{host}{path}: {answer:?}");
            assert!(answer.body.contains(&format!("<title>{colour}</title>")), "{host}{path} is not the {colour} page");
            let instance = if colour == "white" { "root" } else { colour };
            assert_eq!(answer.header("x-testapp-instance"), instance, "{host}{path} served by the wrong backend");
            assert_eq!(answer.header("x-testapp-proto"), expect_proto, "{host}{path}: backend protocol");
            assert_eq!(answer.header("x-testapp-host"), host, "Host is forwarded unchanged");
            if h2 {
                assert_eq!(answer.version, http::Version::HTTP_2);
            }
        }
    }
}

/// An HTTP/1.0 request without Host over TLS is for the name the client asked for in the handshake (SNI): it
/// is routed by that name and reaches the backend with it as Host (RFC 9112 section 3.3).
async fn http10_without_host_is_routed_by_sni(vip: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = repo().join("examples/article/tls/root-ca.crt");
    for host in HOSTS {
        let stream = tokio::net::TcpStream::connect(format!("{vip}:443")).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).expect("server name");
        let mut stream =
            tokio_rustls::TlsConnector::from(tls_config(&ca, false)).connect(name, stream).await.expect("TLS");
        stream.write_all(b"GET /pink HTTP/1.0\r\n\r\n").await.expect("write");
        let mut answer = Vec::new();
        // The server ends the connection after an HTTP/1.0 answer; a missing close_notify is not the point here.
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer).to_lowercase();
        assert!(answer.starts_with("http/1.0 200 ok\r\n"), "{host}: {answer}");
        assert!(answer.contains(&format!("\r\nx-testapp-host: {host}\r\n")), "{host}: {answer}");
        assert!(answer.contains("<title>pink</title>"), "{host}: {answer}");
    }
}

fn conditions(status: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    collect_conditions(status, &mut found);
    found
}

fn collect_conditions(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if let (Some(t), Some(s), Some(r)) = (map.get("type"), map.get("status"), map.get("reason")) {
                found.push(format!(
                    "{}={}/{}",
                    t.as_str().unwrap_or(""),
                    s.as_str().unwrap_or(""),
                    r.as_str().unwrap_or("")
                ));
            }
            map.values().for_each(|v| collect_conditions(v, found));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_conditions(v, found)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_flavour_serves_every_page_over_https() {
    let backends = Backends::start(&["root", "pink", "blue", "green"]).await;
    let vip = "127.0.0.31";
    let dir = example("httproute", &backends, vip);
    let portico = Portico::start(
        &[&dir.path().join("common"), &dir.path().join("httproute")],
        19931,
        &["--default-namespace", "dev"],
    );

    // Portico applies the team's HTTPRule (re-encrypt) to the HTTPRoute: the backends see TLS.
    check_pages(vip, false, "https").await;
    check_pages(vip, true, "https").await;

    // Port 80 listens as configured; the chart attaches the route to the HTTPS listener only, so it is a 404.
    let plain = common::get(format!("{vip}:80").parse().expect("vip"), HOSTS[0], "/pink").await;
    assert_eq!(plain.status, 404);

    let status: serde_json::Value = serde_json::from_str(&portico.admin_get("/api/status")).expect("status JSON");
    let gateway = &status["statuses"]["Gateway/dev/app01-aclab-nginx-gateway"];
    assert_eq!(gateway["addresses"][0]["value"], vip);
    let found = conditions(gateway);
    assert!(
        found.contains(&"Accepted=True/Accepted".to_string())
            && found.contains(&"Programmed=True/Programmed".to_string()),
        "{found:?}"
    );
    let https = gateway["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .find(|l| l["name"] == "app01-aclab-nginx-https-listener")
        .expect("https listener");
    assert_eq!(https["attachedRoutes"], 1);
    // The IR on the admin API carries certificates, never their keys.
    let config = portico.admin_get("/api/config");
    assert!(config.contains("\"keyPem\": \"<redacted>\""), "{config}");
    assert!(!config.contains("PRIVATE KEY"), "a private key leaked into /api/config");
    let route = conditions(&status["statuses"]["HTTPRoute/dev/app01-aclab-nginx-httproute"]);
    assert_eq!(route, vec!["Accepted=True/Accepted", "ResolvedRefs=True/ResolvedRefs"]);
    drop(portico);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_flavour_reencrypts_to_the_backends() {
    let backends = Backends::start(&["root", "pink", "blue", "green"]).await;
    let vip = "127.0.0.32";
    let dir = example("ingress", &backends, vip);
    let portico = Portico::start(
        &[&dir.path().join("common"), &dir.path().join("ingress")],
        19932,
        &["--default-namespace", "dev", "--ingress-address", vip],
    );
    // The backends only speak TLS here: a page served proves re-encryption verified against the example CA.
    check_pages(vip, false, "https").await;
    check_pages(vip, true, "https").await;
    http10_without_host_is_routed_by_sni(vip).await;

    // The Ingress serves its rules on port 80 too; the HostRule alias works there as well.
    for host in HOSTS {
        let plain = common::get(format!("{vip}:80").parse().expect("vip"), host, "/blue").await;
        assert_eq!(plain.status, 200, "{host}");
        assert!(plain.body.contains("<title>blue</title>"));
    }
    let status: serde_json::Value = serde_json::from_str(&portico.admin_get("/api/status")).expect("status JSON");
    assert_eq!(status["statuses"]["Ingress/dev/app01-aclab-nginx-ing"]["loadBalancer"]["ingress"][0]["ip"], vip);
    // The HostRule's vendor-only WAF policy is reported, not silently dropped.
    let diagnostics = status["diagnostics"].to_string();
    assert!(diagnostics.contains("wafPolicy"), "{diagnostics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_with_a_certificate_from_another_ca_is_refused() {
    // Same Ingress flavour, but the pink backend presents a certificate from an untrusted CA.
    let backends = Backends::start(&["root", "pink", "blue", "green"]).await;
    let tls = repo().join("examples/article/tls");
    let rogue = common::rogue_backend().await;
    let vip = "127.0.0.33";
    let dir = example("ingress", &backends, vip);
    let endpoints = dir.path().join("ingress/endpoints.yaml");
    let text = std::fs::read_to_string(&endpoints).expect("endpoints");
    let pink = format!("port: {}", backends.https_port(1));
    let text = text.replace(&pink, &format!("port: {}", rogue.https_addr.expect("https").port()));
    std::fs::write(&endpoints, text).expect("write endpoints");
    let _portico = Portico::start(
        &[&dir.path().join("common"), &dir.path().join("ingress")],
        19933,
        &["--default-namespace", "dev", "--ingress-address", vip],
    );
    let ca = tls.join("root-ca.crt");
    let address: SocketAddr = format!("{vip}:443").parse().expect("vip");
    let pink = request(address, HOSTS[0], "GET", "/pink", &[], Some(tls_config(&ca, false))).await.expect("request");
    assert_eq!(pink.status, 502, "an unverified backend must not be used");
    let blue = request(address, HOSTS[0], "GET", "/blue", &[], Some(tls_config(&ca, false))).await.expect("request");
    assert_eq!(blue.status, 200);
}
