//! Load balancing through a real `portico` process: active health checks take a killed backend out and
//! bring it back, least connections avoids a busy endpoint, consistent hashing and cookie persistence pin
//! clients. Settings come from a `BackendPolicy` (portico.dev/v1alpha1) and Gateway API `sessionPersistence`.
//! Requests beyond a pool's limit wait for a backend connection.

mod common;

use common::{Backends, Portico, http_gateway, request};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One Service over two endpoints (the two test applications), with a BackendPolicy.
fn pair(backends: &Backends, policy: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: pair}}\nspec: {{ports: [{{port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: pair, labels: {{kubernetes.io/service-name: pair}}}}\naddressType: IPv4\nports: [{{name: \"\", port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: pair-b, labels: {{kubernetes.io/service-name: pair}}}}\naddressType: IPv4\nports: [{{name: \"\", port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n---\napiVersion: portico.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {{name: pair}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: pair}}]\n{policy}",
        backends.http_port(0),
        backends.http_port(1)
    )
}

fn route(rule_extra: &str) -> String {
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: pair, port: 80}}]\n{rule_extra}"
    )
}

async fn instances(vip: SocketAddr, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let answer = request(vip, "any.example", "GET", "/pink", headers, None).await.expect("request");
        assert_eq!(answer.status, 200, "{answer:?}");
        *seen.entry(answer.header("x-testapp-instance").to_string()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_is_taken_out_and_comes_back() {
    let mut backends = Backends::start(&["a", "b"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = "  health: {kind: {http: {path: /healthz}}, interval: 200ms, timeout: 150ms, rise: 1, fall: 2}\n  passive: {consecutiveErrors: 1, ejection: 2s}\n";
    let config = http_gateway("127.0.0.91", 8080)
        + &pair(&backends, policy)
        + &route("    retry: {attempts: 2, backoff: 5ms}\n");
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    let portico = Portico::start(&[dir.path()], 19991, &[]);
    let vip: SocketAddr = "127.0.0.91:8080".parse().expect("vip");
    let both = instances(vip, 20, &[]).await;
    assert_eq!(both.len(), 2, "round robin reaches both: {both:?}");

    // Kill `a` while requests keep flowing.
    let a_port = backends.http_port(0);
    let a = backends.apps.remove(0);
    a.shutdown().await;
    let killed = Instant::now();
    let (mut ok, mut failed) = (0, 0);
    while killed.elapsed() < Duration::from_millis(800) {
        match request(vip, "any.example", "GET", "/pink", &[], None).await {
            Ok(answer) if answer.status == 200 => ok += 1,
            _ => failed += 1,
        }
    }
    println!("while the backend died: {ok} requests succeeded, {failed} failed");
    assert_eq!(failed, 0, "passive ejection plus one retry hides the dead endpoint");
    // After the monitor's fall count (2 x 200 ms) the endpoint is marked down and gets nothing.
    let only_b = instances(vip, 20, &[]).await;
    assert_eq!(only_b.keys().collect::<Vec<_>>(), vec!["b"], "{only_b:?}");
    let status: serde_json::Value = serde_json::from_str(&portico.admin_get("/api/status")).expect("status");
    let endpoints = status["pools"]["default/pair:80"].as_array().expect("pool health").clone();
    let down = endpoints.iter().find(|e| e["endpoint"] == format!("127.0.0.1:{a_port}")).expect("endpoint a");
    assert_eq!(down["healthy"], false, "{down}");

    // Restart `a` on the same port: it comes back after `rise` successful checks.
    let revived = portico_testapp::start(portico_testapp::TestAppConfig {
        name: "a".into(),
        http: Some(SocketAddr::from(([127, 0, 0, 1], a_port))),
        https: None,
        tls_cert: None,
        tls_key: None,
    })
    .await
    .expect("restart a");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = instances(vip, 10, &[]).await;
        if seen.contains_key("a") {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted backend never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(portico.admin_get("/metrics").contains("portico_endpoint_healthy"), "per-endpoint health in /metrics");
    revived.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_the_busy_endpoint() {
    let backends = Backends::start(&["a", "b"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = http_gateway("127.0.0.92", 8080) + &pair(&backends, "  algorithm: leastConnections\n") + &route("");
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    let _portico = Portico::start(&[dir.path()], 19992, &[]);
    let vip: SocketAddr = "127.0.0.92:8080".parse().expect("vip");
    // Hold one request for 1.5 s on whichever endpoint it lands on.
    let slow = tokio::spawn(async move { request(vip, "any.example", "GET", "/pink?delay=1500", &[], None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quick = instances(vip, 10, &[]).await;
    let busy = slow.await.expect("join").expect("slow request");
    let busy = busy.header("x-testapp-instance").to_string();
    assert_eq!(quick.len(), 1, "all quick requests go to one endpoint: {quick:?}");
    assert!(!quick.contains_key(&busy), "quick requests avoided the busy endpoint {busy}: {quick:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_and_cookie_persistence_pin_clients() {
    let backends = Backends::start(&["a", "b"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = http_gateway("127.0.0.93", 8080)
        + &pair(&backends, "  algorithm: {consistentHash: {header: x-user}}\n")
        + &route("")
        + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: sticky}\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [sticky.example]\n  rules:\n  - backendRefs: [{name: pair, port: 80}]\n    sessionPersistence: {sessionName: portico-sticky}\n";
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    let _portico = Portico::start(&[dir.path()], 19993, &[]);
    let vip: SocketAddr = "127.0.0.93:8080".parse().expect("vip");

    // Each user sticks to one endpoint; users as a whole use both.
    let mut used = HashMap::new();
    // 24 users: the endpoints' ports are random, so with 8 users one run in 128 would put them all on one
    // endpoint; with 24 it is one in eight million.
    for n in 0..24 {
        let user = format!("user-{n}");
        let seen = instances(vip, 5, &[("x-user", &user)]).await;
        assert_eq!(seen.len(), 1, "{user} moved between endpoints: {seen:?}");
        for instance in seen.keys() {
            *used.entry(instance.clone()).or_insert(0) += 1;
        }
    }
    assert_eq!(used.len(), 2, "24 users all hashed to one endpoint: {used:?}");

    // Cookie persistence (Gateway API sessionPersistence): the first answer sets the cookie, and the
    // client stays on that endpoint while it sends it back.
    let first = request(vip, "sticky.example", "GET", "/pink", &[], None).await.expect("request");
    let cookie = first.header("set-cookie").split(';').next().unwrap_or("").to_string();
    assert!(cookie.starts_with("portico-sticky="), "{:?}", first.headers);
    let pinned = first.header("x-testapp-instance").to_string();
    for _ in 0..20 {
        let again =
            request(vip, "sticky.example", "GET", "/pink", &[("cookie", &cookie)], None).await.expect("request");
        assert_eq!(again.header("x-testapp-instance"), pinned);
    }
}

/// A backend that answers every request after `delay` and records how many connections it had open at most.
async fn counting_backend(delay: Duration) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let open = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let seen = most.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (open, most) = (open.clone(), most.clone());
            tokio::spawn(async move {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    // One answer per complete request head (the requests carry no body).
                    while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        buffer.drain(..end + 4);
                        tokio::time::sleep(delay).await;
                        if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                            break;
                        }
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (port, seen)
}

/// `--pool-request-limit`: beyond the limit, requests wait for a backend connection instead of opening one
/// each (which at 9,000 connections ran the process out of descriptors); none fails.
#[tokio::test(flavor = "multi_thread")]
async fn requests_beyond_the_pool_limit_wait_for_a_connection() {
    let (port, most) = counting_backend(Duration::from_millis(150)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = http_gateway("127.0.0.94", 8080)
        + &common::service("slow", port)
        + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: slow, port: 80}]\n";
    common::write_file(dir.path(), "config.yaml", &config);
    let _portico = Portico::start(&[dir.path()], 19994, &["--pool-request-limit", "2"]);
    let vip: SocketAddr = "127.0.0.94:8080".parse().expect("vip");
    let requests: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { request(vip, "slow.example", "GET", "/", &[], None).await }))
        .collect();
    for handle in requests {
        let answer = handle.await.expect("task").expect("request");
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
    }
    let most = most.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "the backend saw {most} connections at once; the limit is 2");
}
