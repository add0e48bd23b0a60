//! Process lifecycle: SIGTERM stops accepting, lets open connections finish, and exits cleanly.

mod common;

use common::{Backends, Portico, http_gateway, service};

/// A Gateway on `vip`:8080 with one HTTPRoute, for any host and path, to backend `a` on `port`.
fn one_route(vip: &str, port: u16) -> String {
    http_gateway(vip, 8080)
        + &service("a", port)
        + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: a, port: 80}]\n"
}
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Portico with one worker (what it picks on one CPU: connections served on a thread of their own, drained from
/// the main thread) and 5 s to drain, serving [`one_route`] on `vip` to a backend; keep the directory.
async fn draining_portico(vip: &str, admin_port: u16) -> (Backends, tempfile::TempDir, Portico) {
    let backends = Backends::start(&["a"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.yaml"), one_route(vip, backends.http_port(0))).expect("write");
    let portico = Portico::start(&[dir.path()], admin_port, &["--drain-seconds", "5", "--workers", "1"]);
    (backends, dir, portico)
}

/// Sends SIGTERM to Portico.
fn sigterm(portico: &Portico) {
    let killed = std::process::Command::new("kill").arg("-TERM").arg(portico.child.id().to_string()).status();
    assert!(killed.expect("kill").success());
}

/// Waits (10 s at most) for Portico to exit, and checks that it exited cleanly.
fn assert_exits_cleanly(portico: &mut Portico, what: &str) {
    let started = Instant::now();
    let exit = loop {
        if let Some(status) = portico.child.try_wait().expect("wait") {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "portico did not exit {what}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits() {
    let (_backends, _dir, mut portico) = draining_portico("127.0.0.61", 19961).await;
    let vip: SocketAddr = "127.0.0.61:8080".parse().expect("vip");
    assert_eq!(common::get(vip, "any.example", "/green").await.status, 200);

    // An idle keep-alive connection is open while the signal arrives: it must not hold the exit back.
    let idle = std::net::TcpStream::connect(vip).expect("connect");
    sigterm(&portico);
    assert_exits_cleanly(&mut portico, "after SIGTERM");
    assert!(std::net::TcpStream::connect(vip).is_err(), "the listener is closed after exit");
    drop(idle);
    let log = std::fs::read_to_string(&portico.log).unwrap_or_default();
    assert!(log.contains("draining") && log.contains("stopped"), "{log}");
    assert!(log.contains("runtime started: 1 worker thread\n"), "{log}");
}

/// SIGTERM while a request is in flight: the request still gets its whole answer, told `connection: close`, and
/// its connection is closed after it; Portico exits once it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_when_sigterm_comes_gets_its_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_backends, _dir, mut portico) = draining_portico("127.0.0.64", 19964).await;

    let mut client = tokio::net::TcpStream::connect("127.0.0.64:8080").await.expect("connect");
    // The backend answers one second after the request.
    client.write_all(b"GET /green?delay=1000 HTTP/1.1\r\nHost: any.example\r\n\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&portico);
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
        .await
        .expect("the connection is closed after its answer")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200 ok\r\n"), "{answer:?}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer:?}");
    assert_exits_cleanly(&mut portico, "after its last request");
}

/// A kept-alive TLS connection outlives the handshake timeout (10 s): only the handshake is time-limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_outlive_the_handshake_timeout() {
    let backends = Backends::start(&["a"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(common::repo().join("examples/article/common/tls-secret.yaml"), dir.path().join("secret.yaml"))
        .expect("copy");
    let config = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: portico}\nspec: {controllerName: portico.dev/gateway-controller}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  gatewayClassName: portico\n  addresses: [{type: IPAddress, value: 127.0.0.62}]\n  listeners: [{name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: app01-aclab-nginx-tls-secret}]}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: a, port: 80}]}]\n".to_string()
        + &service("a", backends.http_port(0));
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    let _portico = Portico::start(&[dir.path()], 19962, &["--default-namespace", "dev"]);
    let ca = common::repo().join("examples/article/tls/root-ca.crt");
    let tcp = tokio::net::TcpStream::connect("127.0.0.62:443").await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("app01-lab.avi.aclab.uk").expect("name");
    let stream =
        tokio_rustls::TlsConnector::from(common::tls_config(&ca, false)).connect(name, tcp).await.expect("TLS");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("HTTP");
    tokio::spawn(connection);
    for round in 0..2 {
        if round == 1 {
            tokio::time::sleep(Duration::from_secs(11)).await;
        }
        get_ok(&mut sender, "/pink", "app01-lab.avi.aclab.uk", "the same connection still works").await;
    }
}

