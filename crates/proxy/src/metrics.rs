//! Prometheus metrics of the data plane, rendered in the text exposition format.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// A latency histogram.
#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    total: u64,
    sum: f64,
}

/// Requests by listener, then route, then status: nested so that the request path looks keys up by `&str`
/// and allocates only the first time a combination is seen.
type RequestCounts = HashMap<String, HashMap<String, HashMap<u16, u64>>>;

/// Counters and histograms of the proxy. Cheap enough for the request path: one short lock per request, no
/// allocation once a listener/route/status has been seen.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<RequestCounts>,
    latency: Mutex<HashMap<String, Histogram>>,
    upstream_errors: Mutex<HashMap<(String, &'static str), u64>>,
    generation: AtomicU64,
    connections: AtomicU64,
}

impl Metrics {
    /// Records one finished request.
    pub fn request(&self, listener: &str, route: &str, status: u16, elapsed: Duration) {
        if let Ok(mut requests) = self.requests.lock() {
            match requests.get_mut(listener).and_then(|r| r.get_mut(route)) {
                Some(by_status) => *by_status.entry(status).or_default() += 1,
                None => {
                    *requests
                        .entry(listener.to_string())
                        .or_default()
                        .entry(route.to_string())
                        .or_default()
                        .entry(status)
                        .or_default() += 1
                }
            }
        }
        if let Ok(mut latency) = self.latency.lock() {
            if !latency.contains_key(listener) {
                latency.insert(listener.to_string(), Histogram::default());
            }
            let Some(histogram) = latency.get_mut(listener) else { return };
            let seconds = elapsed.as_secs_f64();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    histogram.counts[i] += 1;
                }
            }
            histogram.total += 1;
            histogram.sum += seconds;
        }
    }

    /// Records a failure to reach a pool's endpoint (`kind`: connect, tls, timeout, ...).
    pub fn upstream_error(&self, pool: &str, kind: &'static str) {
        if let Ok(mut errors) = self.upstream_errors.lock() {
            *errors.entry((pool.to_string(), kind)).or_default() += 1;
        }
    }

    /// Sets the configuration generation being served.
    pub fn set_generation(&self, generation: u64) {
        self.generation.store(generation, Ordering::Relaxed);
    }

    /// Counts an accepted connection.
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP portico_config_generation Configuration generation being served.");
        let _ = writeln!(out, "# TYPE portico_config_generation gauge");
        let _ = writeln!(out, "portico_config_generation {}", self.generation.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP portico_connections_total Downstream connections accepted.");
        let _ = writeln!(out, "# TYPE portico_connections_total counter");
        let _ = writeln!(out, "portico_connections_total {}", self.connections.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP portico_requests_total Requests answered, by listener, route and status.");
        let _ = writeln!(out, "# TYPE portico_requests_total counter");
        if let Ok(requests) = self.requests.lock() {
            let mut rows: Vec<(&String, &String, &u16, &u64)> = requests
                .iter()
                .flat_map(|(l, routes)| {
                    routes.iter().flat_map(move |(r, s)| s.iter().map(move |(st, c)| (l, r, st, c)))
                })
                .collect();
            rows.sort();
            for (listener, route, status, count) in rows {
                let _ = writeln!(
                    out,
                    "portico_requests_total{{listener=\"{}\",route=\"{}\",status=\"{status}\"}} {count}",
                    escape(listener),
                    escape(route)
                );
            }
        }
        let _ = writeln!(out, "# HELP portico_request_duration_seconds Time from request to response headers.");
        let _ = writeln!(out, "# TYPE portico_request_duration_seconds histogram");
        if let Ok(latency) = self.latency.lock() {
            let mut rows: Vec<_> = latency.iter().collect();
            rows.sort_by(|a, b| a.0.cmp(b.0));
            for (listener, h) in rows {
                let l = escape(listener);
                for (i, bound) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "portico_request_duration_seconds_bucket{{listener=\"{l}\",le=\"{bound}\"}} {}",
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "portico_request_duration_seconds_bucket{{listener=\"{l}\",le=\"+Inf\"}} {}",
                    h.total
                );
                let _ = writeln!(out, "portico_request_duration_seconds_sum{{listener=\"{l}\"}} {}", h.sum);
                let _ = writeln!(out, "portico_request_duration_seconds_count{{listener=\"{l}\"}} {}", h.total);
            }
        }
        let _ = writeln!(out, "# HELP portico_upstream_errors_total Failures to reach a pool's endpoints.");
        let _ = writeln!(out, "# TYPE portico_upstream_errors_total counter");
        if let Ok(errors) = self.upstream_errors.lock() {
            let mut rows: Vec<_> = errors.iter().collect();
            rows.sort();
            for ((pool, kind), count) in rows {
                let _ =
                    writeln!(out, "portico_upstream_errors_total{{pool=\"{}\",kind=\"{kind}\"}} {count}", escape(pool));
            }
        }
        out
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
