//! Portico's authoritative server, queried over real loopback sockets with hickory's client, raw messages and
//! dig, the way resolvers and people see it.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{query, raw_udp, shout, tcp_client, udp_client};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use portico_dns::{DesiredRecord, DnsServer, DnsServerHandle, RecordKind, ZoneConfig};

fn zones() -> Vec<ZoneConfig> {
    vec![
        ZoneConfig::new("avi.aclab.uk", vec!["avi-ns01.aclab.uk".into()]),
        ZoneConfig::new("aclab.uk", vec!["avi-ns01.aclab.uk".into()]),
    ]
}

fn a(name: &str, ip: &str) -> DesiredRecord {
    DesiredRecord::new(name, RecordKind::A, vec![ip.into()], 0, "httproute/dev/app01-aclab-nginx-httproute")
}

/// The article's load balancer DNS: both names of the app point at the VIP.
fn article_records() -> Vec<DesiredRecord> {
    vec![a("app01-lab.avi.aclab.uk", "127.0.0.10"), a("application01.aclab.uk", "127.0.0.10")]
}

async fn start() -> (DnsServerHandle, SocketAddr) {
    let server = DnsServer::start(vec!["127.0.0.1:0".parse().unwrap()], zones()).await.expect("start dns server");
    let addr = server.local_addrs()[0];
    let report = server.update(&article_records());
    assert!(report.rejected.is_empty(), "{report:?}");
    (server, addr)
}

fn a_answers(response: &hickory_proto::op::Message) -> Vec<(String, u32, Ipv4Addr)> {
    response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((r.name.to_ascii(), r.ttl, a.0)),
            _ => None,
        })
        .collect()
}

fn soa_serial(response: &hickory_proto::op::Message) -> Option<u32> {
    response.answers.iter().chain(response.authorities.iter()).find_map(|r| match &r.data {
        RData::SOA(soa) => Some(soa.serial),
        _ => None,
    })
}

#[tokio::test]
async fn answers_the_article_names_over_udp_and_tcp() {
    let (_server, addr) = start().await;
    for (proto, mut client) in [("udp", udp_client(addr).await), ("tcp", tcp_client(addr).await)] {
        let r = query(&mut client, "app01-lab.avi.aclab.uk.", RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{proto}");
        assert!(r.metadata.authoritative, "{proto}: AA flag");
        assert_eq!(
            a_answers(&r),
            vec![("app01-lab.avi.aclab.uk.".into(), 30, Ipv4Addr::new(127, 0, 0, 10))],
            "{proto}"
        );
        let r = query(&mut client, "APPLICATION01.aclab.uk.", RecordType::A).await;
        assert_eq!(a_answers(&r).len(), 1, "{proto}: names are case-insensitive");

        let soa = query(&mut client, "avi.aclab.uk.", RecordType::SOA).await;
        assert_eq!(soa.answers.len(), 1, "{proto}");
        match &soa.answers[0].data {
            RData::SOA(s) => {
                assert_eq!(s.mname.to_ascii(), "avi-ns01.aclab.uk.");
                assert_eq!(s.rname.to_ascii(), "hostmaster.avi.aclab.uk.");
                assert_eq!(s.minimum, 30, "negative answers cached 30 s");
            }
            other => panic!("{proto}: {other:?}"),
        }
        let ns = query(&mut client, "avi.aclab.uk.", RecordType::NS).await;
        let names: Vec<String> = ns
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::NS(n) => Some(n.0.to_ascii()),
                _ => None,
            })
            .collect();
        assert_eq!(names, vec!["avi-ns01.aclab.uk."], "{proto}");
    }
}

