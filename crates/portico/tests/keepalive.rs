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

/// A raw backend answering `response`, and Portico serving it on `vip`:8080 with its admin on `admin_port`.
async fn portico_with_raw_backend(
    vip: &str,
    admin_port: u16,
    response: &'static str,
    close_after: Option<Duration>,
) -> (tempfile::TempDir, Portico, Arc<Mutex<Seen>>) {
    let (port, seen) = raw_backend(response, close_after).await;
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_file(dir.path(), "config.yaml", &config(vip, port));
    let portico = Portico::start(&[dir.path()], admin_port, &[]);
    (dir, portico, seen)
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
    let (_dir, _portico, seen) = portico_with_raw_backend("127.0.0.121", 19911, response, None).await;
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

/// A mirrored request reaches the mirror with the headers the backend gets: Host, X-Forwarded-For with the
/// client's address appended, X-Forwarded-Proto; and without this hop's headers.
#[tokio::test(flavor = "multi_thread")]
async fn the_mirror_gets_the_forwarded_headers_the_backend_gets() {
    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let (main_port, main) = raw_backend(answer, None).await;
    let (shadow_port, shadow) = raw_backend(answer, None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = http_gateway("127.0.0.127", 8080)
        + &common::service("main", main_port)
        + &common::service("shadow", shadow_port)
        + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - filters:\n    - type: RequestMirror\n      requestMirror: {backendRef: {name: shadow, port: 80}}\n    backendRefs: [{name: main, port: 80}]\n";
    common::write_file(dir.path(), "config.yaml", &config);
    let _portico = Portico::start(&[dir.path()], 19917, &[]);
    let vip: SocketAddr = "127.0.0.127:8080".parse().expect("vip");
    let headers = [("x-forwarded-for", "203.0.113.7"), ("connection", "x-client-hop"), ("x-client-hop", "1")];
    let answer = request(vip, "mirror.example", "GET", "/copy", &headers, None).await.expect("request");
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
    // The mirror's copy is sent in the background: wait for it, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while shadow.lock().expect("lock").heads.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the mirror received no request");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (who, seen) in [("backend", &main), ("mirror", &shadow)] {
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.heads.len(), 1, "{who}");
        let head = &seen.heads[0];
        assert!(head.starts_with("get /copy http/1.1\r\n"), "{who}: {head}");
        assert!(head.contains("\r\nhost: mirror.example\r\n"), "{who}: {head}");
        assert!(head.contains("\r\nx-forwarded-for: 203.0.113.7, 127.0.0.1\r\n"), "{who}: {head}");
        assert!(head.contains("\r\nx-forwarded-proto: http\r\n"), "{who}: {head}");
        assert!(!head.contains("\r\nx-client-hop:"), "{who}: {head}");
    }
}

/// A backend that closes each connection right after answering, without saying so (a keep-alive timeout far
/// shorter than the proxy's): the next request, sent at once, finds the kept connection closed (or closing
/// while it is being sent) and goes on a new one; no request fails, none reaches the backend twice.
#[tokio::test(flavor = "multi_thread")]
async fn connections_the_backend_closed_cost_no_request() {
    let (_dir, _portico, seen) = portico_with_raw_backend(
        "127.0.0.122",
        19912,
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        Some(Duration::ZERO),
    )
    .await;
    let vip: SocketAddr = "127.0.0.122:8080".parse().expect("vip");
    for i in 0..10 {
        let answer = request(vip, "raw.example", "GET", "/", &[], None).await.expect("request");
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok"), "request {i}");
    }
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.heads.len(), 10, "every request reached the backend once");
    assert_eq!(seen.connections, 10, "each request needed a new connection");
}

/// Whether a raw client shuts down its sending side once its request is written.
#[derive(PartialEq)]
enum Shutdown {
    AfterRequest,
    No,
}

