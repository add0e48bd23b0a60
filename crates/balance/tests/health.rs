//! Active health checks against real sockets on 127.0.0.1: tiny TCP, HTTP and HTTPS servers started here,
//! stopped and restarted on the same port.
//!
//! Rise and fall counting is checked round by round with `PoolState::check_now` (no timing). The spawned
//! checker is checked with a 100ms interval and generous deadlines (10s) for what must happen, and lower
//! bounds only where the checker's own schedule guarantees them (a down needs `fall` probes one interval apart,
//! checked as at least half an interval to leave room for scheduling).

use http::HeaderMap;
use portico_balance::{
    BalanceConfig, HealthCheck, HealthKind, HttpProbe, HttpsProbe, PoolState, RequestInfo, StatusRange, TlsProbe,
    spawn_health_checks,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

#[derive(Clone)]
enum Behaviour {
    /// Accept and close.
    Accept,
    /// Answer HTTP/1.1 with the current status and this body.
    Http { status: Arc<AtomicU16>, body: &'static str, tls: Option<TlsAcceptor> },
    /// Accept and never answer.
    Silent,
}

/// A test server that can be stopped and restarted on the same address.
struct Server {
    address: SocketAddr,
    behaviour: Behaviour,
    accepted: Arc<AtomicUsize>,
    last_request: Arc<Mutex<String>>,
    task: Option<JoinHandle<()>>,
}

fn listen(address: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(address).expect("bind");
    socket.listen(64).expect("listen")
}

impl Server {
    fn start(behaviour: Behaviour) -> Server {
        let mut server = Server {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            behaviour,
            accepted: Arc::new(AtomicUsize::new(0)),
            last_request: Arc::new(Mutex::new(String::new())),
            task: None,
        };
        server.restart();
        server
    }

    fn restart(&mut self) {
        let listener = listen(self.address);
        self.address = listener.local_addr().expect("address");
        let (behaviour, accepted, last_request) =
            (self.behaviour.clone(), Arc::clone(&self.accepted), Arc::clone(&self.last_request));
        self.task = Some(tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                let behaviour = behaviour.clone();
                let last_request = Arc::clone(&last_request);
                connections.spawn(async move {
                    match behaviour {
                        Behaviour::Accept => drop(stream),
                        Behaviour::Silent => {
                            let _held = stream;
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        Behaviour::Http { status, body, tls: None } => {
                            answer(stream, status.load(Ordering::SeqCst), body, &last_request).await;
                        }
                        Behaviour::Http { status, body, tls: Some(acceptor) } => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                answer(stream, status.load(Ordering::SeqCst), body, &last_request).await;
                            }
                        }
                    }
                });
                // Reap finished connections so the set stays small.
                while connections.try_join_next().is_some() {}
            }
        }));
    }

    /// Stops listening and closes every connection (the accept task owns them).
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, status: u16, body: &str, last: &Mutex<String>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    *last.lock().expect("lock") = String::from_utf8_lossy(&head).into_owned();
    let response = format!(
        "HTTP/1.1 {status} Whatever\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn http_server(body: &'static str, tls: Option<TlsAcceptor>) -> (Server, Arc<AtomicU16>) {
    let status = Arc::new(AtomicU16::new(200));
    (Server::start(Behaviour::Http { status: Arc::clone(&status), body, tls }), status)
}

/// A self-signed certificate for `localhost` and 127.0.0.1: (acceptor, certificate PEM).
fn tls_identity() -> (TlsAcceptor, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("server config");
    (TlsAcceptor::from(Arc::new(config)), certified.cert.pem())
}

fn check(kind: HealthKind, rise: u32, fall: u32) -> BalanceConfig {
    BalanceConfig {
        health: Some(HealthCheck {
            kind,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            rise,
            fall,
            port: None,
        }),
        ..BalanceConfig::default()
    }
}

fn state(pool: &PoolState, endpoint: SocketAddr) -> portico_balance::EndpointHealth {
    pool.health().into_iter().find(|h| h.endpoint == endpoint).expect("endpoint in pool")
}