#[tokio::test]
async fn unknown_names_are_nxdomain_with_soa_and_other_types_nodata() {
    let (_server, addr) = start().await;
    let mut client = udp_client(addr).await;
    let r = query(&mut client, "nothing-here.avi.aclab.uk.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(r.metadata.authoritative);
    assert!(r.answers.is_empty());
    assert!(soa_serial(&r).is_some(), "NXDOMAIN carries the SOA for negative caching: {r:?}");

    let r = query(&mut client, "app01-lab.avi.aclab.uk.", RecordType::AAAA).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError, "NODATA, not NXDOMAIN");
    assert!(r.answers.is_empty());
    assert!(soa_serial(&r).is_some(), "NODATA carries the SOA: {r:?}");

    let r = query(&mut client, "www.example.com.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused, "not authoritative: refuse, never recurse");
}

#[tokio::test]
async fn wildcards_answer_for_any_name_below_them() {
    let (server, addr) = start().await;
    let mut records = article_records();
    records.push(a("*.apps.avi.aclab.uk", "127.0.0.20"));
    records.push(a("special.apps.avi.aclab.uk", "127.0.0.21"));
    assert!(server.update(&records).rejected.is_empty());
    let mut client = udp_client(addr).await;

    let r = query(&mut client, "shop.apps.avi.aclab.uk.", RecordType::A).await;
    assert_eq!(a_answers(&r), vec![("shop.apps.avi.aclab.uk.".into(), 30, Ipv4Addr::new(127, 0, 0, 20))]);
    let r = query(&mut client, "a.b.apps.avi.aclab.uk.", RecordType::A).await;
    assert_eq!(a_answers(&r), vec![("a.b.apps.avi.aclab.uk.".into(), 30, Ipv4Addr::new(127, 0, 0, 20))]);
    let r = query(&mut client, "special.apps.avi.aclab.uk.", RecordType::A).await;
    assert_eq!(a_answers(&r)[0].2, Ipv4Addr::new(127, 0, 0, 21), "an existing name wins over the wildcard");
    let r = query(&mut client, "apps.avi.aclab.uk.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError, "the wildcard's parent exists (empty non-terminal)");
    assert!(r.answers.is_empty());
    let r = query(&mut client, "shop.apps.avi.aclab.uk.", RecordType::AAAA).await;
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::NoError,
        "RFC 4592: the wildcard matches the name, so another type is NODATA"
    );
    assert!(r.answers.is_empty());
    let r = query(&mut client, "shop.other.avi.aclab.uk.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "the wildcard only covers apps");
}

#[tokio::test]
async fn cname_in_zone_is_followed_and_txt_is_served() {
    let (server, addr) = start().await;
    let mut records = article_records();
    records.push(DesiredRecord::new("www.aclab.uk", RecordKind::CNAME, vec!["application01.aclab.uk".into()], 60, ""));
    records.push(DesiredRecord::new("info.aclab.uk", RecordKind::TXT, vec!["served by portico".into()], 0, ""));
    assert!(server.update(&records).rejected.is_empty());
    let mut client = tcp_client(addr).await;
    let r = query(&mut client, "www.aclab.uk.", RecordType::A).await;
    let types: Vec<RecordType> = r.answers.iter().map(|r| r.record_type()).collect();
    assert_eq!(types, vec![RecordType::CNAME, RecordType::A], "{r:?}");
    assert_eq!(r.answers[0].ttl, 60);
    let r = query(&mut client, "info.aclab.uk.", RecordType::TXT).await;
    match &r.answers[0].data {
        RData::TXT(t) => assert_eq!(&*t.txt_data[0], b"served by portico"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn updates_bump_the_serial_only_on_change_and_are_seen_at_once() {
    let (server, addr) = start().await;
    let mut client = udp_client(addr).await;
    let serial = |r: &hickory_proto::op::Message| soa_serial(r).unwrap();
    let s0 = serial(&query(&mut client, "avi.aclab.uk.", RecordType::SOA).await);
    let p0 = serial(&query(&mut client, "aclab.uk.", RecordType::SOA).await);

    let report = server.update(&article_records());
    assert!(report.changed.is_empty(), "same records: {report:?}");
    assert_eq!(serial(&query(&mut client, "avi.aclab.uk.", RecordType::SOA).await), s0, "no change, no new serial");

    let mut moved = article_records();
    moved[0] = a("app01-lab.avi.aclab.uk", "127.0.0.11");
    let report = server.update(&moved);
    assert_eq!(report.changed.len(), 1, "only avi.aclab.uk changed: {report:?}");
    assert_eq!(report.changed[0].0, "avi.aclab.uk");
    let s1 = serial(&query(&mut client, "avi.aclab.uk.", RecordType::SOA).await);
    assert!(s1 > s0, "serial {s0} -> {s1}");
    assert_eq!(report.changed[0].1, s1);
    assert_eq!(server.serial("avi.aclab.uk"), Some(s1));
    assert_eq!(serial(&query(&mut client, "aclab.uk.", RecordType::SOA).await), p0, "the other zone keeps its serial");
    let r = query(&mut client, "app01-lab.avi.aclab.uk.", RecordType::A).await;
    assert_eq!(a_answers(&r)[0].2, Ipv4Addr::new(127, 0, 0, 11), "new address served at once");

    server.update(&moved[1..]);
    let r = query(&mut client, "app01-lab.avi.aclab.uk.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "a removed record is gone");
    let views = server.zones();
    assert_eq!(views.iter().find(|z| z.origin == "avi.aclab.uk").unwrap().records.len(), 0);
    assert_eq!(views.iter().find(|z| z.origin == "aclab.uk").unwrap().records.len(), 1);
}

#[tokio::test]
async fn bad_and_foreign_records_are_reported_not_served() {
    let (server, addr) = start().await;
    let report = server.update(&[
        a("app01-lab.avi.aclab.uk", "127.0.0.10"),
        a("app.example.com", "127.0.0.10"),
        a("bad.aclab.uk", "not-an-ip"),
        DesiredRecord::new("aclab.uk", RecordKind::CNAME, vec!["x.aclab.uk".into()], 0, ""),
        DesiredRecord::new("mixed.aclab.uk", RecordKind::CNAME, vec!["x.aclab.uk".into()], 0, "ingress/a/cname"),
        a("mixed.aclab.uk", "127.0.0.12"),
    ]);
    let reasons: Vec<String> = report.rejected.iter().map(|(r, why)| format!("{}: {why}", r.name)).collect();
    assert_eq!(reasons.len(), 4, "{reasons:#?}");
    assert!(reasons[0].starts_with("app.example.com: not in any zone"), "{reasons:#?}");
    assert!(reasons[1].contains("not an IPv4 address"), "{reasons:#?}");
    assert!(reasons[2].contains("zone apex"), "{reasons:#?}");
    assert!(reasons[3].contains("cannot share its name"), "{reasons:#?}");
    let mut client = udp_client(addr).await;
    let r = query(&mut client, "mixed.aclab.uk.", RecordType::A).await;
    assert_eq!(a_answers(&r).len(), 1, "the A is served, the conflicting CNAME is not");
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_come_whole_over_tcp() {
    let (server, addr) = start().await;
    let mut records = article_records();
    let ips: Vec<String> = (1..=100).map(|i| format!("10.0.{}.{}", i / 200, i % 200 + 1)).collect();
    records.push(DesiredRecord::new("big.avi.aclab.uk", RecordKind::A, ips, 0, ""));
    server.update(&records);

    let (m, len) = raw_udp(addr, "big.avi.aclab.uk.", RecordType::A, None, 0).await;
    assert!(m.metadata.truncation, "no EDNS: 512 bytes at most, TC set");
    assert!(len <= 512, "{len} bytes");
    assert!(m.edns.is_none(), "no OPT in the answer to a query without one");

    let (m, len) = raw_udp(addr, "big.avi.aclab.uk.", RecordType::A, Some(1232), 0).await;
    assert!(m.metadata.truncation && len <= 1232, "EDNS 1232: TC set, {len} bytes");
    assert!(m.edns.is_some(), "EDNS answered with OPT");

    let (m, len) = raw_udp(addr, "big.avi.aclab.uk.", RecordType::A, Some(4096), 0).await;
    assert!(!m.metadata.truncation, "EDNS 4096 fits 100 addresses ({len} bytes)");
    assert_eq!(m.answers.len(), 100);

    let (m, _) = raw_udp(addr, "app01-lab.avi.aclab.uk.", RecordType::A, Some(1232), 1).await;
    // BADVERS and BADSIG share extended code 16; hickory names it by the TSIG meaning.
    assert_eq!(u16::from(m.metadata.response_code), 16, "EDNS version 1 is not supported: BADVERS (16)");

    let mut tcp = tcp_client(addr).await;
    let r = query(&mut tcp, "big.avi.aclab.uk.", RecordType::A).await;
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 100, "the TCP fallback gets everything");
}

#[tokio::test]
async fn queries_during_swaps_always_get_a_whole_answer() {
    let (server, addr) = start().await;
    let server = Arc::new(server);
    let stop = Arc::new(AtomicBool::new(false));
    let querier = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut client = udp_client(addr).await;
            let mut seen = 0u32;
            // Bounded in count and time.
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = query(&mut client, "app01-lab.avi.aclab.uk.", RecordType::A).await;
                assert_eq!(r.metadata.response_code, ResponseCode::NoError);
                let ips: Vec<Ipv4Addr> = a_answers(&r).into_iter().map(|(_, _, ip)| ip).collect();
                assert!(
                    ips == vec![Ipv4Addr::new(127, 0, 0, 10)]
                        || ips == vec![Ipv4Addr::new(127, 0, 0, 11), Ipv4Addr::new(127, 0, 0, 12)],
                    "a mix of two record sets: {ips:?}"
                );
                seen += 1;
            }
            seen
        })
    };
    let two = vec![DesiredRecord::new(
        "app01-lab.avi.aclab.uk",
        RecordKind::A,
        vec!["127.0.0.11".into(), "127.0.0.12".into()],
        0,
        "",
    )];
    let one = article_records()[..1].to_vec();
    for i in 0..300 {
        server.update(if i % 2 == 0 { &two } else { &one });
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let seen = tokio::time::timeout(Duration::from_secs(30), querier).await.expect("querier ends").unwrap();
    assert!(seen > 20, "only {seen} queries answered during the swaps");
}

// dig is a blocking child process: the server needs another worker thread meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_sees_an_authoritative_answer() {
    let Some(dig) = common::tool("dig", "dig_sees_an_authoritative_answer") else { return };
    let (_server, addr) = start().await;
    let port = addr.port().to_string();
    let out = common::dig(&dig, &["@127.0.0.1", "-p", &port, "app01-lab.avi.aclab.uk", "A", "+norec"]);
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains("flags: qr aa"), "authoritative answer: {out}");
    assert!(out.contains("app01-lab.avi.aclab.uk.\t30\tIN\tA\t127.0.0.10"), "{out}");
    let out = common::dig(&dig, &["@127.0.0.1", "-p", &port, "missing.avi.aclab.uk", "A", "+norec"]);
    assert!(out.contains("status: NXDOMAIN") && out.contains("AUTHORITY: 1"), "{out}");
    let out = common::dig(&dig, &["@127.0.0.1", "-p", &port, "avi.aclab.uk", "SOA", "+tcp", "+short"]);
    assert!(out.starts_with("avi-ns01.aclab.uk. hostmaster.avi.aclab.uk. "), "{out}");
    shout(&format!("dig against Portico's DNS on {addr}: ok"));
}
