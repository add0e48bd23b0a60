//! Portico on Kubernetes (issue 6), against a real kube-apiserver and etcd (`scripts/kube-testenv.sh`), with
//! the identity of `charts/portico`'s ServiceAccount (its ClusterRole only, not admin):
//!
//! - the article's manifests rendered from `charts/testapp` (both flavours) are served, and Gateway, HTTPRoute,
//!   Ingress, GatewayClass and Certificate status is written as `kubectl get` shows it;
//! - a route created, changed, detached and deleted with kubectl is served (time measured and printed),
//!   changed, answered 404 and its status cleared;
//! - the API server stopped for 30 s: traffic keeps flowing on the last configuration, and Portico resyncs
//!   when it returns;
//! - two replicas: both serve; the leader is killed, the other takes the Lease and carries on with status
//!   and certificates.
//!
//! Everything runs inside a network namespace the test creates (`ip netns add`): the API server and etcd on
//! its loopback, the test applications on pod addresses 10.244.0.x (the API server refuses loopback
//! addresses in EndpointSlices), Portico on the article's VIPs. No packet leaves that namespace.
//!
//! Needs root (network namespaces) and the built test environment (`scripts/kube-testenv.sh build`). Without
//! them the test says why and passes, unless `PORTICO_REQUIRE_KUBE=1` (CI), where that is a failure.

mod common;

use common::{Portico, repo, request, tls_config};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set inside the network namespace, where the test body runs.
const INSIDE: &str = "PORTICO_KUBE_TEST_DIR";
const GATEWAY_VIP: &str = "127.0.0.10";
const INGRESS_VIP: &str = "127.0.0.11";
const HOST: &str = "app01-lab.avi.aclab.uk";
/// The article's HTTPRoute.
const ARTICLE_ROUTE: &str = "app01-aclab-nginx-httproute";
/// The four test applications' pod addresses (root, pink, blue, green).
const PODS: [&str; 4] = ["10.244.0.11", "10.244.0.12", "10.244.0.13", "10.244.0.14"];