fn pick(pool: &PoolState) -> Option<SocketAddr> {
    let headers = HeaderMap::new();
    pool.pick(&RequestInfo { client_ip: [127, 0, 0, 1].into(), headers: &headers }).map(|p| p.endpoint)
}

/// Waits (10s at most) until the endpoint's health is `healthy`; returns how long it took.
async fn wait_for(pool: &PoolState, endpoint: SocketAddr, healthy: bool) -> Duration {
    let started = Instant::now();
    while state(pool, endpoint).healthy != healthy {
        assert!(started.elapsed() < Duration::from_secs(10), "{endpoint} never became healthy={healthy}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

#[tokio::test]
async fn tcp_check_marks_down_after_fall_failures_and_up_after_rise_successes() {
    let mut server = Server::start(Behaviour::Accept);
    let pool = PoolState::new("tcp", vec![server.address], check(HealthKind::Tcp, 2, 3));
    pool.check_now().await;
    assert!(state(&pool, server.address).healthy);

    server.stop().await;
    for failures in 1..=2 {
        pool.check_now().await;
        let health = state(&pool, server.address);
        assert!(health.healthy, "still up after {failures} failure(s) of 3");
        assert_eq!(health.consecutive_failures, failures);
    }
    pool.check_now().await;
    let health = state(&pool, server.address);
    assert!(!health.healthy && !health.checked_up, "{health:?}");
    assert!(health.last_error.as_deref().is_some_and(|e| e.contains("connect")), "{health:?}");
    assert_eq!(pick(&pool), None, "no healthy endpoint: None (503)");

    server.restart();
    pool.check_now().await;
    assert!(!state(&pool, server.address).healthy, "one success of two is not enough");
    pool.check_now().await;
    let health = state(&pool, server.address);
    assert!(health.healthy && health.last_error.is_none(), "{health:?}");
    assert_eq!(pick(&pool), Some(server.address));
}

#[tokio::test]
async fn spawned_checker_takes_a_stopped_endpoint_out_and_brings_it_back() {
    let mut stopped = Server::start(Behaviour::Accept);
    let steady = Server::start(Behaviour::Accept);
    let pool = PoolState::new("spawned", vec![stopped.address, steady.address], check(HealthKind::Tcp, 2, 2));
    let _task = spawn_health_checks(Arc::clone(&pool));
    // Both are probed at once on start.
    let started = Instant::now();
    while stopped.accepted.load(Ordering::SeqCst) == 0 || steady.accepted.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "no probe arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    stopped.stop().await;
    let down_after = wait_for(&pool, stopped.address, false).await;
    // Two failed probes, one interval (100ms) apart: never after the first failure alone. (The first failing
    // round may have started just before the clock did, hence the margin.)
    assert!(down_after >= Duration::from_millis(50), "down after {down_after:?}");
    let health = state(&pool, stopped.address);
    assert!(health.consecutive_failures >= 2 && health.last_error.is_some(), "{health:?}");
    for _ in 0..100 {
        assert_eq!(pick(&pool), Some(steady.address), "no request reaches the stopped endpoint");
    }

    stopped.restart();
    let up_after = wait_for(&pool, stopped.address, true).await;
    assert!(up_after >= Duration::from_millis(50), "up after {up_after:?}");
    let picks: std::collections::HashSet<_> = (0..10).filter_map(|_| pick(&pool)).collect();
    assert_eq!(picks.len(), 2, "it gets requests again");
}

#[tokio::test]
async fn http_check_reads_status_body_and_sends_host() {
    let (server, status) = http_server("all OK here", None);
    let probe = HttpProbe { host: Some("app.example".into()), ..HttpProbe::get("/healthz") };
    let pool = PoolState::new("http", vec![server.address], check(HealthKind::Http(probe.clone()), 1, 2));
    pool.check_now().await;
    assert!(state(&pool, server.address).healthy);
    let request = server.last_request.lock().expect("lock").clone();
    assert!(request.starts_with("GET /healthz HTTP/1.1\r\n") && request.contains("Host: app.example\r\n"), "{request}");

    status.store(503, Ordering::SeqCst);
    pool.check_now().await;
    pool.check_now().await;
    let health = state(&pool, server.address);
    assert!(!health.healthy, "{health:?}");
    assert_eq!(health.last_error.as_deref(), Some("status 503"));
    status.store(204, Ordering::SeqCst);
    pool.check_now().await;
    assert!(state(&pool, server.address).healthy, "rise 1");

    // Expected codes and body text.
    status.store(503, Ordering::SeqCst);
    let maintenance_ok = HttpProbe { expected: vec![StatusRange::new(500, 599)], ..probe.clone() };
    pool.update(vec![server.address], check(HealthKind::Http(maintenance_ok), 1, 1));
    pool.check_now().await;
    assert!(state(&pool, server.address).healthy, "503 is expected here");
    status.store(200, Ordering::SeqCst);
    pool.update(
        vec![server.address],
        check(HealthKind::Http(HttpProbe { body: Some("OK".into()), ..probe.clone() }), 1, 1),
    );
    pool.check_now().await;
    assert!(state(&pool, server.address).healthy);
    pool.update(vec![server.address], check(HealthKind::Http(HttpProbe { body: Some("nope".into()), ..probe }), 1, 1));
    pool.check_now().await;
    let health = state(&pool, server.address);
    assert!(!health.healthy && health.last_error.as_deref().is_some_and(|e| e.contains("body")), "{health:?}");
}

#[tokio::test]
async fn https_check_verifies_only_when_given_a_ca() {
    let (acceptor, ca_pem) = tls_identity();
    let (_other, other_ca) = tls_identity();
    let (server, _status) = http_server("OK", Some(acceptor));
    let https = |ca: Option<&str>, name: Option<&str>| {
        HealthKind::Https(HttpsProbe {
            http: HttpProbe::get("/healthz"),
            tls: TlsProbe { ca_pem: ca.map(str::to_string), server_name: name.map(str::to_string) },
        })
    };
    let pool = PoolState::new("https", vec![server.address], check(https(None, None), 1, 1));
    pool.check_now().await;
    assert!(state(&pool, server.address).healthy, "{:?}", state(&pool, server.address));

    pool.update(vec![server.address], check(https(Some(&ca_pem), Some("localhost")), 1, 1));
    pool.check_now().await;
    assert!(state(&pool, server.address).healthy, "{:?}", state(&pool, server.address));

    pool.update(vec![server.address], check(https(Some(&other_ca), Some("localhost")), 1, 1));
    pool.check_now().await;
    let health = state(&pool, server.address);
    assert!(!health.healthy && health.last_error.as_deref().is_some_and(|e| e.contains("certificate")), "{health:?}");

    // A TLS handshake alone.
    let tls = HealthKind::Tls(TlsProbe { ca_pem: Some(ca_pem.clone()), server_name: Some("localhost".into()) });
    pool.update(vec![server.address], check(tls, 1, 1));
    pool.check_now().await;
    assert!(state(&pool, server.address).healthy, "{:?}", state(&pool, server.address));

    // An HTTPS check against a plain HTTP endpoint fails (this test server waits for a request head that a
    // ClientHello never completes, so the handshake times out).
    let (plain, _) = http_server("OK", None);
    let pool = PoolState::new("https-plain", vec![plain.address], check(https(None, None), 1, 1));
    pool.check_now().await;
    let health = state(&pool, plain.address);
    assert!(!health.healthy && health.last_error.is_some(), "{health:?}");

    // A TLS endpoint that closes without answering the handshake fails it.
    let closing = Server::start(Behaviour::Accept);
    let pool = PoolState::new("https-closed", vec![closing.address], check(https(None, None), 1, 1));
    pool.check_now().await;
    let health = state(&pool, closing.address);
    assert!(!health.healthy && health.last_error.as_deref().is_some_and(|e| e.contains("TLS")), "{health:?}");
}

#[tokio::test]
async fn silent_endpoints_time_out_and_the_monitor_port_overrides() {
    let silent = Server::start(Behaviour::Silent);
    let mut config = check(HealthKind::Http(HttpProbe::get("/")), 1, 1);
    if let Some(health) = config.health.as_mut() {
        health.timeout = Duration::from_millis(200);
    }
    let pool = PoolState::new("silent", vec![silent.address], config);
    pool.check_now().await;
    let health = state(&pool, silent.address);
    assert_eq!(health.last_error.as_deref(), Some("no answer within 200ms"), "{health:?}");
    assert!(!health.healthy);

    // The endpoint's own port is closed; the check probes the monitor port, where a server answers.
    let monitor = Server::start(Behaviour::Accept);
    let endpoint = closed_port();
    let mut config = check(HealthKind::Tcp, 1, 1);
    if let Some(health) = config.health.as_mut() {
        health.port = Some(monitor.address.port());
    }
    let pool = PoolState::new("monitor-port", vec![endpoint], config);
    pool.check_now().await;
    assert!(state(&pool, endpoint).healthy, "{:?}", state(&pool, endpoint));
    assert_eq!(monitor.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn checker_follows_updates_and_stops() {
    let dead = closed_port();
    let pool = PoolState::new("follow", vec![dead], BalanceConfig::default());
    let task = spawn_health_checks(Arc::clone(&pool));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(state(&pool, dead).healthy, "no check configured: up");

    pool.update(vec![dead], check(HealthKind::Tcp, 1, 1));
    wait_for(&pool, dead, false).await;
    // Removing the check brings every endpoint back at once.
    pool.update(vec![dead], BalanceConfig::default());
    assert!(state(&pool, dead).healthy);

    // The checker stops when the pool is dropped.
    drop(pool);
    let started = Instant::now();
    while !task.is_finished() {
        assert!(started.elapsed() < Duration::from_secs(10), "the checker outlived its pool");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // ... and when its handle is dropped: no more probes arrive.
    let server = Server::start(Behaviour::Accept);
    let pool = PoolState::new("stop", vec![server.address], check(HealthKind::Tcp, 1, 1));
    let task = spawn_health_checks(Arc::clone(&pool));
    let started = Instant::now();
    while server.accepted.load(Ordering::SeqCst) < 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "probes should arrive every 100ms");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(task);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let probes = server.accepted.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(server.accepted.load(Ordering::SeqCst), probes, "probes continued after the handle was dropped");
}

#[tokio::test]
async fn registry_follows_configurations_and_renders_metrics() {
    use portico_balance::{PoolRegistry, PoolSpec};
    let dead = closed_port();
    let live = Server::start(Behaviour::Accept);
    let registry = PoolRegistry::new();
    let spec = |name: &str, endpoints: Vec<SocketAddr>, config: BalanceConfig| PoolSpec {
        name: name.into(),
        endpoints: endpoints.into_iter().map(|e| (e, 1)).collect(),
        config,
    };
    let pools = registry.sync([
        spec("checked", vec![dead, live.address], check(HealthKind::Tcp, 1, 1)),
        spec("plain", vec![dead], BalanceConfig::default()),
    ]);
    assert_eq!(pools.len(), 2);
    let checked = Arc::clone(&pools["checked"]);
    wait_for(&checked, dead, false).await;
    assert!(state(&pools["plain"], dead).healthy, "no check: up");
    let guard = checked.pick(&RequestInfo { client_ip: [127, 0, 0, 1].into(), headers: &HeaderMap::new() });

    // The same pool in the next configuration keeps its state; a pool that left is dropped.
    let pools = registry.sync([spec("checked", vec![live.address, dead], check(HealthKind::Tcp, 1, 1))]);
    assert!(Arc::ptr_eq(&pools["checked"], &checked));
    assert!(!state(&checked, dead).healthy, "health kept across the swap");
    assert_eq!(state(&checked, live.address).in_flight, 1, "in-flight count kept");
    assert!(registry.get("plain").is_none());

    let metrics = registry.render_metrics();
    let line = format!("portico_endpoint_healthy{{pool=\"checked\",endpoint=\"{dead}\"}} 0");
    assert!(metrics.contains(&line), "{metrics}");
    let line = format!("portico_endpoint_in_flight{{pool=\"checked\",endpoint=\"{}\"}} 1", live.address);
    assert!(metrics.contains(&line), "{metrics}");
    drop(guard);
    let status = serde_json::to_value(registry.health()).expect("serialises");
    assert_eq!(status["checked"][1]["healthy"], false, "{status}");
}
