//! The sync against a real BIND 9 as the corporate DNS (started by each test on its own loopback address, port
//! 53), checked with dig and zone transfers the way the platform team would check it; and the article's whole
//! resolution chain through a BIND resolver and Portico's delegated DNS.
//!
//! BIND tests skip with a loud message only when BIND cannot be installed; set `PORTICO_REQUIRE_DNS_TOOLS=1`
//! to make that a failure.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Bind, KEY_OTHER, KEY_SHA256, KEY_SHA384, KEY_SHA512, aclab_zone, bind_or_skip, shout};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use portico_dns::{
    Action, ConflictReason, DesiredRecord, DnsServer, MessageSigner, Policy, RecordKind, RecordState, RetryPolicy,
    SyncConfig, SyncError, Syncer, TsigAlg, TsigFailure, TsigKey, TsigSigner, ZoneConfig,
};

const OWNER: &str = "region01-aclab-vks-01";
const PREFIX: &str = "region01-aclab-vks-01-%{record_type}.";
const RESOURCE: &str = "httproute/dev/app01-aclab-nginx-httproute";
const TXT_VALUE: &str = "heritage=external-dns,external-dns/owner=region01-aclab-vks-01,external-dns/resource=httproute/dev/app01-aclab-nginx-httproute";
/// The load balancer's DNS service address (glue of the `avi.aclab.uk` delegation).
const LB_DNS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);

fn addr(last: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 53, last)), 53)
}

fn signer(name: &str, alg: TsigAlg, secret: &str) -> Arc<dyn MessageSigner> {
    Arc::new(TsigSigner::new(TsigKey::from_base64(name, alg, secret).unwrap()).unwrap())
}

fn portico_key() -> Arc<dyn MessageSigner> {
    signer("portico-key", TsigAlg::HmacSha256, KEY_SHA256)
}

/// external-dns's settings for region 01 (values file in the article's fixtures).
fn article_config(server: SocketAddr) -> SyncConfig {
    let mut c = SyncConfig::new(server, "aclab.uk", OWNER);
    c.txt_prefix = PREFIX.into();
    c.exclude_domains = vec!["avi.aclab.uk".into()];
    c.policy = Policy::Sync;
    c.timeout = Duration::from_secs(3);
    c
}

fn app01() -> DesiredRecord {
    DesiredRecord::new("application01.aclab.uk", RecordKind::CNAME, vec!["app01-lab.avi.aclab.uk".into()], 30, RESOURCE)
}

fn dig_path(test: &str) -> Option<PathBuf> {
    common::tool("dig", test)
}

/// The zone's records that the test did not put in the zone file's base.
fn zone_without_base(dig: &std::path::Path, bind: &Bind) -> BTreeSet<String> {
    let key = format!("hmac-sha256:portico-key:{KEY_SHA256}");
    let base: BTreeSet<String> = [
        "aclab.uk. 300 NS ns1.aclab.uk.".to_string(),
        format!("ns1.aclab.uk. 300 A {}", bind.addr.ip()),
        "avi.aclab.uk. 300 NS avi-ns01.aclab.uk.".to_string(),
        format!("avi-ns01.aclab.uk. 300 A {LB_DNS}"),
    ]
    .into_iter()
    .collect();
    let all = common::dig_axfr(dig, bind.addr, &key);
    assert!(base.is_subset(&all), "the base records are never touched: {all:#?}");
    all.difference(&base).cloned().collect()
}

