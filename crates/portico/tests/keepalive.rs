//! Connections to HTTP/1.1 backends through a real `portico` process: kept alive and shared by client
//! connections, replaced without a failed request when the backend has closed them, and hop-by-hop headers
//! (RFC 9110 section 7.6.1) dropped both ways. The backend is a raw TCP server, so the test sees every
//! connection and every byte Portico sends.

mod common;

use common::{Portico, http_gateway, request};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the raw backend saw: connections accepted and request heads, in order.
#[derive(Default)]
struct Seen {
    connections: usize,
    heads: Vec<String>,
}

/// A backend answering every request head with `response`; with `close_after`, it closes the connection
/// that long after each response without saying so (as a backend's keep-alive timeout does).
async fn raw_backend(response: &'static str, close_after: Option<Duration>) -> (u16, Arc<Mutex<Seen>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            log.lock().expect("lock").connections += 1;
            let log = log.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    // The requests carry no body: one answer per complete head.
                    while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buffer.drain(..end + 4).collect();
                        log.lock().expect("lock").heads.push(String::from_utf8_lossy(&head).to_lowercase());
                        if stream.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                        if let Some(after) = close_after {
                            tokio::time::sleep(after).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, seen)
}

fn config(vip: &str, port: u16) -> String {
    http_gateway(vip, 8080)
        + &common::service("raw", port)
        + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: raw, port: 80}]\n"
}

/// Twenty requests, each on a new client connection, reach the backend on one kept-alive connection; what
/// the client sent for this hop only (Connection, the headers it lists, Keep-Alive, TE) is not forwarded,
/// nor is what the backend sent for its hop; a client cannot make Portico drop the Host header.
#[tokio::test(flavor = "multi_thread")]
async fn backend_connections_are_kept_alive_and_hop_by_hop_headers_stay_on_their_hop() {
    let response =
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: x-backend-hop\r\nx-backend-hop: 1\r\nx-kept: 1\r\n\r\nok";
    let (port, seen) = raw_backend(response, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_file(dir.path(), "config.yaml", &config("127.0.0.121", port));
    let _portico = Portico::start(&[dir.path()], 19911, &[]);
    let vip: SocketAddr = "127.0.0.121:8080".parse().expect("vip");
    let hop = [
        ("connection", "x-client-hop, host"),
        ("x-client-hop", "secret"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("x-end-to-end", "yes"),
    ];
    for i in 0..20 {
        let answer = request(vip, "raw.example", "GET", &format!("/{i}"), &hop, None).await.expect("request");
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok"), "request {i}");
        assert_eq!(answer.header("x-kept"), "1");
        assert_eq!(answer.header("x-backend-hop"), "", "a header the backend listed in Connection reached the client");
    }
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.heads.len(), 20);
    assert_eq!(seen.connections, 1, "20 requests took {} backend connections", seen.connections);
    for head in &seen.heads {
        assert!(head.contains("\r\nhost: raw.example\r\n"), "Host lost: {head}");
        assert!(head.contains("\r\nx-end-to-end: yes\r\n"), "{head}");
        assert!(head.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"), "{head}");
        for name in ["x-client-hop", "keep-alive", "te"] {
            assert!(!head.contains(&format!("\r\n{name}:")), "{name} was forwarded: {head}");
        }
    }
}

/// A backend that closes each connection right after answering, without saying so (a keep-alive timeout far
/// shorter than the proxy's): the next request, sent at once, finds the kept connection closed (or closing
/// while it is being sent) and goes on a new one; no request fails, none reaches the backend twice.
#[tokio::test(flavor = "multi_thread")]
async fn connections_the_backend_closed_cost_no_request() {
    let (port, seen) = raw_backend("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", Some(Duration::ZERO)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_file(dir.path(), "config.yaml", &config("127.0.0.122", port));
    let _portico = Portico::start(&[dir.path()], 19912, &[]);
    let vip: SocketAddr = "127.0.0.122:8080".parse().expect("vip");
    for i in 0..10 {
        let answer = request(vip, "raw.example", "GET", "/", &[], None).await.expect("request");
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok"), "request {i}");
    }
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.heads.len(), 10, "every request reached the backend once");
    assert_eq!(seen.connections, 10, "each request needed a new connection");
}
