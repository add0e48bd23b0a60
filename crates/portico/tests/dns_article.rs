//! The article's DNS end to end, with the real `portico` binary and real BIND 9 on loopback addresses, port 53:
//!
//! - BIND as the corporate DNS, authoritative for `aclab.uk`, with the delegation `avi.aclab.uk NS
//!   avi-ns01.aclab.uk.` and its glue pointing at Portico's DNS, and dynamic updates allowed for a TSIG key;
//! - a second BIND as the resolver clients ask;
//! - Portico serving one flavour of `examples/article` with `--config-file` (the example's `portico.yaml`, with
//!   this test's addresses and key): it answers `avi.aclab.uk` and `aclab.uk` and publishes the alias into BIND.
//!
//! A client resolving `application01.aclab.uk` through the resolver gets the CNAME and then the VIP from
//! Portico's DNS, and the HTTPS request to that VIP (SNI `application01.aclab.uk`, verified against the root CA)
//! returns the pink page. BIND's zone holds exactly the CNAME and the ownership TXT in external-dns's format;
//! deleting the route removes both; a record owned by another owner id is never touched and shows as a conflict
//! in `/api/status`.
//!
//! Skips with a loud message only when BIND cannot be installed or started here (not root); set
//! `PORTICO_REQUIRE_DNS_TOOLS=1` to make that a failure.

#[path = "../../dns/tests/common/mod.rs"]
mod bind;
mod common;

use bind::{Bind, KEY_OTHER, KEY_SHA256, aclab_zone, bind_or_skip, shout};
use common::{Backends, Portico, repo, request, tls_config};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const OWNER_VALUE_PREFIX: &str =
    "heritage=external-dns,external-dns/owner=region01-aclab-vks-01,external-dns/resource=";
/// A record of another cluster, as its external-dns wrote it.
const OTHER_OWNER_RECORDS: &str = "application02 300 IN CNAME elsewhere.example.net.\n\
    region01-aclab-vks-01-cname.application02 300 IN TXT \"heritage=external-dns,external-dns/owner=region02-aclab-vks-07,external-dns/resource=httproute/prod/app02\"\n";

/// Addresses of one test: the corporate BIND, the resolver, Portico's DNS, the VIP, the admin port.
struct Addresses {
    corporate: SocketAddr,
    resolver: SocketAddr,
    portico_dns: SocketAddr,
    vip: &'static str,
    admin: u16,
}

/// `examples/article` (common + one flavour) in a temp dir: EndpointSlices pointing at the test applications,
/// the VIP moved; plus an HTTPRoute that wants `application02.aclab.uk`, a name another owner holds.
fn example(flavour: &str, backends: &Backends, vip: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    common::copy_example(dir.path(), &["common", flavour], backends, vip, &|text| text);
    let other = if flavour == "httproute" {
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: app02\n  namespace: dev\n  annotations:\n    external-dns.alpha.kubernetes.io/hostname: application02.aclab.uk\n    external-dns.alpha.kubernetes.io/gateway-hostname-source: annotation-only\nspec:\n  parentRefs:\n  - name: app01-aclab-nginx-gateway\n    sectionName: app01-aclab-nginx-https-listener\n  hostnames: [app02-lab.avi.aclab.uk]\n  rules:\n  - backendRefs: [{name: app01-aclab-nginx-root-svc, port: 443}]\n"
    } else {
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: app02\n  namespace: dev\n  annotations:\n    external-dns.alpha.kubernetes.io/hostname: application02.aclab.uk\n    external-dns.alpha.kubernetes.io/ingress-hostname-source: annotation-only\nspec:\n  ingressClassName: avi-lb\n  rules:\n  - host: app02-lab.avi.aclab.uk\n    http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend: {service: {name: app01-aclab-nginx-root-svc, port: {number: 443}}}\n"
    };
    std::fs::write(dir.path().join(flavour).join("app02.yaml"), other).expect("write app02");
    dir
}

