//! The load balancer operator's vocabulary (`ako.vmware.com`): HTTPRule `loadBalancerPolicy` algorithm and hash
//! names, `applicationPersistence` profile names, and the `HealthMonitor` resource. Names Portico cannot honour
//! are errors that name them, for the resource's status.

use crate::config::{
    Algorithm, DEFAULT_PERSISTENCE_COOKIE, HashKey, HealthCheck, HealthKind, HttpProbe, HttpsProbe, Persistence,
    ProbeMethod, StatusRange, TlsProbe,
};
use serde::Deserialize;
use std::time::Duration;

const SUPPORTED_ALGORITHMS: &str = "LB_ALGORITHM_ROUND_ROBIN, LB_ALGORITHM_LEAST_CONNECTIONS, \
     LB_ALGORITHM_CONSISTENT_HASH, LB_ALGORITHM_RANDOM";

/// Maps an operator algorithm name (`LB_ALGORITHM_LEAST_CONNECTIONS`; the `LB_ALGORITHM_` prefix may be left
/// out, case is ignored) and, for consistent hashing, its `hash` (`LB_ALGORITHM_CONSISTENT_HASH_SOURCE_IP_ADDRESS`,
/// the default, or `..._CUSTOM_HEADER` with `header`, the HTTPRule's `hostHeader`). `hash` and `header` are
/// ignored for other algorithms.
pub fn algorithm_from_operator(algorithm: &str, hash: Option<&str>, header: Option<&str>) -> Result<Algorithm, String> {
    let upper = algorithm.trim().to_ascii_uppercase();
    let short = upper.strip_prefix("LB_ALGORITHM_").unwrap_or(&upper);
    match short {
        "ROUND_ROBIN" => Ok(Algorithm::RoundRobin),
        "LEAST_CONNECTIONS" => Ok(Algorithm::LeastConnections),
        "RANDOM" => Ok(Algorithm::Random),
        "CONSISTENT_HASH" => hash_from_operator(hash, header).map(Algorithm::ConsistentHash),
        "CORE_AFFINITY" | "FASTEST_RESPONSE" | "FEWEST_SERVERS" | "LEAST_LOAD" | "FEWEST_TASKS" | "NEAREST_SERVER"
        | "TOPOLOGY" => Err(format!(
            "load-balancing algorithm LB_ALGORITHM_{short} is not supported by Portico (supported: \
             {SUPPORTED_ALGORITHMS})"
        )),
        _ => Err(format!("unknown load-balancing algorithm {algorithm:?} (supported: {SUPPORTED_ALGORITHMS})")),
    }
}

fn hash_from_operator(hash: Option<&str>, header: Option<&str>) -> Result<HashKey, String> {
    let Some(hash) = hash.map(str::trim).filter(|h| !h.is_empty()) else {
        return Ok(HashKey::SourceIp);
    };
    let upper = hash.to_ascii_uppercase();
    let short = upper.strip_prefix("LB_ALGORITHM_CONSISTENT_HASH_").unwrap_or(&upper);
    match short {
        "SOURCE_IP_ADDRESS" => Ok(HashKey::SourceIp),
        "CUSTOM_HEADER" => {
            let name = header.map(str::trim).filter(|h| !h.is_empty()).ok_or(
                "LB_ALGORITHM_CONSISTENT_HASH_CUSTOM_HEADER needs the header's name (loadBalancerPolicy.hostHeader)",
            )?;
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("consistent hash header {name:?} is not a valid header name"))?;
            Ok(HashKey::Header(name.to_ascii_lowercase()))
        }
        "SOURCE_IP_ADDRESS_AND_PORT" | "URI" | "CUSTOM_STRING" | "CALLID" => Err(format!(
            "consistent hash LB_ALGORITHM_CONSISTENT_HASH_{short} is not supported by Portico (supported: \
             LB_ALGORITHM_CONSISTENT_HASH_SOURCE_IP_ADDRESS, LB_ALGORITHM_CONSISTENT_HASH_CUSTOM_HEADER)"
        )),
        _ => Err(format!("unknown consistent hash {hash:?}")),
    }
}

