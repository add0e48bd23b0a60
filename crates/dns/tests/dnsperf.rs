//! dnsperf (Debian) against Portico's DNS for five seconds: every query answered, each with the right code.
//! The QPS is printed (it is a debug build under `cargo test`; add `--release` for a figure worth comparing).

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::Command;

use common::shout;
use portico_dns::{DesiredRecord, DnsServer, RecordKind, ZoneConfig};

/// dnsperf's statistics block, as numbers.
#[derive(Debug)]
struct Stats {
    sent: u64,
    completed: u64,
    lost: u64,
    rcodes: BTreeMap<String, u64>,
    qps: f64,
}

fn parse(out: &str) -> Stats {
    let number = |label: &str| -> Option<String> {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
    };
    let mut rcodes = BTreeMap::new();
    if let Some(line) = out.lines().find_map(|l| l.trim().strip_prefix("Response codes:")) {
        for part in line.split(',') {
            let mut words = part.split_whitespace();
            if let (Some(code), Some(count)) = (words.next(), words.next()) {
                rcodes.insert(code.to_string(), count.parse().unwrap_or(0));
            }
        }
    }
    Stats {
        sent: number("Queries sent:").and_then(|n| n.parse().ok()).unwrap_or(0),
        completed: number("Queries completed:").and_then(|n| n.parse().ok()).unwrap_or(0),
        lost: number("Queries lost:").and_then(|n| n.parse().ok()).unwrap_or(u64::MAX),
        rcodes,
        qps: number("Queries per second:").and_then(|n| n.parse().ok()).unwrap_or(0.0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnsperf_gets_the_right_answer_to_every_query() {
    let Some(dnsperf) = common::tool("dnsperf", "dnsperf_gets_the_right_answer_to_every_query") else { return };
    let server = DnsServer::start(
        vec!["127.0.0.1:0".parse().unwrap()],
        vec![
            ZoneConfig::new("avi.aclab.uk", vec!["avi-ns01.aclab.uk".into()]),
            ZoneConfig::new("aclab.uk", vec!["avi-ns01.aclab.uk".into()]),
        ],
    )
    .await
    .unwrap();
    let mut records = vec![
        DesiredRecord::new("app01-lab.avi.aclab.uk", RecordKind::A, vec!["127.0.0.10".into()], 0, ""),
        DesiredRecord::new("application01.aclab.uk", RecordKind::A, vec!["127.0.0.10".into()], 0, ""),
        DesiredRecord::new("*.apps.avi.aclab.uk", RecordKind::A, vec!["127.0.0.20".into()], 0, ""),
    ];
    for i in 0..200 {
        records.push(DesiredRecord::new(
            format!("app{i:03}.avi.aclab.uk"),
            RecordKind::A,
            vec!["127.0.0.11".into()],
            0,
            "",
        ));
    }
    assert!(server.update(&records).rejected.is_empty());
    let addr = server.local_addrs()[0];

    // Half the queries have answers (NOERROR, including NODATA and wildcard matches), half do not (NXDOMAIN).
    // The team's own query file (application01.aclab.uk CNAME: NODATA here, the load balancer holds an A).
    let team = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/article/platform/dnsperf-queryfile.txt"
    ))
    .unwrap_or_else(|_| "application01.aclab.uk CNAME\n".into());
    let mut lines: Vec<(String, &str)> =
        team.lines().filter(|l| !l.trim().is_empty()).map(|l| (l.trim().to_string(), "NOERROR")).collect();
    lines.extend([
        ("app01-lab.avi.aclab.uk A".to_string(), "NOERROR"),
        ("application01.aclab.uk A".to_string(), "NOERROR"),
        ("app117.avi.aclab.uk A".to_string(), "NOERROR"),
        ("shop.apps.avi.aclab.uk A".to_string(), "NOERROR"),
        ("avi.aclab.uk SOA".to_string(), "NOERROR"),
    ]);
    let existing = lines.len();
    for i in 0..existing {
        lines.push((format!("missing-{i}.avi.aclab.uk A"), "NXDOMAIN"));
    }
    let mut file = tempfile::NamedTempFile::new().unwrap();
    for (line, _) in &lines {
        writeln!(file, "{line}").unwrap();
    }
    file.flush().unwrap();

    let path = file.path().to_path_buf();
    let port = addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(dnsperf)
            .args(["-s", "127.0.0.1", "-p", &port, "-l", "5", "-q", "64", "-t", "2", "-d"])
            .arg(&path)
            .output()
            .expect("run dnsperf")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "dnsperf failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let stats = parse(&text);
    shout(&format!(
        "dnsperf against Portico's DNS ({} build, 5 s, {} names in the query file): {:.0} queries per second; \
         sent {}, completed {}, lost {}, response codes {:?}",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        lines.len(),
        stats.qps,
        stats.sent,
        stats.completed,
        stats.lost,
        stats.rcodes
    ));
    assert!(stats.sent > 1000, "{text}");
    assert_eq!(stats.lost, 0, "every query is answered:\n{text}");
    assert_eq!(stats.completed, stats.sent);
    let codes: Vec<&String> = stats.rcodes.keys().collect();
    assert_eq!(codes, vec!["NOERROR", "NXDOMAIN"], "no other response code (SERVFAIL, REFUSED, ...):\n{text}");
    // dnsperf sends the file's lines in turn and all were answered, so each code's count matches its lines.
    let expected_noerror = lines.iter().filter(|(_, code)| *code == "NOERROR").count() as f64 / lines.len() as f64;
    let noerror = stats.rcodes["NOERROR"] as f64 / stats.completed as f64;
    assert!(
        (noerror - expected_noerror).abs() * stats.completed as f64 <= lines.len() as f64,
        "NOERROR share {noerror:.4}, expected {expected_noerror:.4}:\n{text}"
    );
}