/// The example's `portico.yaml` with this test's addresses, a 5 s interval and the test BIND's key (written as
/// a BIND `key` statement, as tsig-keygen would).
fn portico_yaml(dir: &Path, addresses: &Addresses, secret: &str) -> PathBuf {
    let mut text = std::fs::read_to_string(repo().join("examples/article/portico.yaml")).expect("example portico.yaml");
    for (from, to) in [
        ("127.0.0.153:53", addresses.portico_dns.to_string()),
        ("127.0.0.152:53", addresses.corporate.to_string()),
        ("interval: 30s", "interval: 5s".to_string()),
    ] {
        assert!(text.contains(from), "examples/article/portico.yaml no longer has {from}");
        text = text.replace(from, &to);
    }
    std::fs::write(
        dir.join("tsig.key"),
        format!("key \"portico-key\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{secret}\";\n}};\n"),
    )
    .expect("key file");
    let path = dir.join("portico.yaml");
    std::fs::write(&path, text).expect("portico.yaml");
    path
}

fn dig_path(test: &str) -> Option<PathBuf> {
    bind::tool("dig", test)
}

/// `dig @server name +noall +answer` as `(type, value)` pairs.
fn resolve(dig: &Path, server: SocketAddr, name: &str) -> Vec<(String, String)> {
    let at = format!("@{}", server.ip());
    let out = bind::dig(dig, &[&at, name, "+noall", "+answer", "+time=2", "+tries=1"]);
    out.lines()
        .filter_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            (parts.len() >= 5).then(|| (parts[3].to_string(), parts[4].to_string()))
        })
        .collect()
}