/// Maps an `applicationPersistence` (HTTPRule) or `persistenceProfile` (RouteBackendExtension) name:
/// `System-Persistence-Http-Cookie` (or `Http-Cookie`) is a cookie named [`DEFAULT_PERSISTENCE_COOKIE`] for the
/// browser session, `System-Persistence-Client-IP` (or `Client-IP`) is by source address. Case is ignored.
pub fn persistence_from_operator(name: &str) -> Result<Persistence, String> {
    let lower = name.trim().to_ascii_lowercase();
    let short = lower.strip_prefix("system-persistence-").unwrap_or(&lower);
    match short {
        "http-cookie" => Ok(Persistence::Cookie { name: DEFAULT_PERSISTENCE_COOKIE.into(), ttl: None }),
        "client-ip" => Ok(Persistence::SourceIp),
        "tls" | "app-cookie" | "http-header" | "gslb-site" => Err(format!(
            "persistence profile {name:?} is not supported by Portico (supported: System-Persistence-Http-Cookie, \
             System-Persistence-Client-IP)"
        )),
        _ => Err(format!(
            "persistence profile {name:?} exists only inside the load balancer's controller (Portico supports \
             System-Persistence-Http-Cookie and System-Persistence-Client-IP)"
        )),
    }
}

/// The `spec` of an operator `HealthMonitor` (`ako.vmware.com/v1alpha1`), in its own snake_case field names, so
/// it can be deserialised from the resource directly. Unknown fields are ignored.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct OperatorHealthMonitor {
    /// `HEALTH_MONITOR_TCP`, `HEALTH_MONITOR_HTTP`, `HEALTH_MONITOR_HTTPS` (the prefix may be left out).
    #[serde(rename = "type")]
    pub kind: String,
    /// Seconds between probes (default 10).
    pub send_interval: Option<u64>,
    /// Seconds a probe may take (default 4); not more than `send_interval`.
    pub receive_timeout: Option<u64>,
    /// Successes that bring a server up (default 2).
    pub successful_checks: Option<u32>,
    /// Failures that take a server down (default 2).
    pub failed_checks: Option<u32>,
    /// Port to probe instead of the server's.
    pub monitor_port: Option<u16>,
    /// Only meaningful for the vendor's GSLB; reported when true.
    pub is_federated: Option<bool>,
    /// HTTP settings.
    pub http_monitor: Option<OperatorHttpMonitor>,
    /// HTTPS settings (same fields).
    pub https_monitor: Option<OperatorHttpMonitor>,
    /// TCP request/response settings; Portico's TCP check only connects, so set fields are reported.
    pub tcp_monitor: Option<OperatorTcpMonitor>,
}

/// `http_monitor` / `https_monitor` of a HealthMonitor.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct OperatorHttpMonitor {
    /// `GET /healthz HTTP/1.1`, optionally followed by `\r\nHost: name`; default `HEAD / HTTP/1.0`.
    pub http_request: Option<String>,
    /// `HTTP_ANY`, `HTTP_1XX` ... `HTTP_5XX`; default HTTP_2XX and HTTP_3XX.
    pub http_response_code: Vec<String>,
    /// Text the body must contain.
    pub http_response: Option<String>,
    /// Codes that mean "down for maintenance": never healthy, whatever `http_response_code` says.
    pub maintenance_code: Vec<u16>,
    /// Body text meaning maintenance: not supported, reported.
    pub maintenance_response: Option<String>,
    /// Send the request exactly as written: not supported (Portico adds Host and Connection), reported when true.
    pub exact_http_request: Option<bool>,
    /// Bytes of response examined; Portico examines up to 16 KiB.
    pub response_size: Option<u32>,
    /// References to the vendor's SSL/PKI profiles: reported when set.
    pub ssl_attributes: Option<serde::de::IgnoredAny>,
}

/// `tcp_monitor` of a HealthMonitor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct OperatorTcpMonitor {
    /// Data to send.
    pub tcp_request: Option<String>,
    /// Data expected back.
    pub tcp_response: Option<String>,
    /// Half-open (SYN only) check.
    pub tcp_half_open: Option<bool>,
    /// Data meaning maintenance.
    pub maintenance_response: Option<String>,
}