/// With `--request-head-timeout 1`, a client that sends nothing, half a request head, or half the HTTP/2
/// preface, and a kept-alive connection left idle, are closed; a connection that keeps sending requests, and a
/// request whose answer takes longer than the timeout, are not (the limit is on waiting for a request, not on
/// the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_closed_after_the_request_head_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backends = Backends::start(&["a"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.yaml"), one_route("127.0.0.63", backends.http_port(0))).expect("write");
    let _portico = Portico::start(&[dir.path()], 19963, &["--request-head-timeout", "1"]);
    let vip: SocketAddr = "127.0.0.63:8080".parse().expect("vip");
    assert_eq!(common::get(vip, "any.example", "/green").await.status, 200);

    // Each stalled client must see the connection closed (end of stream, no response) well within 10 s.
    for (case, sent) in [
        ("nothing", &b""[..]),
        ("half a head", b"GET /green HTTP/1.1\r\nHost: any.example\r\n"),
        ("half the HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(vip).await.expect("connect");
        stream.write_all(sent).await.expect("write");
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "a client that sent {case} is still connected after 10 s");
        assert!(!String::from_utf8_lossy(&answer).contains(" 200 "), "{case}: {answer:?}");
    }

    let handshake = || async {
        let stream = tokio::net::TcpStream::connect(vip).await.expect("connect");
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("HTTP")
    };
    // Busy: six requests 400 ms apart, 2.4 s on one connection.
    let (mut sender, connection) = handshake().await;
    let busy = tokio::spawn(connection);
    for _ in 0..6 {
        get_ok(&mut sender, "/green", "any.example", "the busy connection stays open").await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(!busy.is_finished());

    // A request in progress longer than the timeout (the backend answers after 2.5 s) is not cut.
    let (mut sender, connection) = handshake().await;
    tokio::spawn(connection);
    get_ok(&mut sender, "/green?delay=2500", "any.example", "a slow answer arrives").await;

    // Idle after a response: closed by Portico.
    let (mut sender, connection) = handshake().await;
    let idle = tokio::spawn(connection);
    get_ok(&mut sender, "/green", "any.example", "the first request").await;
    let ended = tokio::time::timeout(Duration::from_secs(10), idle).await;
    assert!(ended.is_ok(), "an idle kept-alive connection is still open after 10 s");

    // An idle HTTP/2 connection (h2c) is told so with a GOAWAY before it is closed, so that its client knows
    // that no request was lost. The client answers SETTINGS and PINGs, as a client does.
    let mut stream = tokio::net::TcpStream::connect(vip).await.expect("connect");
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.expect("preface");
    let mut received = Vec::new();
    let mut frame_types = Vec::new();
    let mut buffer = [0u8; 4096];
    let read_all = async {
        loop {
            let read = stream.read(&mut buffer).await.expect("read");
            if read == 0 {
                break;
            }
            received.extend_from_slice(&buffer[..read]);
            // Whole frames: a 9-byte header (24-bit length, type, flags, stream), then the payload.
            while received.len() >= 9 {
                let length = usize::from(received[0]) << 16 | usize::from(received[1]) << 8 | usize::from(received[2]);
                if received.len() < 9 + length {
                    break;
                }
                let frame: Vec<u8> = received.drain(..9 + length).collect();
                let (kind, flags) = (frame[3], frame[4]);
                frame_types.push(kind);
                let reply: Option<Vec<u8>> = match (kind, flags & 1) {
                    (0x4, 0) => Some(b"\0\0\0\x04\x01\0\0\0\0".to_vec()),
                    (0x6, 0) => Some([&b"\0\0\x08\x06\x01\0\0\0\0"[..], &frame[9..]].concat()),
                    _ => None,
                };
                if let Some(reply) = reply {
                    stream.write_all(&reply).await.expect("reply");
                }
            }
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(10), read_all).await;
    assert!(closed.is_ok(), "an idle HTTP/2 connection is still open after 10 s");
    assert!(frame_types.contains(&0x7), "closed without GOAWAY; frames received: {frame_types:?}");
}

/// Sends GET `path` for `host` on a client connection and checks that the answer is 200, read whole; `what` says
/// what failed.
async fn get_ok(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    path: &str,
    host: &str,
    what: &str,
) {
    use http_body_util::BodyExt;
    let request = http::Request::get(path).header("host", host).body(http_body_util::Empty::new()).expect("request");
    let response = sender.send_request(request).await.expect(what);
    assert_eq!(response.status(), 200, "{what}");
    let _ = response.into_body().collect().await;
}
