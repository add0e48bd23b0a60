//! Process lifecycle: SIGTERM stops accepting, lets open connections finish, and exits cleanly.

mod common;

use common::{Backends, Portico, http_gateway, service};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits() {
    let backends = Backends::start(&["a"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = http_gateway("127.0.0.61", 8080)
        + &service("a", backends.http_port(0))
        + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\nspec:\n  parentRefs: [{name: gw}]\n  rules:\n  - backendRefs: [{name: a, port: 80}]\n";
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    let mut portico = Portico::start(&[dir.path()], 19961, &["--drain-seconds", "5"]);
    let vip: SocketAddr = "127.0.0.61:8080".parse().expect("vip");
    assert_eq!(common::get(vip, "any.example", "/green").await.status, 200);

    // An idle keep-alive connection is open while the signal arrives: it must not hold the exit back.
    let idle = std::net::TcpStream::connect(vip).expect("connect");
    let pid = portico.child.id();
    let killed = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().expect("kill");
    assert!(killed.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(status) = portico.child.try_wait().expect("wait") {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "portico did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit:?}");
    assert!(std::net::TcpStream::connect(vip).is_err(), "the listener is closed after exit");
    drop(idle);
    let log = std::fs::read_to_string(&portico.log).unwrap_or_default();
    assert!(log.contains("draining") && log.contains("stopped"), "{log}");
}