/// Maps a HealthMonitor to a [`HealthCheck`], with the fields Portico does not honour (to report on the
/// resource's status, not to ignore silently). Unsupported types (PING, UDP, DNS, ...) are errors.
pub fn health_check_from_operator(monitor: &OperatorHealthMonitor) -> Result<(HealthCheck, Vec<String>), String> {
    let mut ignored = Vec::new();
    let upper = monitor.kind.trim().to_ascii_uppercase();
    let short = upper.strip_prefix("HEALTH_MONITOR_").unwrap_or(&upper);
    let kind = match short {
        "TCP" => {
            if let Some(tcp) = &monitor.tcp_monitor {
                if tcp.tcp_request.is_some() || tcp.tcp_response.is_some() || tcp.maintenance_response.is_some() {
                    ignored.push("tcp_monitor: request/response data (Portico's TCP check only connects)".into());
                }
                if tcp.tcp_half_open == Some(true) {
                    ignored.push("tcp_monitor.tcp_half_open (Portico completes the connection)".into());
                }
            }
            HealthKind::Tcp
        }
        "HTTP" => HealthKind::Http(http_probe("http_monitor", monitor.http_monitor.as_ref(), &mut ignored)?),
        "HTTPS" => HealthKind::Https(HttpsProbe {
            http: http_probe("https_monitor", monitor.https_monitor.as_ref(), &mut ignored)?,
            tls: TlsProbe::default(),
        }),
        "" => return Err("HealthMonitor needs a type (HEALTH_MONITOR_TCP, _HTTP or _HTTPS)".into()),
        _ => {
            return Err(format!(
                "HealthMonitor type {:?} is not supported by Portico (supported: HEALTH_MONITOR_TCP, \
                 HEALTH_MONITOR_HTTP, HEALTH_MONITOR_HTTPS)",
                monitor.kind
            ));
        }
    };
    if monitor.is_federated == Some(true) {
        ignored.push("is_federated (GSLB only)".into());
    }
    let interval = monitor.send_interval.unwrap_or(10);
    let timeout = monitor.receive_timeout.unwrap_or(4);
    if interval == 0 || timeout == 0 {
        return Err("send_interval and receive_timeout must be at least 1 second".into());
    }
    if timeout > interval {
        return Err(format!("receive_timeout ({timeout}s) must not exceed send_interval ({interval}s)"));
    }
    let (rise, fall) = (monitor.successful_checks.unwrap_or(2), monitor.failed_checks.unwrap_or(2));
    if rise == 0 || fall == 0 {
        return Err("successful_checks and failed_checks must be at least 1".into());
    }
    if monitor.monitor_port == Some(0) {
        return Err("monitor_port 0 cannot be probed".into());
    }
    let check = HealthCheck {
        kind,
        interval: Duration::from_secs(interval),
        timeout: Duration::from_secs(timeout),
        rise,
        fall,
        port: monitor.monitor_port,
    };
    check.validate()?;
    Ok((check, ignored))
}

fn http_probe(
    field: &str,
    monitor: Option<&OperatorHttpMonitor>,
    ignored: &mut Vec<String>,
) -> Result<HttpProbe, String> {
    let default = OperatorHttpMonitor::default();
    let monitor = monitor.unwrap_or(&default);
    let request = monitor.http_request.as_deref().unwrap_or("HEAD / HTTP/1.0");
    // A YAML plain or single-quoted scalar keeps `\r\n` as four characters; accept both spellings.
    let request = request.replace("\\r\\n", "\n");
    let mut lines = request.split('\n').map(|l| l.trim_end_matches('\r'));
    let first = lines.next().unwrap_or_default();
    let mut words = first.split_whitespace();
    let method = match words.next().map(str::to_ascii_uppercase).as_deref() {
        Some("GET") => ProbeMethod::Get,
        Some("HEAD") => ProbeMethod::Head,
        Some(other) => {
            return Err(format!("{field}.http_request: method {other} is not supported (GET or HEAD)"));
        }
        None => return Err(format!("{field}.http_request is empty")),
    };
    let path = words.next().unwrap_or("/").to_string();
    let mut host = None;
    for line in lines.filter(|l| !l.trim().is_empty()) {
        match line.split_once(':') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("host") => host = Some(value.trim().to_string()),
            _ => ignored.push(format!("{field}.http_request header {line:?} (only Host is sent)")),
        }
    }
    let mut expected = Vec::new();
    for code in &monitor.http_response_code {
        let range = match code.trim().to_ascii_uppercase().as_str() {
            "HTTP_ANY" => StatusRange::new(100, 599),
            "HTTP_1XX" => StatusRange::new(100, 199),
            "HTTP_2XX" => StatusRange::new(200, 299),
            "HTTP_3XX" => StatusRange::new(300, 399),
            "HTTP_4XX" => StatusRange::new(400, 499),
            "HTTP_5XX" => StatusRange::new(500, 599),
            _ => return Err(format!("{field}.http_response_code: unknown value {code:?} (HTTP_2XX, ...)")),
        };
        expected.push(range);
    }
    if expected.is_empty() {
        expected.push(crate::config::DEFAULT_EXPECTED);
    }
    let expected = subtract(merge(expected), &monitor.maintenance_code);
    if expected.is_empty() {
        return Err(format!("{field}: maintenance_code leaves no healthy status"));
    }
    let body = monitor.http_response.clone().filter(|b| !b.is_empty());
    if body.is_some() && method == ProbeMethod::Head {
        return Err(format!("{field}: http_response needs a GET request (HEAD answers have no body)"));
    }
    if monitor.maintenance_response.is_some() {
        ignored.push(format!("{field}.maintenance_response"));
    }
    if monitor.exact_http_request == Some(true) {
        ignored.push(format!("{field}.exact_http_request (Portico adds Host and Connection: close)"));
    }
    if monitor.ssl_attributes.is_some() {
        ignored.push(format!("{field}.ssl_attributes (profiles inside the load balancer's controller)"));
    }
    Ok(HttpProbe { method, path, host, expected, body })
}

