//! ACME end to end: a Gateway annotated with `cert-manager.io/cluster-issuer` pointing at an ACME
//! ClusterIssuer; Portico orders the certificate from a real pebble, answers the HTTP-01 challenge on its
//! own HTTP listener, and then serves the certificate on the HTTPS listener.

mod common;

use base64::Engine;
use common::{Backends, Portico, service};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_against_pebble_yields_the_served_certificate() {
    if portico_pki::testing::ensure_pebble().is_none() {
        return;
    }
    let backends = Backends::start(&["web"]).await;
    let vip = "127.0.0.104";
    let http_port = portico_pki::testing::free_port();
    let pebble = portico_pki::testing::start_pebble_resolving(http_port, vip.parse().expect("ip"));
    let bundle = base64::engine::general_purpose::STANDARD.encode(&pebble.root_pem);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "apiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {{name: pebble}}\nspec:\n  acme:\n    server: {}\n    email: ops@aclab.uk\n    caBundle: {bundle}\n    privateKeySecretRef: {{name: pebble-account}}\n    solvers: [{{http01: {{gatewayHTTPRoute: {{}}}}}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: portico}}\nspec: {{controllerName: portico.dev/gateway-controller}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  annotations: {{cert-manager.io/cluster-issuer: pebble}}\nspec:\n  gatewayClassName: portico\n  addresses: [{{type: IPAddress, value: {vip}}}]\n  listeners:\n  - {{name: http, port: {http_port}, protocol: HTTP}}\n  - {{name: https, port: 443, protocol: HTTPS, hostname: acme.aclab.uk, tls: {{certificateRefs: [{{name: acme-tls}}]}}}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]\n{}",
        pebble.directory_url,
        service("web", backends.http_port(0)),
    );
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    let portico = Portico::start(&[dir.path()], 20041, &[]);
    let root = dir.path().join("acme-root.pem");
    std::fs::write(&root, pebble.issuing_root()).expect("write root");

    // Bounded wait: the order, the challenge and the swap take a few seconds against pebble.
    let address: SocketAddr = format!("{vip}:443").parse().expect("vip");
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        match common::request(address, "acme.aclab.uk", "GET", "/green", &[], Some(common::tls_config(&root, false)))
            .await
        {
            Ok(answer) => break answer,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "no certificate from pebble after 60 s ({error})\nstatus: {}\n{}",
                    portico.admin_get("/api/status"),
                    pebble.logs()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    assert_eq!(answer.status, 200, "served over the ACME certificate, verified against pebble's root");
    assert_eq!(answer.header("x-testapp-instance"), "web");
    let status = portico.admin_get("/api/status");
    assert!(status.contains("Certificate up to date") || status.contains("Certificate is up to date"), "{status}");
}