/// Writes `request` on a new connection and reads the answer until Portico closes the connection.
async fn raw_exchange(vip: &str, request: &[u8], shutdown: Shutdown) -> String {
    let mut client = tokio::net::TcpStream::connect(vip).await.expect("connect");
    client.write_all(request).await.expect("write");
    if shutdown == Shutdown::AfterRequest {
        client.shutdown().await.expect("shut down the sending side");
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
        .await
        .expect("the connection ends in time")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A client that shuts down its sending side once its request is written (`nc -N`, `curl` with some options,
/// HTTP/1.0 clients) still gets the answer: the end of its stream is not taken as a request given up.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    let (_dir, _portico, seen) =
        portico_with_raw_backend("127.0.0.124", 19914, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", None).await;
    let request = b"GET /half HTTP/1.1\r\nHost: raw.example\r\n\r\n";
    let answer = raw_exchange("127.0.0.124:8080", request, Shutdown::AfterRequest).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("\r\n\r\nok"), "{answer:?}");
    assert_eq!(seen.lock().expect("lock").heads.len(), 1, "the request reached the backend once");
}

/// RFC 9112 section 3.2: an HTTP/1.1 request without Host is refused by Portico itself, and reaches no backend;
/// an HTTP/1.0 request without Host (valid in HTTP/1.0) reaches the backend with the address the client
/// connected to as its Host, since Portico speaks HTTP/1.1 to the backend, where a request without one is
/// invalid (nginx answers such a request 400 and closes the connection, which Portico kept for others).
#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_host_is_refused_in_http11_and_given_the_servers_name_in_http10() {
    let (_dir, _portico, seen) =
        portico_with_raw_backend("127.0.0.125", 19915, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", None).await;
    let refused =
        raw_exchange("127.0.0.125:8080", b"GET /eleven HTTP/1.1\r\nConnection: close\r\n\r\n", Shutdown::No).await;
    assert!(refused.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{refused:?}");
    assert!(refused.ends_with("an HTTP/1.1 request needs a Host header\n"), "{refused:?}");
    assert!(seen.lock().expect("lock").heads.is_empty(), "the refused request reached the backend");

    let answer = raw_exchange("127.0.0.125:8080", b"GET /ten HTTP/1.0\r\n\r\n", Shutdown::No).await;
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n") && answer.ends_with("\r\n\r\nok"), "{answer:?}");
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.heads.len(), 1, "{:?}", seen.heads);
    assert!(seen.heads[0].starts_with("get /ten http/1.1\r\n"), "{}", seen.heads[0]);
    assert!(seen.heads[0].contains("\r\nhost: 127.0.0.125:8080\r\n"), "{}", seen.heads[0]);
}

/// A plain connection is HTTP/2 only if it starts with the HTTP/2 preface, so Portico looks at a request's first
/// bytes before serving it: a request whose first byte comes alone, and is the preface's first byte (`P`), is
/// still served as HTTP/1.1 once the next byte tells them apart, and all of it reaches the backend.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_head_that_starts_like_the_http2_preface_and_comes_in_pieces_is_served() {
    let (_dir, _portico, seen) =
        portico_with_raw_backend("127.0.0.126", 19916, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", None).await;
    let mut client = tokio::net::TcpStream::connect("127.0.0.126:8080").await.expect("connect");
    client.set_nodelay(true).expect("nodelay");
    let pieces: [&[u8]; 3] =
        [b"P", b"U", b"T /pieces HTTP/1.1\r\nHost: raw.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"];
    for piece in pieces {
        client.write_all(piece).await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
        .await
        .expect("the connection ends in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("\r\n\r\nok"), "{answer:?}");
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.heads.len(), 1, "{:?}", seen.heads);
    assert!(seen.heads[0].starts_with("put /pieces http/1.1\r\n"), "{}", seen.heads[0]);
}

/// A backend answering by path with each way RFC 9112 frames a body, written in pieces so that Portico reads
/// them in several parts: Content-Length, chunked with an extension and a trailer, an interim 103 before the
/// answer, HEAD and 304 (a length but no body), a POST's body echoed, a body of 1 MiB (read in growing parts),
/// an HTTP/1.0 body that runs until the connection closes, and a chunked body that also claims a length. Returns the port and the number of connections accepted.
async fn framing_backend() -> (u16, Arc<Mutex<usize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let accepted = Arc::new(Mutex::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            *count.lock().expect("lock") += 1;
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let end = loop {
                        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse::<usize>().expect("length"));
                    while buffer.len() < end + length {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buffer.drain(..end + length).skip(end).collect();
                    let target = head.split(' ').nth(1).unwrap_or("").to_string();
                    let pieces: Vec<Vec<u8>> = match target.as_str() {
                        "/length" => {
                            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234".to_vec(), b"56789".to_vec()]
                        }
                        "/chunked" => vec![
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel".to_vec(),
                            b"lo\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: t\r\n\r\n".to_vec(),
                        ],
                        "/interim" => vec![
                            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n".to_vec(),
                            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal".to_vec(),
                        ],
                        "/head" => vec![b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n".to_vec()],
                        "/not-modified" => vec![b"HTTP/1.1 304 Not Modified\r\ncontent-length: 50\r\n\r\n".to_vec()],
                        "/echo" => {
                            let mut answer =
                                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
                            answer.extend_from_slice(&body);
                            vec![answer]
                        }
                        "/until-close" => vec![b"HTTP/1.0 200 OK\r\n\r\nuntil".to_vec(), b" close".to_vec()],
                        "/both" => vec![
                            b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
                            b"5\r\nhello\r\n0\r\n\r\n".to_vec(),
                        ],
                        "/large" => {
                            let mut answer = b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n".to_vec();
                            answer.extend(LARGE_PATTERN.iter().cycle().take(1 << 20));
                            vec![answer]
                        }
                        _ => vec![b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec()],
                    };
                    for piece in pieces {
                        if stream.write_all(&piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if target == "/until-close" {
                        return;
                    }
                }
            });
        }
    });
    (port, accepted)
}

/// The bytes of the 1 MiB body of `/large`, repeated.
const LARGE_PATTERN: &[u8] = b"0123456789abcdef";

/// One HTTP/1.1 request with a body, on a new connection.
async fn post(vip: SocketAddr, path: &str, body: &'static str) -> (u16, String) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(vip).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(connection);
    let request = http::Request::post(path)
        .header("host", "raw.example")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Every response framing reaches the client whole, and the backend connection stays in step: all the
/// exchanges share one connection, a POST's included, until the backend ends a body by closing it.
#[tokio::test(flavor = "multi_thread")]
async fn every_body_framing_arrives_whole_and_keeps_the_connection_in_step() {
    let (port, accepted) = framing_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_file(dir.path(), "config.yaml", &config("127.0.0.123", port));
    // On the single-threaded runtime (one CPU), where the lean HTTP/1.1 client shares the thread.
    let _portico = Portico::start(&[dir.path()], 19913, &["--workers", "1"]);
    let vip: SocketAddr = "127.0.0.123:8080".parse().expect("vip");
    let get = |method: &'static str, path: &'static str| async move {
        let answer = request(vip, "raw.example", method, path, &[], None).await.expect("request");
        (answer.status, answer.body)
    };
    for round in 0..2 {
        assert_eq!(get("GET", "/length").await, (200, "0123456789".into()), "round {round}");
        assert_eq!(get("GET", "/chunked").await, (200, "hello world".into()), "round {round}");
        assert_eq!(get("GET", "/interim").await, (200, "final".into()), "round {round}");
        assert_eq!(get("HEAD", "/head").await, (200, String::new()), "round {round}");
        assert_eq!(get("GET", "/not-modified").await, (304, String::new()), "round {round}");
        assert_eq!(post(vip, "/echo", "a body to echo").await, (200, "a body to echo".into()), "round {round}");
        let (status, large) = get("GET", "/large").await;
        assert_eq!((status, large.len()), (200, 1 << 20), "round {round}");
        assert!(large.as_bytes().chunks(16).all(|chunk| chunk == LARGE_PATTERN), "the large body came back altered");
        // Bodies sent with hyper's client hand their connection back once done; that happens in its task.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(*accepted.lock().expect("lock"), 1, "the exchanges did not share one backend connection");
    assert_eq!(get("GET", "/until-close").await, (200, "until close".into()));
    assert_eq!(get("GET", "/length").await, (200, "0123456789".into()));
    assert_eq!(*accepted.lock().expect("lock"), 2, "after a body ended by closing, one new connection");
    // Transfer-Encoding with Content-Length: read as chunked, passed on without the length it overrides, and
    // the connection is not used again (RFC 9112 section 6.3).
    assert_eq!(get("GET", "/both").await, (200, "hello".into()));
    assert_eq!(get("GET", "/length").await, (200, "0123456789".into()));
    assert_eq!(*accepted.lock().expect("lock"), 3, "the connection of an ambiguous response was kept");
}