/// Sorts and joins overlapping or adjacent ranges.
fn merge(mut ranges: Vec<StatusRange>) -> Vec<StatusRange> {
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<StatusRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match out.last_mut() {
            Some(last) if range.start <= last.end.saturating_add(1) => last.end = last.end.max(range.end),
            _ => out.push(range),
        }
    }
    out
}

/// Removes single codes from ranges.
fn subtract(ranges: Vec<StatusRange>, codes: &[u16]) -> Vec<StatusRange> {
    let mut out = ranges;
    for &code in codes {
        out = out
            .into_iter()
            .flat_map(|r| {
                if !r.contains(code) {
                    return vec![r];
                }
                let mut parts = Vec::new();
                if code > r.start {
                    parts.push(StatusRange::new(r.start, code - 1));
                }
                if code < r.end {
                    parts.push(StatusRange::new(code + 1, r.end));
                }
                parts
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_map_and_unsupported_ones_are_named() {
        assert_eq!(algorithm_from_operator("LB_ALGORITHM_ROUND_ROBIN", None, None), Ok(Algorithm::RoundRobin));
        assert_eq!(
            algorithm_from_operator("LB_ALGORITHM_LEAST_CONNECTIONS", Some("ignored"), None),
            Ok(Algorithm::LeastConnections)
        );
        assert_eq!(algorithm_from_operator("random", None, None), Ok(Algorithm::Random));
        assert_eq!(
            algorithm_from_operator("LB_ALGORITHM_CONSISTENT_HASH", None, None),
            Ok(Algorithm::ConsistentHash(HashKey::SourceIp))
        );
        assert_eq!(
            algorithm_from_operator(
                "LB_ALGORITHM_CONSISTENT_HASH",
                Some("LB_ALGORITHM_CONSISTENT_HASH_SOURCE_IP_ADDRESS"),
                None
            ),
            Ok(Algorithm::ConsistentHash(HashKey::SourceIp))
        );
        assert_eq!(
            algorithm_from_operator(
                "LB_ALGORITHM_CONSISTENT_HASH",
                Some("LB_ALGORITHM_CONSISTENT_HASH_CUSTOM_HEADER"),
                Some("X-User")
            ),
            Ok(Algorithm::ConsistentHash(HashKey::Header("x-user".into())))
        );
        let no_header = algorithm_from_operator(
            "LB_ALGORITHM_CONSISTENT_HASH",
            Some("LB_ALGORITHM_CONSISTENT_HASH_CUSTOM_HEADER"),
            None,
        );
        assert!(no_header.is_err_and(|e| e.contains("hostHeader")));
        let uri =
            algorithm_from_operator("LB_ALGORITHM_CONSISTENT_HASH", Some("LB_ALGORITHM_CONSISTENT_HASH_URI"), None);
        assert!(uri.is_err_and(|e| e.contains("LB_ALGORITHM_CONSISTENT_HASH_URI")));
        for name in ["LB_ALGORITHM_FEWEST_SERVERS", "LB_ALGORITHM_CORE_AFFINITY", "LB_ALGORITHM_FASTEST_RESPONSE"] {
            let error = algorithm_from_operator(name, None, None).expect_err(name);
            assert!(error.contains(name) && error.contains("not supported"), "{error}");
        }
        assert!(algorithm_from_operator("LB_ALGORITHM_BOGUS", None, None).is_err_and(|e| e.contains("unknown")));
    }

    #[test]
    fn persistence_names_map() {
        assert_eq!(
            persistence_from_operator("System-Persistence-Http-Cookie"),
            Ok(Persistence::Cookie { name: DEFAULT_PERSISTENCE_COOKIE.into(), ttl: None })
        );
        assert_eq!(persistence_from_operator("System-Persistence-Client-IP"), Ok(Persistence::SourceIp));
        assert_eq!(persistence_from_operator("Client-IP"), Ok(Persistence::SourceIp));
        assert!(persistence_from_operator("System-Persistence-TLS").is_err_and(|e| e.contains("not supported")));
        assert!(persistence_from_operator("my-team-profile").is_err_and(|e| e.contains("my-team-profile")));
    }

    #[test]
    fn the_articles_health_monitor_maps() {
        // ../../../shared/fixtures/article/platform/healthmonitor.yaml, spec as JSON.
        let spec = serde_json::json!({
            "type": "HEALTH_MONITOR_HTTP",
            "send_interval": 10,
            "receive_timeout": 4,
            "successful_checks": 2,
            "failed_checks": 2,
            "monitor_port": 80,
            "is_federated": false,
            "http_monitor": {
                "http_request": "GET /healthz HTTP/1.1",
                "http_response_code": ["HTTP_2XX"],
                "http_response": "OK",
                "exact_http_request": false,
                "maintenance_code": [503],
                "maintenance_response": "Maintenance",
                "response_size": 2048
            }
        });
        let monitor: OperatorHealthMonitor = serde_json::from_value(spec).expect("parses");
        let (check, ignored) = health_check_from_operator(&monitor).expect("maps");
        assert_eq!(
            check,
            HealthCheck {
                kind: HealthKind::Http(HttpProbe {
                    method: ProbeMethod::Get,
                    path: "/healthz".into(),
                    host: None,
                    expected: vec![StatusRange::new(200, 299)],
                    body: Some("OK".into()),
                }),
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(4),
                rise: 2,
                fall: 2,
                port: Some(80),
            }
        );
        assert_eq!(ignored, vec!["http_monitor.maintenance_response".to_string()]);
    }

    #[test]
    fn health_monitor_details() {
        let monitor = OperatorHealthMonitor {
            kind: "HTTPS".into(),
            https_monitor: Some(OperatorHttpMonitor {
                http_request: Some("HEAD /ready HTTP/1.1\r\nHost: app.example\r\nX-Probe: 1".into()),
                http_response_code: vec!["HTTP_2XX".into(), "HTTP_3XX".into(), "HTTP_5XX".into()],
                maintenance_code: vec![503],
                ..OperatorHttpMonitor::default()
            }),
            ..OperatorHealthMonitor::default()
        };
        let (check, ignored) = health_check_from_operator(&monitor).expect("maps");
        let HealthKind::Https(https) = check.kind else { panic!("https expected") };
        assert_eq!(https.http.method, ProbeMethod::Head);
        assert_eq!(https.http.path, "/ready");
        assert_eq!(https.http.host.as_deref(), Some("app.example"));
        assert_eq!(
            https.http.expected,
            vec![StatusRange::new(200, 399), StatusRange::new(500, 502), StatusRange::new(504, 599)]
        );
        assert_eq!(ignored.len(), 1, "{ignored:?}");
        assert_eq!(check.interval, Duration::from_secs(10));

        let tcp = OperatorHealthMonitor { kind: "HEALTH_MONITOR_TCP".into(), ..OperatorHealthMonitor::default() };
        assert_eq!(health_check_from_operator(&tcp).map(|(c, _)| c.kind), Ok(HealthKind::Tcp));
        let ping = OperatorHealthMonitor { kind: "HEALTH_MONITOR_PING".into(), ..OperatorHealthMonitor::default() };
        assert!(health_check_from_operator(&ping).is_err_and(|e| e.contains("HEALTH_MONITOR_PING")));
        let slow = OperatorHealthMonitor {
            kind: "TCP".into(),
            send_interval: Some(5),
            receive_timeout: Some(6),
            ..OperatorHealthMonitor::default()
        };
        assert!(health_check_from_operator(&slow).is_err_and(|e| e.contains("receive_timeout")));
        let post = OperatorHealthMonitor {
            kind: "HTTP".into(),
            http_monitor: Some(OperatorHttpMonitor {
                http_request: Some("POST /x HTTP/1.1".into()),
                ..OperatorHttpMonitor::default()
            }),
            ..OperatorHealthMonitor::default()
        };
        assert!(health_check_from_operator(&post).is_err_and(|e| e.contains("POST")));
    }
}