fn set(lines: &[&str]) -> BTreeSet<String> {
    lines.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn article_alias_is_published_in_external_dns_format_and_removed() {
    let test = "article_alias_is_published_in_external_dns_format_and_removed";
    let Some(bind) =
        bind_or_skip(test, |named| Bind::primary(named, addr(1), &aclab_zone(addr(1).ip(), LB_DNS.into(), "")))
    else {
        return;
    };
    let dig = dig_path(test).expect("dig comes with BIND (bind9-dnsutils)");
    let syncer = Syncer::new(article_config(bind.addr), portico_key()).unwrap();

    // The dry-run prints the plan and changes nothing.
    let plan = syncer.plan(&[app01()]).await.expect("plan");
    shout(&format!("dry-run against BIND {}:\n{plan}", bind.addr));
    assert_eq!(plan.changes.len(), 1);
    assert_eq!(plan.changes[0].action, Action::Create);
    assert!(
        plan.to_string().contains("+ create application01.aclab.uk CNAME (httproute/dev/app01-aclab-nginx-httproute)")
    );
    assert!(zone_without_base(&dig, &bind).is_empty(), "a plan changes nothing");

    let report = syncer.sync(&[app01()]).await.expect("sync");
    assert_eq!(report.applied.messages, 1, "one UPDATE message");
    assert_eq!(report.statuses.len(), 1);
    assert_eq!(report.statuses[0].state, RecordState::Published);
    assert_eq!(
        zone_without_base(&dig, &bind),
        set(&[
            "application01.aclab.uk. 30 CNAME app01-lab.avi.aclab.uk.",
            &format!("region01-aclab-vks-01-cname.application01.aclab.uk. 30 TXT \"{TXT_VALUE}\""),
        ]),
        "BIND holds exactly the CNAME and the ownership TXT, in external-dns's format"
    );
    // What the team's watch loop prints.
    let at = format!("@{}", bind.addr.ip());
    let out = common::dig(&dig, &[&at, "application01.aclab.uk", "+noall", "+answer"]);
    assert!(out.contains("application01.aclab.uk.\t30\tIN\tCNAME\tapp01-lab.avi.aclab.uk."), "{out}");

    // Nothing changed: no UPDATE, same serial.
    let serial = syncer.read_zone().await.unwrap().serial;
    let again = syncer.sync(&[app01()]).await.expect("second sync");
    assert_eq!(again.applied.messages, 0, "no update when nothing changed:\n{}", again.plan);
    assert_eq!(syncer.read_zone().await.unwrap().serial, serial, "the zone's serial did not move");

    // The route is deleted: both records go.
    let gone = syncer.sync(&[]).await.expect("sync after delete");
    assert_eq!(gone.applied.messages, 1);
    assert_eq!(gone.plan.changes[0].action, Action::Delete);
    assert!(zone_without_base(&dig, &bind).is_empty(), "CNAME and TXT removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_dns_record_with_the_same_owner_is_taken_over_without_churn() {
    let test = "an_external_dns_record_with_the_same_owner_is_taken_over_without_churn";
    // As external-dns wrote them (its rfc2136 provider, TXT value quoted in the zone file).
    let extra = format!(
        "application01 30 IN CNAME app01-lab.avi.aclab.uk.\n\
         region01-aclab-vks-01-cname.application01 300 IN TXT \"{TXT_VALUE}\"\n"
    );
    let Some(bind) =
        bind_or_skip(test, |named| Bind::primary(named, addr(2), &aclab_zone(addr(2).ip(), LB_DNS.into(), &extra)))
    else {
        return;
    };
    let syncer = Syncer::new(article_config(bind.addr), portico_key()).unwrap();
    let before = syncer.read_zone().await.unwrap();
    let report = syncer.sync(&[app01()]).await.expect("sync");
    assert!(report.plan.is_empty(), "{}", report.plan);
    assert_eq!(report.applied.messages, 0);
    assert_eq!(report.statuses[0].state, RecordState::Published);
    assert_eq!(syncer.read_zone().await.unwrap(), before, "not one record changed");

    // And Portico owns it now: a new target updates it, keeping the TXT.
    let mut moved = app01();
    moved.targets = vec!["app01-lab-b.avi.aclab.uk".into()];
    let report = syncer.sync(&[moved]).await.expect("sync");
    assert_eq!(report.plan.changes[0].action, Action::Update);
    let zone = syncer.read_zone().await.unwrap();
    assert_eq!(zone.get("application01.aclab.uk", RecordKind::CNAME).unwrap().values, vec!["app01-lab-b.avi.aclab.uk"]);
    assert_eq!(
        zone.get("region01-aclab-vks-01-cname.application01.aclab.uk", RecordKind::TXT).unwrap().values,
        vec![TXT_VALUE]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_other_owners_and_hand_made_ones_are_conflicts_and_never_touched() {
    let test = "records_of_other_owners_and_hand_made_ones_are_conflicts_and_never_touched";
    let extra = "application02 300 IN CNAME elsewhere.example.net.\n\
                 region01-aclab-vks-01-cname.application02 300 IN TXT \"heritage=external-dns,external-dns/owner=region02-aclab-vks-07,external-dns/resource=ingress/prod/app02\"\n\
                 manual 300 IN A 10.9.9.9\n";
    let Some(bind) =
        bind_or_skip(test, |named| Bind::primary(named, addr(3), &aclab_zone(addr(3).ip(), LB_DNS.into(), extra)))
    else {
        return;
    };
    let dig = dig_path(test).expect("dig");
    let hand_made = set(&[
        "application02.aclab.uk. 300 CNAME elsewhere.example.net.",
        "manual.aclab.uk. 300 A 10.9.9.9",
        "region01-aclab-vks-01-cname.application02.aclab.uk. 300 TXT \"heritage=external-dns,external-dns/owner=region02-aclab-vks-07,external-dns/resource=ingress/prod/app02\"",
    ]);
    assert_eq!(zone_without_base(&dig, &bind), hand_made);

    let syncer = Syncer::new(article_config(bind.addr), portico_key()).unwrap();
    let desired = vec![
        app01(),
        DesiredRecord::new(
            "application02.aclab.uk",
            RecordKind::CNAME,
            vec!["app02-lab.avi.aclab.uk".into()],
            30,
            "httproute/dev/app02",
        ),
        DesiredRecord::new("manual.aclab.uk", RecordKind::A, vec!["127.0.0.10".into()], 30, "ingress/dev/manual"),
    ];
    let report = syncer.sync(&desired).await.expect("sync");
    let states: Vec<(String, String)> = report.statuses.iter().map(|s| (s.name.clone(), s.state.to_string())).collect();
    assert_eq!(
        states,
        vec![
            ("application01.aclab.uk".into(), "published".into()),
            ("application02.aclab.uk".into(), "conflict: owned by region02-aclab-vks-07".into()),
            ("manual.aclab.uk".into(), "conflict: a record without ownership TXT (made by hand?) is there".into()),
        ]
    );
    assert!(matches!(report.plan.conflicts[0].reason, ConflictReason::OwnedBy(ref o) if o == "region02-aclab-vks-07"));
    shout(&format!("plan with conflicts:\n{}", report.plan));
    let mut expected = hand_made.clone();
    expected.insert("application01.aclab.uk. 30 CNAME app01-lab.avi.aclab.uk.".into());
    expected.insert(format!("region01-aclab-vks-01-cname.application01.aclab.uk. 30 TXT \"{TXT_VALUE}\""));
    assert_eq!(zone_without_base(&dig, &bind), expected, "the other records are exactly as they were");

    // Nothing desired any more: only Portico's own records go.
    syncer.sync(&[]).await.expect("sync");
    assert_eq!(zone_without_base(&dig, &bind), hand_made);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_tsig_key_is_reported_as_such() {
    let test = "a_wrong_tsig_key_is_reported_as_such";
    let Some(bind) =
        bind_or_skip(test, |named| Bind::primary(named, addr(4), &aclab_zone(addr(4).ip(), LB_DNS.into(), "")))
    else {
        return;
    };
    let mut config = article_config(bind.addr);
    config.retry = RetryPolicy {
        attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(100),
    };
    // Right name, wrong secret.
    let wrong = signer("portico-key", TsigAlg::HmacSha256, "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC0wMTIzNDU2Nzg5");
    let syncer = Syncer::new(config.clone(), wrong).unwrap();
    let started = Instant::now();
    let err = syncer.sync(&[app01()]).await.expect_err("BIND rejects the signature");
    let text = err.to_string();
    shout(&format!("wrong TSIG secret: {text}"));
    assert!(matches!(err, SyncError::Tsig { failure: TsigFailure::BadSig, .. }), "{err:?}");
    assert!(!err.is_transient(), "a wrong key is not retried");
    assert!(started.elapsed() < Duration::from_secs(2), "not retried: {:?}", started.elapsed());
    assert!(text.contains("BADSIG") && text.contains("wrong TSIG key"), "{text}");
    assert!(text.contains("portico-key (hmac-sha256)") && text.contains(&bind.addr.to_string()), "{text}");
    assert!(!text.contains("truncated"), "hickory's misleading wording is not passed on: {text}");
    // The same for an UPDATE (the plan made with the right key, sent with the wrong one).
    let plan = Syncer::new(config.clone(), portico_key()).unwrap().plan(&[app01()]).await.unwrap();
    let err = syncer.apply(&plan).await.expect_err("BIND rejects the update's signature");
    assert!(matches!(err, SyncError::Tsig { failure: TsigFailure::BadSig, operation: "update", .. }), "{err:?}");
    shout(&format!("wrong TSIG secret on update: {err}"));

    // A key name the server does not know.
    let unknown = signer("nobody-key", TsigAlg::HmacSha256, KEY_SHA256);
    let err = Syncer::new(config.clone(), unknown).unwrap().sync(&[app01()]).await.expect_err("BADKEY");
    assert!(matches!(err, SyncError::Tsig { failure: TsigFailure::BadKey, .. }), "{err:?}");
    assert!(err.to_string().contains("does not know TSIG key nobody-key"), "{err}");

    // The right name and secret with another algorithm.
    let other_alg = signer("portico-key", TsigAlg::HmacSha512, KEY_SHA256);
    let err = Syncer::new(config, other_alg).unwrap().sync(&[app01()]).await.expect_err("wrong algorithm");
    assert!(matches!(err, SyncError::Tsig { .. }), "{err:?}");
    shout(&format!("wrong TSIG algorithm: {err}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_refused_by_the_server_is_reported() {
    let test = "an_update_refused_by_the_server_is_reported";
    let Some(bind) =
        bind_or_skip(test, |named| Bind::primary(named, addr(5), &aclab_zone(addr(5).ip(), LB_DNS.into(), "")))
    else {
        return;
    };
    // other-key may transfer the zone but not update it.
    let syncer = Syncer::new(article_config(bind.addr), signer("other-key", TsigAlg::HmacSha256, KEY_OTHER)).unwrap();
    let plan = syncer.plan(&[app01()]).await.expect("the transfer is allowed");
    assert_eq!(plan.changes.len(), 1);
    let err = syncer.apply(&plan).await.expect_err("REFUSED");
    shout(&format!("refused update: {err}"));
    assert!(matches!(err, SyncError::Refused { .. }), "{err:?}");
    assert!(err.to_string().contains("REFUSED") && err.to_string().contains("other-key"), "{err}");
    let statuses = portico_dns::statuses_after_error(&plan, &err);
    assert!(matches!(&statuses[0].state, RecordState::Error(e) if e.contains("REFUSED")), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_retried_with_bounded_backoff_then_reported() {
    // Nothing listens on 127.0.53.99:53.
    let mut config = article_config(addr(99));
    config.retry = RetryPolicy {
        attempts: 3,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(150),
    };
    let syncer = Syncer::new(config, portico_key()).unwrap();
    let started = Instant::now();
    let err = syncer.sync(&[app01()]).await.expect_err("unreachable");
    let elapsed = started.elapsed();
    assert!(matches!(err, SyncError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("127.0.53.99:53 is unreachable"), "{err}");
    assert!(elapsed >= Duration::from_millis(250), "two backoffs of 100 and 150 ms: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "bounded: {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_changed_between_plan_and_update_is_not_overwritten() {
    let test = "a_zone_changed_between_plan_and_update_is_not_overwritten";
    let Some(bind) =
        bind_or_skip(test, |named| Bind::primary(named, addr(6), &aclab_zone(addr(6).ip(), LB_DNS.into(), "")))
    else {
        return;
    };
    let ours = Syncer::new(article_config(bind.addr), portico_key()).unwrap();
    let stale = ours.plan(&[app01()]).await.unwrap();

    // Meanwhile another cluster with the same prefix publishes the name.
    let mut theirs = article_config(bind.addr);
    theirs.owner = "region02-aclab-vks-07".into();
    let intruder = Syncer::new(theirs, portico_key()).unwrap();
    let mut their_record = app01();
    their_record.targets = vec!["app01.region02.aclab.uk".into()];
    intruder.sync(&[their_record]).await.unwrap();

    let err = ours.apply(&stale).await.expect_err("the prerequisite fails");
    assert!(matches!(err, SyncError::ZoneChanged { .. }), "{err:?}");
    shout(&format!("stale plan: {err}"));
    let report = ours.sync(&[app01()]).await.expect("re-read and re-plan");
    assert!(
        matches!(&report.statuses[0].state, RecordState::Conflict(ConflictReason::OwnedBy(o)) if o == "region02-aclab-vks-07")
    );
    let zone = ours.read_zone().await.unwrap();
    assert_eq!(zone.get("application01.aclab.uk", RecordKind::CNAME).unwrap().values, vec!["app01.region02.aclab.uk"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_records_go_in_batches_and_every_hmac_works() {
    let test = "many_records_go_in_batches_and_every_hmac_works";
    let Some(bind) =
        bind_or_skip(test, |named| Bind::primary(named, addr(7), &aclab_zone(addr(7).ip(), LB_DNS.into(), "")))
    else {
        return;
    };
    let desired: Vec<DesiredRecord> = (0..120)
        .map(|i| {
            DesiredRecord::new(
                format!("app{i:03}.aclab.uk"),
                RecordKind::A,
                vec![format!("127.0.1.{}", i + 1)],
                0,
                format!("ingress/dev/app{i:03}"),
            )
        })
        .collect();
    for (key, alg, secret) in [
        ("portico-key", TsigAlg::HmacSha256, KEY_SHA256),
        ("portico-key-384", TsigAlg::HmacSha384, KEY_SHA384),
        ("portico-key-512", TsigAlg::HmacSha512, KEY_SHA512),
    ] {
        let syncer = Syncer::new(article_config(bind.addr), signer(key, alg, secret)).unwrap();
        let report = syncer.sync(&desired).await.unwrap_or_else(|e| panic!("{alg}: {e}"));
        if alg == TsigAlg::HmacSha256 {
            assert_eq!(report.applied.messages, 3, "120 changes in batches of 50");
            assert_eq!(report.applied.applied, 120);
        } else {
            assert_eq!(report.applied.messages, 0, "{alg}: already in sync");
        }
        let zone = syncer.read_zone().await.unwrap();
        let a = zone.rrsets.keys().filter(|(_, k)| *k == RecordKind::A).count();
        let txt = zone.rrsets.keys().filter(|(_, k)| *k == RecordKind::TXT).count();
        assert_eq!((a, txt), (120 + 2, 120), "{alg}: records plus ns1 and avi-ns01 glue, and one TXT each");
    }
    let syncer =
        Syncer::new(article_config(bind.addr), signer("portico-key-512", TsigAlg::HmacSha512, KEY_SHA512)).unwrap();
    let report = syncer.sync(&[]).await.unwrap();
    assert_eq!(report.applied.messages, 3);
    let zone = syncer.read_zone().await.unwrap();
    assert_eq!(zone.rrsets.len(), 2, "only the glue A records are left: {:?}", zone.rrsets.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_limit_what_the_sync_does() {
    let test = "policies_limit_what_the_sync_does";
    let Some(bind) =
        bind_or_skip(test, |named| Bind::primary(named, addr(8), &aclab_zone(addr(8).ip(), LB_DNS.into(), "")))
    else {
        return;
    };
    let with = |policy: Policy| {
        let mut c = article_config(bind.addr);
        c.policy = policy;
        Syncer::new(c, portico_key()).unwrap()
    };
    with(Policy::CreateOnly).sync(&[app01()]).await.unwrap();
    let mut moved = app01();
    moved.targets = vec!["moved.avi.aclab.uk".into()];
    let r = with(Policy::CreateOnly).sync(&[moved.clone()]).await.unwrap();
    assert_eq!((r.applied.messages, r.plan.held_back.len()), (0, 1), "create-only holds the update back");
    assert_eq!(r.statuses[0].state, RecordState::HeldBack(Action::Update));
    let r = with(Policy::UpsertOnly).sync(&[moved]).await.unwrap();
    assert_eq!(r.applied.messages, 1, "upsert-only updates");
    let r = with(Policy::UpsertOnly).sync(&[]).await.unwrap();
    assert_eq!((r.applied.messages, r.plan.held_back.len()), (0, 1), "upsert-only never deletes");
    let zone = with(Policy::Sync).read_zone().await.unwrap();
    assert_eq!(zone.get("application01.aclab.uk", RecordKind::CNAME).unwrap().values, vec!["moved.avi.aclab.uk"]);
    let r = with(Policy::Sync).sync(&[]).await.unwrap();
    assert_eq!(r.applied.messages, 1, "sync deletes");
}

/// The article end to end for DNS: BIND is the corporate DNS for aclab.uk and delegates avi.aclab.uk to
/// Portico's DNS at 127.0.0.53; Portico publishes the alias into BIND; a second BIND is the resolver clients
/// ask. `dig @127.0.0.54 application01.aclab.uk` must give the CNAME and then the VIP from Portico.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resolves_the_alias_through_the_delegation_to_portico() {
    let test = "a_client_resolves_the_alias_through_the_delegation_to_portico";
    let primary_addr = addr(60);
    let Some(primary) = bind_or_skip(test, |named| {
        Bind::primary(named, primary_addr, &aclab_zone(primary_addr.ip(), LB_DNS.into(), ""))
    }) else {
        return;
    };
    let portico = DnsServer::start(
        vec![SocketAddr::new(LB_DNS.into(), 53)],
        vec![ZoneConfig::new("avi.aclab.uk", vec!["avi-ns01.aclab.uk".into()])],
    )
    .await
    .unwrap_or_else(|e| panic!("Portico's DNS on {LB_DNS}:53 (the delegation's glue): {e}"));
    portico.update(&[DesiredRecord::new(
        "app01-lab.avi.aclab.uk",
        RecordKind::A,
        vec!["127.0.0.10".into()],
        30,
        RESOURCE,
    )]);
    Syncer::new(article_config(primary.addr), portico_key())
        .unwrap()
        .sync(&[app01()])
        .await
        .expect("publish the alias");

    let resolver_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 54)), 53);
    let named = common::tool("named", test).unwrap();
    let resolver =
        Bind::resolver(&named, resolver_addr, primary_addr.ip()).unwrap_or_else(|e| panic!("resolver BIND: {e}"));

    // A stub client (hickory) asks the resolver, recursion desired.
    let mut client = common::udp_client(resolver.addr).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let r = common::query(&mut client, "application01.aclab.uk.", RecordType::A).await;
        if r.metadata.response_code == ResponseCode::NoError && r.answers.len() == 2 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError, "{answer:?}\nresolver log:\n{}", resolver.log());
    let chain: Vec<String> = answer
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::CNAME(c) => format!("{} CNAME {}", r.name, c.0),
            RData::A(a) => format!("{} A {}", r.name, a.0),
            other => format!("{} {other:?}", r.name),
        })
        .collect();
    assert_eq!(
        chain,
        vec!["application01.aclab.uk. CNAME app01-lab.avi.aclab.uk.", "app01-lab.avi.aclab.uk. A 127.0.0.10"],
        "resolver log:\n{}",
        resolver.log()
    );

    if let Some(dig) = dig_path(test) {
        let out = common::dig(&dig, &["@127.0.0.54", "application01.aclab.uk", "+noall", "+answer"]);
        shout(&format!("dig @127.0.0.54 application01.aclab.uk:\n{out}"));
        assert!(out.contains("CNAME\tapp01-lab.avi.aclab.uk.") && out.contains("A\t127.0.0.10"), "{out}");
        // The answer for the VIP really comes from Portico: the delegation is followed, not forwarded.
        let out =
            common::dig(&dig, &["@127.0.0.53", "app01-lab.avi.aclab.uk", "+norec", "+noall", "+answer", "+comments"]);
        assert!(out.contains("flags: qr aa"), "{out}");
        let out = common::dig(
            &dig,
            &["@127.0.53.60", "app01-lab.avi.aclab.uk", "+norec", "+noall", "+authority", "+additional"],
        );
        assert!(
            out.contains("avi.aclab.uk.\t\t300\tIN\tNS\tavi-ns01.aclab.uk."),
            "the corporate DNS refers to Portico: {out}"
        );
    }
    // Portico withdraws the name: the resolver (cache TTL capped at 1 s) soon says NXDOMAIN for the target.
    portico.update(&[]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = common::query(&mut client, "app01-lab.avi.aclab.uk.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_sync_follows_changes_and_reports_each_record() {
    let test = "the_background_sync_follows_changes_and_reports_each_record";
    let Some(bind) =
        bind_or_skip(test, |named| Bind::primary(named, addr(9), &aclab_zone(addr(9).ip(), LB_DNS.into(), "")))
    else {
        return;
    };
    let syncer = Arc::new(Syncer::new(article_config(bind.addr), portico_key()).unwrap());
    let (tx, rx) = tokio::sync::watch::channel(vec![app01()]);
    // A long interval: what happens quickly comes from the change trigger.
    let sync_loop = portico_dns::SyncLoop::spawn(syncer.clone(), rx, Duration::from_secs(3600));
    let mut status = sync_loop.subscribe();
    let wait_for = async |status: &mut tokio::sync::watch::Receiver<portico_dns::SyncLoopStatus>, runs: u64| {
        tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.runs >= runs))
            .await
            .expect("a sync")
            .unwrap()
            .clone()
    };
    let first = wait_for(&mut status, 1).await;
    assert_eq!(first.error, None);
    assert_eq!(first.records[0].state, RecordState::Published);
    assert!(syncer.read_zone().await.unwrap().get("application01.aclab.uk", RecordKind::CNAME).is_some());

    tx.send(vec![]).unwrap();
    let second = wait_for(&mut status, 2).await;
    assert_eq!((second.error.as_deref(), second.messages), (None, 1));
    assert!(syncer.read_zone().await.unwrap().get("application01.aclab.uk", RecordKind::CNAME).is_none());

    // The server goes away: the status says so for every desired record, and the loop keeps trying.
    drop(bind);
    tx.send(vec![app01()]).unwrap();
    let third = wait_for(&mut status, 3).await;
    let error = third.error.clone().expect("an error");
    assert!(error.contains("unreachable"), "{error}");
    assert!(matches!(&third.records[0].state, RecordState::Error(e) if e.contains("unreachable")), "{third:?}");
    let fourth = wait_for(&mut status, 4).await;
    assert_eq!(fourth.consecutive_failures, 2, "retried with backoff, not at the hour's interval");
    sync_loop.stop().await;
}
