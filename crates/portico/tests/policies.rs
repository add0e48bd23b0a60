//! Request behaviour and backend policies through a real `portico` process: HTTPRoute timeouts and
//! retries, and BackendTLSPolicy re-encryption verified against a CA from a ConfigMap.

mod common;

use common::{Backends, Portico, get, http_gateway, repo, service};
use std::net::SocketAddr;

fn route(name: &str, host: &str, rule: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [{host}]\n  rules:\n  - {rule}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_answer_504_and_retries_hide_a_dead_endpoint() {
    let backends = Backends::start(&["live"]).await;
    let (_dead_socket, dead) = common::refused_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let two_endpoints = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: flaky}}\nspec: {{ports: [{{port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: flaky, labels: {{kubernetes.io/service-name: flaky}}}}\naddressType: IPv4\nports: [{{name: \"\", port: {dead}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: flaky-live, labels: {{kubernetes.io/service-name: flaky}}}}\naddressType: IPv4\nports: [{{name: \"\", port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n",
        backends.http_port(0)
    );
    let config = http_gateway("127.0.0.81", 8080)
        + &service("live", backends.http_port(0))
        + &two_endpoints
        + &route("slow", "slow.example", "timeouts: {request: 300ms}\n    backendRefs: [{name: live, port: 80}]")
        + &route(
            "retrying",
            "retry.example",
            "retry: {attempts: 2, codes: [503], backoff: 10ms}\n    backendRefs: [{name: flaky, port: 80}]",
        )
        + &route("plain", "plain.example", "backendRefs: [{name: flaky, port: 80}]");
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    let portico = Portico::start(&[dir.path()], 19981, &[]);
    let vip: SocketAddr = "127.0.0.81:8080".parse().expect("vip");

    assert_eq!(get(vip, "slow.example", "/pink?delay=10").await.status, 200);
    let late = get(vip, "slow.example", "/pink?delay=2000").await;
    assert_eq!(late.status, 504, "a request past its timeout is answered 504: {late:?}");

    // Round robin alternates the dead and the live endpoint: without retries half the requests fail ...
    let mut plain_failures = 0;
    for _ in 0..10 {
        if get(vip, "plain.example", "/pink").await.status == 502 {
            plain_failures += 1;
        }
    }
    assert!(plain_failures >= 4, "expected about half of 10 to fail without retries, got {plain_failures}");
    // ... with retries on connection errors none does.
    for _ in 0..10 {
        let answer = get(vip, "retry.example", "/pink").await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    // A status listed in `codes` is retried too; when every attempt fails the last answer is passed on.
    assert_eq!(get(vip, "retry.example", "/pink?status=503").await.status, 503);
    let metrics = portico.admin_get("/metrics");
    assert!(metrics.contains("portico_upstream_errors_total{pool=\"default/flaky:80\",kind=\"connect\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_policy_reencrypts_and_refuses_an_unknown_ca() {
    let backends = Backends::start(&["secure"]).await;
    let tls = repo().join("examples/article/tls");
    let rogue = common::rogue_backend().await;
    let root = std::fs::read_to_string(tls.join("root-ca.crt")).expect("root CA");
    let indented: String = root.lines().map(|l| format!("    {l}\n")).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = |name: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: {name}}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: {name}}}]\n  validation:\n    caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: example-ca}}]\n    hostname: localhost\n"
        )
    };
    let config = http_gateway("127.0.0.82", 8080)
        + &format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: example-ca}}\ndata:\n  ca.crt: |\n{indented}"
        )
        + &service("secure", backends.https_port(0))
        + &service("rogue", rogue.https_addr.expect("https").port())
        + &policy("secure")
        + &policy("rogue")
        + &service("by-san", backends.https_port(0))
        + &service("wrong-name", backends.https_port(0))
        + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {name: by-san}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: by-san}]\n  validation:\n    caCertificateRefs: [{group: \"\", kind: ConfigMap, name: example-ca}]\n    hostname: sni-only.example\n    subjectAltNames: [{type: Hostname, hostname: app01-aclab-nginx-pink-svc.dev.svc}]\n"
        + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {name: wrong-name}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: wrong-name}]\n  validation:\n    caCertificateRefs: [{group: \"\", kind: ConfigMap, name: example-ca}]\n    hostname: sni-only.example\n"
        + &route("by-san", "san.example", "backendRefs: [{name: by-san, port: 80}]")
        + &route("wrong-name", "wrong.example", "backendRefs: [{name: wrong-name, port: 80}]")
        + &route("secure", "secure.example", "backendRefs: [{name: secure, port: 80}]")
        + &route("rogue", "rogue.example", "backendRefs: [{name: rogue, port: 80}]");
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    let portico = Portico::start(&[dir.path()], 19982, &[]);
    let vip: SocketAddr = "127.0.0.82:8080".parse().expect("vip");

    let secure = get(vip, "secure.example", "/green").await;
    assert_eq!(secure.status, 200);
    assert_eq!(secure.header("x-testapp-proto"), "https", "the backend received TLS");
    // The next requests go on the kept TLS connection (checked idle between them, after the backend's
    // TLS 1.3 session tickets arrived on it).
    for i in 0..5 {
        let again = get(vip, "secure.example", "/blue").await;
        assert_eq!((again.status, again.header("x-testapp-proto")), (200, "https"), "request {i} on a kept connection");
    }
    assert_eq!(get(vip, "rogue.example", "/green").await.status, 502, "a certificate from another CA is refused");
    // The certificate must carry the policy's hostname, or one of its subjectAltNames when those are given.
    assert_eq!(get(vip, "wrong.example", "/green").await.status, 502, "a certificate without the hostname is refused");
    assert_eq!(get(vip, "san.example", "/green").await.status, 200, "a certificate with a listed SAN is accepted");
    let status: serde_json::Value = serde_json::from_str(&portico.admin_get("/api/status")).expect("status");
    assert_eq!(status["statuses"]["BackendTLSPolicy/default/secure"]["conditions"][0]["status"], "True");
}