#[test]
fn kubernetes_acceptance() {
    if let Some(dir) = std::env::var_os(INSIDE) {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        runtime.block_on(acceptance(PathBuf::from(dir)));
        return;
    }
    let required = std::env::var("PORTICO_REQUIRE_KUBE").is_ok_and(|v| v == "1");
    let skip = |why: String| {
        assert!(!required, "PORTICO_REQUIRE_KUBE=1 but {why}");
        eprintln!("SKIPPED kubernetes_acceptance: {why}");
    };
    let testenv = repo().join("scripts/kube-testenv.sh");
    let versions = Command::new(&testenv).arg("versions").output();
    let versions = versions.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    if !testenv_built(&versions) {
        return skip("the test environment is not built (scripts/kube-testenv.sh build)".into());
    }
    let netns = format!("portico-kube-{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &netns]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => return skip(format!("ip netns add failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
        Err(error) => return skip(format!("ip not found: {error}")),
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary");
    let status = Command::new("ip")
        .args(["netns", "exec", &netns])
        .arg(&exe)
        .args(["kubernetes_acceptance", "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, dir.path())
        .status();
    // The API server and etcd run in the background: stop them whatever happened (they are found by pid).
    let _ = Command::new(&testenv).arg("down").arg(dir.path().join("env")).stderr(Stdio::null()).status();
    let _ = Command::new("ip").args(["netns", "del", &netns]).status();
    let status = status.expect("run the test inside the network namespace");
    if !status.success() {
        let mut logs = vec![dir.path().join("env/logs/kube-apiserver.log")];
        for replica in ["replica-a", "replica-b"] {
            let found = std::fs::read_dir(dir.path().join(replica)).into_iter().flatten().flatten();
            logs.extend(found.map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "log")));
        }
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
            eprintln!("--- {} (last lines)\n{}", log.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
    }
    assert!(status.success(), "the acceptance test failed inside the network namespace {netns}");
}

/// Whether `kube-testenv.sh build` has run: `versions` prints each tool's binary (or directory) last.
fn testenv_built(versions: &str) -> bool {
    let path = |tool: &str| {
        versions.lines().find(|l| l.starts_with(tool)).and_then(|l| l.split_whitespace().last()).map(PathBuf::from)
    };
    let kube = path("kubernetes");
    kube.as_ref().is_some_and(|bin| bin.join("kube-apiserver").exists() && bin.join("kubectl").exists())
        && path("etcd").is_some_and(|etcd| etcd.exists())
        && path("helm").is_some_and(|helm| helm.exists())
}

/// The pinned kubectl and helm on the test API server.
struct Kube {
    testenv: PathBuf,
    dir: PathBuf,
    admin: PathBuf,
}

impl Kube {
    fn run(&self, tool: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
        let mut command = Command::new(&self.testenv);
        command.arg(tool).args(args).env("KUBECONFIG", &self.admin);
        command.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| e.to_string())?;
        if let Some(input) = input {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["--request-timeout=20s"];
        all.extend_from_slice(args);
        self.run("kubectl", &all, None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn apply(&self, yaml: &str) {
        self.run(
            "kubectl",
            &["--request-timeout=20s", "apply", "--server-side", "--field-manager=test", "-f", "-"],
            Some(yaml),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    fn helm_template(&self, args: &[&str]) -> String {
        let mut all = vec!["template", "--kube-version", "v1.34.4"];
        all.extend_from_slice(args);
        self.run("helm", &all, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The object as JSON (`Value::Null` when it does not exist).
    fn get(&self, resource: &str, namespace: &str, name: &str) -> serde_json::Value {
        let mut args = vec!["--request-timeout=20s", "get", resource, name, "-o", "json", "--ignore-not-found"];
        if !namespace.is_empty() {
            args.extend(["-n", namespace]);
        }
        let text = self.run("kubectl", &args, None).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `limit`; panics with `what` after that.
async fn eventually<T>(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return (value, start.elapsed());
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Blocking checks (kubectl) polled every 250 ms.
fn eventually_sync<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn condition(object: &serde_json::Value, pointer: &str, kind: &str) -> Option<String> {
    condition_field(object, pointer, kind, "status")
}

/// A field of the condition of type `kind` in the list at `pointer`.
fn condition_field(object: &serde_json::Value, pointer: &str, kind: &str, field: &str) -> Option<String> {
    object
        .pointer(pointer)?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c[field].as_str())
        .map(String::from)
}

fn vip(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("address")
}

async fn https_get(ip: &str, host: &str, path: &str) -> Result<common::Answer, String> {
    let tls = tls_config(&repo().join("examples/article/tls/root-ca.crt"), false);
    request(vip(ip, 443), host, "GET", path, &[], Some(tls)).await
}

async fn http_get(ip: &str, host: &str, path: &str) -> Result<common::Answer, String> {
    request(vip(ip, 80), host, "GET", path, &[], None).await
}

/// Acts as the cluster's LB provider (MetalLB, a cloud): gives a Service its external address.
fn give_load_balancer_address(kube: &Kube, namespace: &str, service: &str, ip: &str) {
    let patch = format!(r#"{{"status":{{"loadBalancer":{{"ingress":[{{"ip":"{ip}"}}]}}}}}}"#);
    let args = [
        "--request-timeout=20s",
        "patch",
        "service",
        service,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ];
    kube.run("kubectl", &args, None).unwrap_or_else(|e| panic!("{e}"));
}

/// The article Gateway's plain HTTP listener.
const HTTP_LISTENER: &str = "app01-aclab-nginx-http-listener";

/// An HTTPRoute on listener `section` of `gateway` that redirects to `target` (no backend needed).
fn redirect_route(name: &str, gateway: &str, section: &str, hostname: &str, target: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: dev}}\nspec:\n  parentRefs: [{{name: {gateway}, sectionName: {section}}}]\n  hostnames: [{hostname}]\n  rules:\n  - filters:\n    - type: RequestRedirect\n      requestRedirect: {{hostname: {target}, statusCode: 302}}\n"
    )
}

fn run_ok(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

async fn acceptance(dir: PathBuf) {
    // --- the namespace's network: loopback up, pod addresses on it -------------------------------------------
    run_ok("ip", &["link", "set", "lo", "up"]);
    for pod in PODS {
        run_ok("ip", &["addr", "add", &format!("{pod}/32"), "dev", "lo"]);
    }
    let kube = Kube {
        testenv: repo().join("scripts/kube-testenv.sh"),
        dir: dir.join("env"),
        admin: dir.join("env/admin.kubeconfig"),
    };
    let started = Instant::now();
    run_ok(kube.testenv.to_str().expect("path"), &["up", kube.dir.to_str().expect("path")]);
    eprintln!("API server up in {:?}", started.elapsed());

    // --- the test applications, as pods would run them ----------------------------------------------------------
    let tls = repo().join("examples/article/tls");
    let mut apps = Vec::new();
    for (pod, name) in PODS.iter().zip(["root", "pink", "blue", "green"]) {
        let config = portico_testapp::TestAppConfig {
            name: name.into(),
            http: Some(vip(pod, 8080)),
            https: Some(vip(pod, 8443)),
            // As in the team's deployment, the pods serve the application's certificate.
            tls_cert: Some(tls.join("app01-chain.crt")),
            tls_key: Some(tls.join("app01.key")),
        };
        apps.push(portico_testapp::start(config).await.expect("test application"));
    }

    // --- the platform, Portico's chart (its ClusterRole) and the article rendered from charts/testapp -----------
    for ns in ["dev", "dev-ingress", "cert-manager", "portico-system"] {
        kube.apply(&format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"));
    }
    let example = repo().join("examples/article");
    for file in [
        "common/clusterissuer.yaml",
        "common/issuer-secret.yaml",
        "httproute/gatewayclass.yaml",
        "ingress/ingressclass.yaml",
    ] {
        kube.apply(&std::fs::read_to_string(example.join(file)).expect("example file"));
    }
    let chart = repo().join("charts");
    let portico_chart = kube.helm_template(&[
        "portico",
        chart.join("portico").to_str().expect("path"),
        "-n",
        "portico-system",
        "--set",
        "controller.issueCertificates=true",
        "--set",
        "controller.manageGatewayServices=true",
        "--api-versions",
        "gateway.networking.k8s.io/v1/GatewayClass",
    ]);
    kube.apply(&portico_chart);
    let backend_ca = format!("reencrypt.destinationCA={}", tls.join("root-ca.crt").display());
    let mut endpoints = Vec::new();
    for (pod, colour) in PODS.iter().zip(["root", "pink", "blue", "green"]) {
        endpoints.push(format!("externalEndpoints.{colour}.address={pod}"));
        endpoints.push(format!("externalEndpoints.{colour}.port=8443"));
    }
    for (namespace, flavour) in [("dev", "httproute"), ("dev-ingress", "ingress")] {
        let values = chart.join(format!("testapp/ci/{flavour}-values.yaml"));
        let testenv_values = chart.join("testapp/ci/testenv-values.yaml");
        let chart_dir = chart.join("testapp");
        let mut args = vec![
            "app01",
            chart_dir.to_str().expect("path"),
            "-n",
            namespace,
            "-f",
            values.to_str().expect("path"),
            "-f",
            testenv_values.to_str().expect("path"),
        ];
        for set in &endpoints {
            args.extend(["--set", set.as_str()]);
        }
        // The CA that signs the test applications' certificates, for the re-encryption to verify them.
        args.extend(["--set-file", &backend_ca]);
        kube.apply(&kube.helm_template(&args));
    }
    let sa_kubeconfig = dir.join("portico.kubeconfig");
    run_ok(
        kube.testenv.to_str().expect("path"),
        &[
            "sa-kubeconfig",
            kube.dir.to_str().expect("path"),
            "portico-system",
            "portico",
            sa_kubeconfig.to_str().expect("path"),
        ],
    );

    // --- one replica: serves the article and writes status --------------------------------------------------------
    let sa = sa_kubeconfig.to_str().expect("path");
    let replica = |admin: u16, identity: &str| {
        let state = dir.join(identity);
        std::fs::create_dir_all(&state).expect("state dir");
        Portico::start_with_state(
            &[],
            admin,
            &[
                "--kubernetes",
                "--kubeconfig",
                sa,
                "--issue-certificates",
                "--ingress-address",
                INGRESS_VIP,
                "--leader-election-namespace",
                "portico-system",
                "--lease-duration",
                "4",
                "--identity",
                identity,
                "--reuse-port",
                "--gateway-services-namespace",
                "portico-system",
                "--gateway-service-selector",
                "app.kubernetes.io/name=portico",
            ],
            &state,
        )
    };
    let mut first = replica(20601, "replica-a");
    let (_, took) =
        eventually("the pink page through the Gateway (HTTPS, re-encrypted)", Duration::from_secs(30), async || {
            https_get(GATEWAY_VIP, HOST, "/pink").await.ok().filter(|a| a.status == 200 && a.body.contains("pink"))
        })
        .await;
    eprintln!("Gateway flavour serving {took:?} after Portico was ready");
    eventually("the blue page through the Ingress", Duration::from_secs(30), async || {
        https_get(INGRESS_VIP, HOST, "/blue").await.ok().filter(|a| a.status == 200 && a.body.contains("blue"))
    })
    .await;

    let gateway_name = "app01-aclab-nginx-gateway";
    let gateway = eventually_sync("Gateway status Programmed with the VIP", Duration::from_secs(20), || {
        let gateway = kube.get("gateways.gateway.networking.k8s.io", "dev", gateway_name);
        (condition(&gateway, "/status/conditions", "Programmed").as_deref() == Some("True")).then_some(gateway)
    });
    assert_eq!(condition(&gateway, "/status/conditions", "Accepted").as_deref(), Some("True"));
    assert_eq!(gateway.pointer("/status/addresses/0/value").and_then(|v| v.as_str()), Some(GATEWAY_VIP));
    let attached = |gateway: &serde_json::Value| -> i64 {
        gateway
            .pointer("/status/listeners")
            .and_then(|l| l.as_array())
            .map_or(0, |l| l.iter().filter_map(|l| l["attachedRoutes"].as_i64()).sum())
    };
    let attached_before = attached(&gateway);
    assert!(attached_before >= 1, "the listeners count the article's route: {gateway}");
    let route = kube.get("httproutes.gateway.networking.k8s.io", "dev", ARTICLE_ROUTE);
    assert_eq!(condition(&route, "/status/parents/0/conditions", "Accepted").as_deref(), Some("True"), "{route}");
    assert_eq!(condition(&route, "/status/parents/0/conditions", "ResolvedRefs").as_deref(), Some("True"), "{route}");
    assert_eq!(
        route.pointer("/status/parents/0/controllerName").and_then(|v| v.as_str()),
        Some("portico.dev/gateway-controller")
    );
    let class = kube.get("gatewayclasses.gateway.networking.k8s.io", "", "avi-lb");
    assert_eq!(condition(&class, "/status/conditions", "Accepted").as_deref(), Some("True"), "{class}");
    let features = class.pointer("/status/supportedFeatures").and_then(|f| f.as_array()).cloned().unwrap_or_default();
    assert!(features.iter().any(|f| f["name"] == "HTTPRoute"), "supportedFeatures lists HTTPRoute: {class}");
    let ingress = eventually_sync("Ingress status.loadBalancer", Duration::from_secs(20), || {
        let ingress = kube.get("ingresses.networking.k8s.io", "dev-ingress", "app01-aclab-nginx-ing");
        ingress.pointer("/status/loadBalancer/ingress/0/ip").is_some().then_some(ingress)
    });
    assert_eq!(ingress.pointer("/status/loadBalancer/ingress/0/ip").and_then(|v| v.as_str()), Some(INGRESS_VIP));
    // Portico issued the chart's Certificate from the team's ClusterIssuer: Secret and status on the API server.
    let certificate = eventually_sync("Certificate Ready", Duration::from_secs(20), || {
        let certificate = kube.get("certificates.cert-manager.io", "dev", "app01-aclab-nginx-cert");
        (condition(&certificate, "/status/conditions", "Ready").as_deref() == Some("True")).then_some(certificate)
    });
    let secret_name = certificate.pointer("/spec/secretName").and_then(|v| v.as_str()).expect("secretName").to_string();
    let secret = kube.get("secrets", "dev", &secret_name);
    assert_eq!(secret["type"], "kubernetes.io/tls", "{secret_name}");
    assert!(secret.pointer("/data/tls.crt").is_some() && secret.pointer("/data/tls.key").is_some());
    assert_eq!(
        secret.pointer("/metadata/annotations/cert-manager.io~1certificate-name").and_then(|v| v.as_str()),
        Some("app01-aclab-nginx-cert")
    );

    // --- routes changed with kubectl ----------------------------------------------------------------------------
    kube.apply(&redirect_route("extra", gateway_name, HTTP_LISTENER, "extra.aclab.uk", "one.example.org"));
    let applied = Instant::now();
    eventually("the new route", Duration::from_secs(10), async || {
        http_get(GATEWAY_VIP, "extra.aclab.uk", "/").await.ok().filter(|a| a.status == 302)
    })
    .await;
    let created_in = applied.elapsed();
    kube.apply(&redirect_route("extra", gateway_name, HTTP_LISTENER, "extra.aclab.uk", "two.example.org"));
    let applied = Instant::now();
    eventually("the changed route", Duration::from_secs(10), async || {
        http_get(GATEWAY_VIP, "extra.aclab.uk", "/")
            .await
            .ok()
            .filter(|a| a.header("location").contains("two.example.org"))
    })
    .await;
    let changed_in = applied.elapsed();
    eprintln!("FIGURE kubectl apply -> served: new HTTPRoute {created_in:?}, changed HTTPRoute {changed_in:?}");
    let parent_conditions = "/status/parents/0/conditions";
    let accepted = eventually_sync("the new route's status", Duration::from_secs(20), || {
        let route = kube.get("httproutes.gateway.networking.k8s.io", "dev", "extra");
        (condition(&route, parent_conditions, "Accepted").as_deref() == Some("True")).then_some(route)
    });
    let transition = |route: &serde_json::Value, kind: &str| {
        condition_field(route, parent_conditions, kind, "lastTransitionTime").expect("lastTransitionTime")
    };
    // Transition times have whole seconds: the edit below comes in a later second.
    std::thread::sleep(Duration::from_millis(1100));
    // A broken edit (an invalid regular expression): the status says so, the last good version keeps serving.
    let broken = redirect_route("extra", gateway_name, HTTP_LISTENER, "extra.aclab.uk", "two.example.org")
        .replace("  - filters:", "  - matches: [{path: {type: RegularExpression, value: \"/([\"}}]\n    filters:");
    kube.apply(&broken);
    let refused = eventually_sync("the broken route's status", Duration::from_secs(20), || {
        let route = kube.get("httproutes.gateway.networking.k8s.io", "dev", "extra");
        (condition(&route, parent_conditions, "Accepted").as_deref() == Some("False")).then_some(route)
    });
    // lastTransitionTime is when a condition changed status (Gateway API), not when Portico last wrote it.
    assert_ne!(transition(&refused, "Accepted"), transition(&accepted, "Accepted"), "{refused}");
    assert_eq!(
        condition(&refused, parent_conditions, "ResolvedRefs"),
        condition(&accepted, parent_conditions, "ResolvedRefs")
    );
    assert_eq!(transition(&refused, "ResolvedRefs"), transition(&accepted, "ResolvedRefs"), "{refused}");
    let answer = http_get(GATEWAY_VIP, "extra.aclab.uk", "/").await.expect("the last good version");
    assert!(answer.header("location").contains("two.example.org"), "the last good version serves: {answer:?}");
    // A parent entry of another controller survives Portico's writes (a merge patch would replace the list).
    kube.run(
        "kubectl",
        &[
            "--request-timeout=20s",
            "patch",
            "httproute",
            "extra",
            "-n",
            "dev",
            "--subresource=status",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/status/parents/-","value":{"parentRef":{"name":"elsewhere"},"controllerName":"example.com/other","conditions":[{"type":"Accepted","status":"True","reason":"Accepted","message":"","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}]"#,
        ],
        None,
    )
    .expect("another controller's status");
    // Detached (its parentRef now names a Gateway that does not exist): 404, and Portico's parent entry goes.
    kube.apply(&redirect_route("extra", "no-such-gateway", HTTP_LISTENER, "extra.aclab.uk", "two.example.org"));
    eventually("the detached route answers 404", Duration::from_secs(10), async || {
        http_get(GATEWAY_VIP, "extra.aclab.uk", "/").await.ok().filter(|a| a.status == 404)
    })
    .await;
    let route = eventually_sync("Portico's parent entry cleared", Duration::from_secs(20), || {
        let route = kube.get("httproutes.gateway.networking.k8s.io", "dev", "extra");
        let parents = route.pointer("/status/parents").and_then(|p| p.as_array()).cloned().unwrap_or_default();
        parents.iter().all(|p| p["controllerName"] != "portico.dev/gateway-controller").then_some(route)
    });
    let parents = route.pointer("/status/parents").and_then(|p| p.as_array()).cloned().unwrap_or_default();
    assert_eq!(parents.len(), 1, "the other controller's entry is kept: {route}");
    assert_eq!(parents[0]["controllerName"], "example.com/other");
    // Re-attached, then deleted: 404 and the Gateway counts one route less again.
    kube.apply(&redirect_route("extra", gateway_name, HTTP_LISTENER, "extra.aclab.uk", "two.example.org"));
    eventually("the re-attached route", Duration::from_secs(10), async || {
        http_get(GATEWAY_VIP, "extra.aclab.uk", "/").await.ok().filter(|a| a.status == 302)
    })
    .await;
    eventually_sync("attachedRoutes counts the extra route", Duration::from_secs(20), || {
        let gateway = kube.get("gateways.gateway.networking.k8s.io", "dev", gateway_name);
        (attached(&gateway) == attached_before + 1).then_some(())
    });
    kube.kubectl(&["delete", "httproute", "extra", "-n", "dev"]);
    eventually("the deleted route answers 404", Duration::from_secs(10), async || {
        http_get(GATEWAY_VIP, "extra.aclab.uk", "/").await.ok().filter(|a| a.status == 404)
    })
    .await;
    eventually_sync("attachedRoutes back after the delete", Duration::from_secs(20), || {
        let gateway = kube.get("gateways.gateway.networking.k8s.io", "dev", gateway_name);
        (attached(&gateway) == attached_before).then_some(())
    });

    // --- a Gateway without an address: Portico makes it a LoadBalancer Service --------------------------------
    kube.apply(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: managed, namespace: dev}\nspec:\n  gatewayClassName: avi-lb\n  listeners: [{name: web, port: 8080, protocol: HTTP}]\n",
    );
    kube.apply(&redirect_route("on-managed", "managed", "web", "managed.aclab.uk", "five.example.org"));
    let managed_service = |kube: &Kube| -> serde_json::Value {
        let args = [
            "--request-timeout=20s",
            "get",
            "services",
            "-n",
            "portico-system",
            "-l",
            "portico.dev/gateway-name=managed",
            "-o",
            "json",
        ];
        let list: serde_json::Value =
            serde_json::from_str(&kube.run("kubectl", &args, None).unwrap_or_default()).unwrap_or_default();
        list.pointer("/items/0").cloned().unwrap_or(serde_json::Value::Null)
    };
    let service = eventually_sync("the Gateway's LoadBalancer Service", Duration::from_secs(20), || {
        let service = managed_service(&kube);
        (!service.is_null()).then_some(service)
    });
    let service_name = service.pointer("/metadata/name").and_then(|v| v.as_str()).expect("name").to_string();
    assert!(service_name.starts_with("portico-dev-managed-"), "{service_name}");
    assert_eq!(service.pointer("/spec/type").and_then(|v| v.as_str()), Some("LoadBalancer"), "{service}");
    assert_eq!(service.pointer("/spec/ports/0/port").and_then(|v| v.as_i64()), Some(8080), "{service}");
    assert_eq!(service.pointer("/spec/selector/app.kubernetes.io~1name").and_then(|v| v.as_str()), Some("portico"));
    let gateway = kube.get("gateways.gateway.networking.k8s.io", "dev", "managed");
    assert_eq!(
        condition(&gateway, "/status/conditions", "Programmed").as_deref(),
        Some("False"),
        "no address yet: {gateway}"
    );
    give_load_balancer_address(&kube, "portico-system", &service_name, "127.0.0.20");
    eventually("the managed Gateway on its load-balancer address", Duration::from_secs(10), async || {
        request(vip("127.0.0.20", 8080), "managed.aclab.uk", "GET", "/", &[], None)
            .await
            .ok()
            .filter(|a| a.status == 302)
    })
    .await;
    eventually_sync("the managed Gateway's status address", Duration::from_secs(20), || {
        let gateway = kube.get("gateways.gateway.networking.k8s.io", "dev", "managed");
        (gateway.pointer("/status/addresses/0/value").and_then(|v| v.as_str()) == Some("127.0.0.20")
            && condition(&gateway, "/status/conditions", "Programmed").as_deref() == Some("True"))
        .then_some(())
    });
    kube.kubectl(&["delete", "gateway", "managed", "-n", "dev"]);
    eventually_sync("the Service of the deleted Gateway is deleted", Duration::from_secs(20), || {
        kube.get("services", "portico-system", &service_name).is_null().then_some(())
    });

    // --- the API server stopped for 30 s ------------------------------------------------------------------------
    let dir_arg = kube.dir.to_str().expect("path");
    run_ok(kube.testenv.to_str().expect("path"), &["stop-apiserver", dir_arg]);
    let outage = Instant::now();
    let (mut served, mut failed) = (0, Vec::new());
    while outage.elapsed() < Duration::from_secs(30) {
        match https_get(GATEWAY_VIP, HOST, "/green").await {
            Ok(answer) if answer.status == 200 && answer.body.contains("green") => served += 1,
            Ok(answer) => failed.push(format!("{} {}", answer.status, answer.body)),
            Err(error) => failed.push(error),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failed.is_empty(), "requests failed while the API server was down: {failed:?}");
    assert!(served > 50, "only {served} requests in 30 s");
    run_ok(kube.testenv.to_str().expect("path"), &["start-apiserver", dir_arg]);
    let back = Instant::now();
    kube.apply(&redirect_route("after-outage", gateway_name, HTTP_LISTENER, "after.aclab.uk", "three.example.org"));
    let (_, resynced) = eventually("a route created after the outage", Duration::from_secs(90), async || {
        http_get(GATEWAY_VIP, "after.aclab.uk", "/").await.ok().filter(|a| a.status == 302)
    })
    .await;
    eprintln!(
        "FIGURE API server down 30 s: {served} requests served, 0 failed; resynced {resynced:?} after a change ({:?} after restart)",
        back.elapsed()
    );

    // --- two replicas, one leader ---------------------------------------------------------------------------------
    let second = replica(20602, "replica-b");
    let holder = |kube: &Kube| -> String {
        let lease = kube.get("leases.coordination.k8s.io", "portico-system", "portico");
        lease.pointer("/spec/holderIdentity").and_then(|v| v.as_str()).unwrap_or("").to_string()
    };
    assert!(holder(&kube).starts_with("replica-a_"), "the first replica leads: {}", holder(&kube));
    // Both serve: SO_REUSEPORT spreads new connections over the two processes.
    let requests_of = |portico: &Portico| -> u64 {
        portico
            .admin_get("/metrics")
            .lines()
            .filter(|l| l.starts_with("portico_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let second_before = requests_of(&second);
    for _ in 0..40 {
        let answer = https_get(GATEWAY_VIP, HOST, "/pink").await.expect("request with two replicas");
        assert_eq!(answer.status, 200);
    }
    assert!(requests_of(&second) > second_before, "the second replica serves traffic too");
    let version = |kube: &Kube, kind: &str, namespace: &str, name: &str| -> String {
        let object = kube.get(kind, namespace, name);
        object.pointer("/metadata/resourceVersion").and_then(|v| v.as_str()).unwrap_or_default().to_string()
    };
    let article_route_version = version(&kube, "httproutes.gateway.networking.k8s.io", "dev", ARTICLE_ROUTE);
    let class_version = version(&kube, "gatewayclasses.gateway.networking.k8s.io", "", "avi-lb");
    // Kill the leader (no graceful release): the other takes the Lease once it expires.
    let _ = first.child.kill();
    let _ = first.child.wait();
    let killed = Instant::now();
    for _ in 0..20 {
        let answer = https_get(GATEWAY_VIP, HOST, "/pink").await.expect("request after the leader was killed");
        assert_eq!(answer.status, 200);
    }
    let new_holder = eventually_sync("the second replica takes the Lease", Duration::from_secs(30), || {
        let holder = holder(&kube);
        holder.starts_with("replica-b_").then_some(holder)
    });
    eprintln!(
        "FIGURE leader failover: {new_holder} holds the Lease {:?} after the leader was killed (lease 4 s)",
        killed.elapsed()
    );
    // The new leader issues a new Certificate and writes route status.
    kube.apply(
        "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: failover, namespace: dev}\nspec:\n  secretName: failover-tls\n  commonName: failover.aclab.uk\n  dnsNames: [failover.aclab.uk]\n  issuerRef: {name: tanzu-sub01-clusterissuer, kind: ClusterIssuer, group: cert-manager.io}\n",
    );
    kube.apply(&redirect_route("after-failover", gateway_name, HTTP_LISTENER, "failover.aclab.uk", "four.example.org"));
    eventually_sync("the new leader issues the Certificate", Duration::from_secs(30), || {
        let certificate = kube.get("certificates.cert-manager.io", "dev", "failover");
        let secret = kube.get("secrets", "dev", "failover-tls");
        (condition(&certificate, "/status/conditions", "Ready").as_deref() == Some("True")
            && secret.pointer("/data/tls.crt").is_some())
        .then_some(())
    });
    eventually_sync("the new leader writes route status", Duration::from_secs(30), || {
        let route = kube.get("httproutes.gateway.networking.k8s.io", "dev", "after-failover");
        (condition(&route, "/status/parents/0/conditions", "Accepted").as_deref() == Some("True")).then_some(())
    });
    let answer = http_get(GATEWAY_VIP, "failover.aclab.uk", "/").await.expect("route after failover");
    assert_eq!(answer.status, 302);
    // The new leader wrote no status that was already right: the article's route and the GatewayClass keep
    // their versions. (Statuses are written in order of kind and name, a pass at a time: once a route named
    // to come last has its status, the pass that followed the change of leader is over.)
    kube.apply(&redirect_route("zz-last", gateway_name, HTTP_LISTENER, "last.aclab.uk", "four.example.org"));
    eventually_sync("the new leader writes the status of a route created last", Duration::from_secs(30), || {
        let route = kube.get("httproutes.gateway.networking.k8s.io", "dev", "zz-last");
        (condition(&route, "/status/parents/0/conditions", "Accepted").as_deref() == Some("True")).then_some(())
    });
    assert_eq!(
        version(&kube, "httproutes.gateway.networking.k8s.io", "dev", ARTICLE_ROUTE),
        article_route_version,
        "the new leader rewrote the article route's status, which was already right"
    );
    assert_eq!(
        version(&kube, "gatewayclasses.gateway.networking.k8s.io", "", "avi-lb"),
        class_version,
        "the new leader rewrote the GatewayClass's status, which was already right"
    );
    // A leader that stops gracefully hands the Lease back at once, so the next one need not wait for it to
    // expire: no holder any more.
    let mut second = second;
    run_ok("kill", &["-TERM", &second.child.id().to_string()]);
    eventually_sync("the Lease released on SIGTERM", Duration::from_secs(10), || {
        // The Lease still exists (a failed read would also show no holder) and names none.
        let lease = kube.get("leases.coordination.k8s.io", "portico-system", "portico");
        (!lease.is_null() && lease.pointer("/spec/holderIdentity").is_none()).then_some(())
    });
    let _ = second.child.wait();
    drop(apps);
}