/// The status line of `dig @server name` (`NOERROR`, `NXDOMAIN`, ...).
fn rcode(dig: &Path, server: SocketAddr, name: &str) -> String {
    let at = format!("@{}", server.ip());
    let out = bind::dig(dig, &[&at, name, "+time=2", "+tries=1"]);
    out.lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// The corporate zone by signed AXFR, without the base records the zone file started with.
fn published(dig: &Path, corporate: SocketAddr, portico_dns: IpAddr) -> BTreeSet<String> {
    let key = format!("hmac-sha256:portico-key:{KEY_SHA256}");
    let base: BTreeSet<String> = [
        "aclab.uk. 300 NS ns1.aclab.uk.".to_string(),
        format!("ns1.aclab.uk. 300 A {}", corporate.ip()),
        "avi.aclab.uk. 300 NS avi-ns01.aclab.uk.".to_string(),
        format!("avi-ns01.aclab.uk. 300 A {portico_dns}"),
    ]
    .into_iter()
    .collect();
    let all = bind::dig_axfr(dig, corporate, &key);
    assert!(base.is_subset(&all), "the delegation and the zone's own records are never touched: {all:#?}");
    all.difference(&base).cloned().collect()
}

fn other_owner_lines() -> BTreeSet<String> {
    [
        "application02.aclab.uk. 300 CNAME elsewhere.example.net.".to_string(),
        "region01-aclab-vks-01-cname.application02.aclab.uk. 300 TXT \"heritage=external-dns,external-dns/owner=region02-aclab-vks-07,external-dns/resource=httproute/prod/app02\"".to_string(),
    ]
    .into_iter()
    .collect()
}

/// Polls `check` every 200 ms for up to 30 s; panics with `what` and the last observation.
async fn wait_for<T: std::fmt::Debug>(what: &str, mut check: impl FnMut() -> (bool, T)) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (done, seen) = check();
        if done {
            return seen;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last seen: {seen:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn portico_cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico")).args(args).output().expect("run portico");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn sync_record<'a>(status: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    status["dns"]["sync"]["records"].as_array()?.iter().find(|r| r["name"] == name)
}

/// The whole chain for one flavour; `resource` is the external-dns resource of the alias.
async fn article_chain(test: &str, flavour: &str, resource: &str, route_file: &str, addresses: Addresses) {
    let zone = aclab_zone(addresses.corporate.ip(), addresses.portico_dns.ip(), OTHER_OWNER_RECORDS);
    let Some(corporate) = bind_or_skip(test, |named| Bind::primary(named, addresses.corporate, &zone)) else {
        return;
    };
    let Some(_resolver) =
        bind_or_skip(test, |named| Bind::resolver(named, addresses.resolver, addresses.corporate.ip()))
    else {
        return;
    };
    let dig = dig_path(test).expect("dig comes with BIND (bind9-dnsutils)");
    assert_eq!(published(&dig, corporate.addr, addresses.portico_dns.ip()), other_owner_lines());

    let backends = Backends::start(&["root", "pink", "blue", "green"]).await;
    let dir = example(flavour, &backends, addresses.vip);
    let config_file = portico_yaml(dir.path(), &addresses, KEY_SHA256);
    let common_dir = dir.path().join("common");
    let flavour_dir = dir.path().join(flavour);
    let config_file_arg = config_file.display().to_string();
    let mut source_args: Vec<String> = vec![
        "--config".into(),
        common_dir.display().to_string(),
        "--config".into(),
        flavour_dir.display().to_string(),
        "--default-namespace".into(),
        "dev".into(),
        "--config-file".into(),
        config_file.display().to_string(),
    ];
    if flavour == "ingress" {
        source_args.extend(["--ingress-address".into(), addresses.vip.into()]);
    }
    let source: Vec<&str> = source_args.iter().map(String::as_str).collect();

    // `portico dns records`: what Portico's DNS will answer.
    let (ok, records) = portico_cli(&[&["dns", "records"], source.as_slice()].concat());
    assert!(ok, "{records}");
    shout(&format!("portico dns records ({flavour}):\n{records}"));
    for name in ["app01-lab.avi.aclab.uk", "application01.aclab.uk", "app02-lab.avi.aclab.uk"] {
        let line = format!("{name}. 30 A {} ; {resource}", addresses.vip);
        let line = if name.starts_with("app02") { line.replace("app01-aclab-nginx-ing", "app02") } else { line };
        let line = if name.starts_with("app02") { line.replace("app01-aclab-nginx-httproute", "app02") } else { line };
        assert!(records.contains(&line), "{line:?} missing:\n{records}");
    }
    // `portico dns plan` before Portico runs: the alias is to be created, the other owner's name is a conflict.
    let (ok, plan) = portico_cli(&[&["dns", "plan"], source.as_slice()].concat());
    assert!(ok, "{plan}");
    shout(&format!("portico dns plan ({flavour}):\n{plan}"));
    assert!(plan.contains(&format!("+ create application01.aclab.uk CNAME ({resource})")), "{plan}");
    assert!(plan.contains("! conflict application02.aclab.uk CNAME"), "{plan}");
    assert!(plan.contains("owned by region02-aclab-vks-07"), "{plan}");
    assert_eq!(
        published(&dig, corporate.addr, addresses.portico_dns.ip()),
        other_owner_lines(),
        "a plan changes nothing"
    );

    let mut run_args = vec!["--config-file", config_file_arg.as_str()];
    if flavour == "ingress" {
        run_args.extend(["--ingress-address", addresses.vip]);
    }
    run_args.extend(["--default-namespace", "dev"]);
    let portico = Portico::start(&[&common_dir, &flavour_dir], addresses.admin, &run_args);

    // The client's view: the CNAME from the corporate DNS, then the VIP from Portico's DNS via the delegation.
    let answer = wait_for("application01.aclab.uk to resolve through the resolver", || {
        let answer = resolve(&dig, addresses.resolver, "application01.aclab.uk");
        let done = answer.contains(&("CNAME".into(), "app01-lab.avi.aclab.uk.".into()))
            && answer.iter().any(|(kind, _)| kind == "A");
        (done, answer)
    })
    .await;
    assert_eq!(
        answer,
        vec![
            ("CNAME".to_string(), "app01-lab.avi.aclab.uk.".to_string()),
            ("A".to_string(), addresses.vip.to_string())
        ],
        "the alias, then the VIP"
    );
    let vip: IpAddr = answer[1].1.parse().expect("an address");

    // And the browser's: HTTPS to the resolved VIP with SNI and Host application01.aclab.uk, root CA only.
    let ca = repo().join("examples/article/tls/root-ca.crt");
    let page =
        request(SocketAddr::new(vip, 443), "application01.aclab.uk", "GET", "/pink", &[], Some(tls_config(&ca, false)))
            .await
            .expect("HTTPS request to the resolved VIP");
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("<title>pink</title>"), "not the pink page: {}", page.body);

    // BIND's zone: exactly the CNAME and its ownership TXT, in external-dns's format, beside the other owner's.
    let mut expected = other_owner_lines();
    expected.insert("application01.aclab.uk. 10 CNAME app01-lab.avi.aclab.uk.".to_string());
    expected.insert(format!(
        "region01-aclab-vks-01-cname.application01.aclab.uk. 10 TXT \"{OWNER_VALUE_PREFIX}{resource}\""
    ));
    assert_eq!(published(&dig, corporate.addr, addresses.portico_dns.ip()), expected);

    // /api/status: the alias published, the other owner's name a conflict, left alone.
    let status: serde_json::Value = wait_for("the sync's status", || {
        let status: serde_json::Value = serde_json::from_str(&portico.admin_get("/api/status")).unwrap_or_default();
        let done = sync_record(&status, "application01.aclab.uk").is_some_and(|r| r["state"] == "published");
        (done, status["dns"].clone())
    })
    .await;
    let status = serde_json::json!({ "dns": status });
    let alias = sync_record(&status, "application01.aclab.uk").expect("alias status");
    assert_eq!(alias["type"], "CNAME");
    assert_eq!(alias["resource"], resource);
    let conflict = sync_record(&status, "application02.aclab.uk").expect("conflict status");
    assert_eq!(conflict["state"], "conflict", "{conflict}");
    assert!(conflict["detail"].as_str().unwrap_or("").contains("owned by region02-aclab-vks-07"), "{conflict}");
    assert!(status["dns"]["sync"]["error"].is_null(), "{status:#}");
    let zones = status["dns"]["server"]["zones"].as_array().expect("served zones");
    assert!(zones.iter().any(|z| z["origin"] == "avi.aclab.uk"), "{status:#}");

    // The secret never shows: not in the log, /api/status or /api/config.
    let config = portico.admin_get("/api/config");
    let log = std::fs::read_to_string(&portico.log).unwrap_or_default();
    for (what, text) in [("log", &log), ("/api/status", &status.to_string()), ("/api/config", &config)] {
        assert!(!text.contains(KEY_SHA256), "the TSIG secret leaked into the {what}");
    }

    // The plan against the live zone: nothing to change.
    let (ok, plan) = portico_cli(&[&["dns", "plan"], source.as_slice()].concat());
    assert!(ok && plan.contains("0 change(s)"), "{plan}");

    // The route is deleted: both records go, the other owner's stay; the names stop resolving.
    let generation = portico.generation();
    std::fs::remove_file(flavour_dir.join(route_file)).expect("delete the route");
    portico.wait_generation(generation);
    wait_for("the alias and its TXT to be removed from BIND", || {
        let zone = published(&dig, corporate.addr, addresses.portico_dns.ip());
        (zone == other_owner_lines(), zone)
    })
    .await;
    wait_for("application01.aclab.uk to stop resolving", || {
        let code = rcode(&dig, addresses.resolver, "application01.aclab.uk");
        (code == "NXDOMAIN", code)
    })
    .await;
    assert_eq!(rcode(&dig, addresses.portico_dns, "app01-lab.avi.aclab.uk"), "NXDOMAIN", "Portico's DNS forgot it");
    assert_eq!(
        resolve(&dig, addresses.portico_dns, "app02-lab.avi.aclab.uk"),
        vec![("A".to_string(), addresses.vip.to_string())],
        "the other route is still served"
    );
    drop(portico);
    drop(corporate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_flavour_resolves_through_bind_and_publishes_like_external_dns() {
    article_chain(
        "httproute_flavour_resolves_through_bind_and_publishes_like_external_dns",
        "httproute",
        "httproute/dev/app01-aclab-nginx-httproute",
        "httproute.yaml",
        Addresses {
            corporate: "127.0.55.1:53".parse().expect("address"),
            resolver: "127.0.55.2:53".parse().expect("address"),
            portico_dns: "127.0.55.3:53".parse().expect("address"),
            vip: "127.0.0.110",
            admin: 19921,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_flavour_with_hostrule_alias_resolves_through_bind_and_publishes_like_external_dns() {
    article_chain(
        "ingress_flavour_with_hostrule_alias_resolves_through_bind_and_publishes_like_external_dns",
        "ingress",
        "ingress/dev/app01-aclab-nginx-ing",
        "ingress.yaml",
        Addresses {
            corporate: "127.0.55.11:53".parse().expect("address"),
            resolver: "127.0.55.12:53".parse().expect("address"),
            portico_dns: "127.0.55.13:53".parse().expect("address"),
            vip: "127.0.0.111",
            admin: 19922,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_tsig_key_is_reported_per_record_and_the_data_plane_keeps_serving() {
    let test = "a_wrong_tsig_key_is_reported_per_record_and_the_data_plane_keeps_serving";
    let addresses = Addresses {
        corporate: "127.0.55.21:53".parse().expect("address"),
        resolver: "127.0.55.22:53".parse().expect("address"),
        portico_dns: "127.0.55.23:53".parse().expect("address"),
        vip: "127.0.0.112",
        admin: 19923,
    };
    let zone = aclab_zone(addresses.corporate.ip(), addresses.portico_dns.ip(), "");
    let Some(corporate) = bind_or_skip(test, |named| Bind::primary(named, addresses.corporate, &zone)) else {
        return;
    };
    let dig = dig_path(test).expect("dig comes with BIND (bind9-dnsutils)");
    let backends = Backends::start(&["root", "pink", "blue", "green"]).await;
    let dir = example("httproute", &backends, addresses.vip);
    // The key's name is right, its secret is not: BIND answers BADSIG.
    let config_file = portico_yaml(dir.path(), &addresses, KEY_OTHER);
    let config_file_arg = config_file.display().to_string();
    let portico = Portico::start(
        &[&dir.path().join("common"), &dir.path().join("httproute")],
        addresses.admin,
        &["--config-file", &config_file_arg, "--default-namespace", "dev"],
    );

    let status = wait_for("the sync error in /api/status", || {
        let status: serde_json::Value = serde_json::from_str(&portico.admin_get("/api/status")).unwrap_or_default();
        let done = sync_record(&status, "application01.aclab.uk").is_some_and(|r| r["state"] == "error");
        (done, status["dns"].clone())
    })
    .await;
    let status = serde_json::json!({ "dns": status });
    let error = status["dns"]["sync"]["error"].as_str().unwrap_or("").to_string();
    assert!(error.contains("BADSIG") && error.contains("portico-key"), "{error}");
    assert!(status["dns"]["sync"]["consecutiveFailures"].as_u64().unwrap_or(0) >= 1, "{status:#}");
    let record = sync_record(&status, "application01.aclab.uk").expect("record status");
    assert!(record["detail"].as_str().unwrap_or("").contains("BADSIG"), "{record}");
    // Nothing was written to the corporate zone.
    assert!(published(&dig, corporate.addr, addresses.portico_dns.ip()).is_empty());

    // The data plane and Portico's own DNS are unaffected.
    let ca = repo().join("examples/article/tls/root-ca.crt");
    let vip: SocketAddr = format!("{}:443", addresses.vip).parse().expect("vip");
    let page = request(vip, "application01.aclab.uk", "GET", "/pink", &[], Some(tls_config(&ca, false)))
        .await
        .expect("HTTPS request");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>pink</title>"));
    assert_eq!(
        resolve(&dig, addresses.portico_dns, "app01-lab.avi.aclab.uk"),
        vec![("A".to_string(), addresses.vip.to_string())]
    );

    // The log says what is wrong, never the secret.
    let log = std::fs::read_to_string(&portico.log).unwrap_or_default();
    assert!(log.contains("BADSIG"), "no log line about the rejected key:\n{log}");
    for (what, text) in [("log", &log), ("/api/status", &status.to_string())] {
        assert!(!text.contains(KEY_OTHER), "the TSIG secret leaked into the {what}");
    }
    drop(portico);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_external_dns_wrote_are_taken_over_without_churn() {
    let test = "records_external_dns_wrote_are_taken_over_without_churn";
    let addresses = Addresses {
        corporate: "127.0.55.31:53".parse().expect("address"),
        resolver: "127.0.55.32:53".parse().expect("address"),
        portico_dns: "127.0.55.33:53".parse().expect("address"),
        vip: "127.0.0.113",
        admin: 19924,
    };
    // The alias and its TXT as external-dns (same owner id) wrote them for the article's HTTPRoute.
    let extra = format!(
        "application01 10 IN CNAME app01-lab.avi.aclab.uk.\n\
         region01-aclab-vks-01-cname.application01 10 IN TXT \"{OWNER_VALUE_PREFIX}httproute/dev/app01-aclab-nginx-httproute\"\n"
    );
    let zone = aclab_zone(addresses.corporate.ip(), addresses.portico_dns.ip(), &extra);
    let Some(corporate) = bind_or_skip(test, |named| Bind::primary(named, addresses.corporate, &zone)) else {
        return;
    };
    let dig = dig_path(test).expect("dig comes with BIND (bind9-dnsutils)");
    let before = published(&dig, corporate.addr, addresses.portico_dns.ip());
    let at = format!("@{}", addresses.corporate.ip());
    let serial = || bind::dig(&dig, &[&at, "aclab.uk", "SOA", "+short"]);
    let serial_before = serial();

    let backends = Backends::start(&["root", "pink", "blue", "green"]).await;
    let dir = example("httproute", &backends, addresses.vip);
    std::fs::remove_file(dir.path().join("httproute/app02.yaml")).expect("only the article's route");
    let config_file = portico_yaml(dir.path(), &addresses, KEY_SHA256);
    let config_file_arg = config_file.display().to_string();
    let portico = Portico::start(
        &[&dir.path().join("common"), &dir.path().join("httproute")],
        addresses.admin,
        &["--config-file", &config_file_arg, "--default-namespace", "dev"],
    );
    let status = wait_for("the first sync", || {
        let status: serde_json::Value = serde_json::from_str(&portico.admin_get("/api/status")).unwrap_or_default();
        let done = status["dns"]["sync"]["runs"].as_u64().unwrap_or(0) >= 1;
        (done, status["dns"].clone())
    })
    .await;
    assert_eq!(status["sync"]["messages"], 0, "no UPDATE sent: {status:#}");
    assert_eq!(status["sync"]["records"][0]["state"], "published", "{status:#}");
    assert_eq!(published(&dig, corporate.addr, addresses.portico_dns.ip()), before, "not one record changed");
    assert_eq!(serial(), serial_before, "the zone's serial did not move");
    drop(portico);
}
