//! Configuration changes under load: no request may fail, on kept-alive connections or new ones, and a
//! broken edit must not disturb the routes it does not touch (nor the one it breaks: its last good version
//! stays in force).

mod common;

use bytes::Bytes;
use common::{Backends, Portico, http_gateway, service, write_file};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Clients that each keep one HTTP/1.1 connection open and send requests in a loop, counting outcomes.
struct Load {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(vip: SocketAddr, host: &'static str, path: &'static str, clients: usize, limit: usize) -> Load {
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|client| {
                let (ok, failed, failures, stop) = (ok.clone(), failed.clone(), failures.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut sender = None;
                    let mut sent = 0usize;
                    while !stop.load(Ordering::Relaxed)
                        && ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < limit
                    {
                        // Every 25th request of a client opens a new connection, the others reuse theirs.
                        if sender.is_none() || sent.is_multiple_of(25) {
                            let Ok(stream) = tokio::net::TcpStream::connect(vip).await else {
                                failed.fetch_add(1, Ordering::Relaxed);
                                continue;
                            };
                            let Ok((s, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                            else {
                                failed.fetch_add(1, Ordering::Relaxed);
                                continue;
                            };
                            tokio::spawn(connection);
                            sender = Some(s);
                        }
                        sent += 1;
                        let Some(s) = sender.as_mut() else { continue };
                        let request =
                            http::Request::get(path).header("host", host).body(Empty::<Bytes>::new()).expect("request");
                        let outcome = match s.send_request(request).await {
                            Ok(response) => {
                                let status = response.status();
                                let _ = response.into_body().collect().await;
                                if status == 200 { Ok(()) } else { Err(format!("client {client}: status {status}")) }
                            }
                            Err(e) => Err(format!("client {client}: {e}")),
                        };
                        match outcome {
                            Ok(()) => drop(ok.fetch_add(1, Ordering::Relaxed)),
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut f) = failures.lock() {
                                    f.push(e);
                                }
                                sender = None;
                            }
                        }
                    }
                })
            })
            .collect();
        Load { ok, failed, failures, stop, tasks }
    }

    async fn finish(self) -> (usize, usize, Vec<String>) {
        for task in self.tasks {
            let _ = task.await;
        }
        let failures = self.failures.lock().map(|f| f.clone()).unwrap_or_default();
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), failures)
    }

    fn done(&self) -> usize {
        self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

fn changing_route(version: usize, broken: bool) -> String {
    let regex = if broken { "/v[0-9+" } else { "/v[0-9]+" };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: changing\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [change.example]\n  rules:\n  - matches: [{{path: {{type: RegularExpression, value: \"{regex}\"}}}}]\n    backendRefs: [{{name: b, port: 80}}]\n  - filters:\n    - type: ResponseHeaderModifier\n      responseHeaderModifier: {{set: [{{name: x-version, value: \"{version}\"}}]}}\n    backendRefs: [{{name: b, port: 80}}]\n"
    )
}

fn stable_config(backends: &Backends, vip: &str) -> String {
    http_gateway(vip, 8080)
        + &service("a", backends.http_port(0))
        + &service("b", backends.http_port(1))
        + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: stable\nspec:\n  parentRefs: [{name: gw}]\n  hostnames: [stable.example]\n  rules:\n  - backendRefs: [{name: a, port: 80}]\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_no_request() {
    let backends = Backends::start(&["a", "b"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_file(dir.path(), "base.yaml", &stable_config(&backends, "127.0.0.51"));
    write_file(dir.path(), "changing.yaml", &changing_route(0, false));
    let portico = Portico::start(&[dir.path()], 19951, &[]);
    let vip: SocketAddr = "127.0.0.51:8080".parse().expect("vip");

    let total = 2000;
    let load = Load::start(vip, "change.example", "/pink", 8, total);
    let mut generation = portico.generation();
    for version in 1..=20 {
        // Spread the reloads over the run.
        while load.done() < version * total / 22 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        write_file(dir.path(), "changing.yaml", &changing_route(version, false));
        generation = portico.wait_generation(generation);
    }
    let (ok, failed, failures) = load.finish().await;
    assert_eq!(failed, 0, "failed requests during reloads: {:?}", &failures[..failures.len().min(5)]);
    // Clients check the limit before sending, so a few in flight may pass it.
    assert!(ok >= total, "{ok} requests succeeded, expected {total}");
    let last = common::get(vip, "change.example", "/pink").await;
    assert_eq!(last.header("x-version"), "20", "the last configuration is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_edits_under_load_keep_the_last_good_config() {
    let backends = Backends::start(&["a", "b"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_file(dir.path(), "base.yaml", &stable_config(&backends, "127.0.0.52"));
    write_file(dir.path(), "changing.yaml", &changing_route(1, false));
    let portico = Portico::start(&[dir.path()], 19952, &[]);
    let vip: SocketAddr = "127.0.0.52:8080".parse().expect("vip");

    let stable = Load::start(vip, "stable.example", "/blue", 4, usize::MAX);
    let mut generation = portico.generation();

    // 1. Invalid YAML in the changing route's file: the route keeps serving its last good version.
    write_file(
        dir.path(),
        "changing.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: [oops\n",
    );
    generation = portico.wait_generation(generation);
    let status = portico.admin_get("/api/status");
    assert!(status.contains("changing.yaml:3: invalid YAML"), "{status}");
    let answer = common::get(vip, "change.example", "/pink").await;
    assert_eq!((answer.status, answer.header("x-version")), (200, "1"), "last good version in force");

    // 2. Valid YAML, invalid regex: the status names the field; the last good version still serves.
    write_file(dir.path(), "changing.yaml", &changing_route(2, true));
    generation = portico.wait_generation(generation);
    let status: serde_json::Value = serde_json::from_str(&portico.admin_get("/api/status")).expect("status");
    let text = status.to_string();
    assert!(text.contains("spec.rules[0].matches[0].path.value: invalid regular expression"), "{text}");
    assert_eq!(status["keptLastGood"][0], "HTTPRoute/default/changing");
    let answer = common::get(vip, "change.example", "/pink").await;
    assert_eq!(answer.header("x-version"), "1", "the broken version is not served");

    // 3. Fixed: the new version serves.
    write_file(dir.path(), "changing.yaml", &changing_route(3, false));
    portico.wait_generation(generation);
    assert_eq!(common::get(vip, "change.example", "/pink").await.header("x-version"), "3");

    stable.stop.store(true, Ordering::Relaxed);
    let (ok, failed, failures) = stable.finish().await;
    assert!(ok > 0, "the load ran");
    assert_eq!(failed, 0, "untouched route failed: {:?}", &failures[..failures.len().min(5)]);
}
