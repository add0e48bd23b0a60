//! Prometheus metrics of the data plane, rendered in the text exposition format.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Latency buckets in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// The latency of one listener's requests. Each request counts in its own bucket only (one atomic add on the
/// request path); the cumulative counts Prometheus wants are summed when rendering.
#[derive(Default)]
pub struct Histogram {
    /// By bucket, the last one for requests slower than every bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// The requests of one route of one listener, by status (a handful of statuses: a list beats a map).
#[derive(Default)]
pub struct RouteCounter {
    by_status: Mutex<Vec<(u16, u64)>>,
}

impl RouteCounter {
    fn count(&self, status: u16) {
        let Ok(mut by_status) = self.by_status.lock() else { return };
        match by_status.iter_mut().find(|(s, _)| *s == status) {
            Some((_, count)) => *count += 1,
            None => by_status.push((status, 1)),
        }
    }
}

/// Where a compiled listener or route keeps its counters once it has found them by name, so that later requests
/// count without hashing names or taking the registry's lock. Empty in a new configuration; the counters found
/// are the same (the registry keeps them by name), so counts carry over configuration swaps.
pub type CounterSlot<T> = OnceLock<Arc<T>>;

/// Counters and histograms of the proxy.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<HashMap<(String, String), Arc<RouteCounter>>>,
    latency: Mutex<HashMap<String, Arc<Histogram>>>,
    upstream_errors: Mutex<HashMap<(String, &'static str), u64>>,
    generation: AtomicU64,
    connections: AtomicU64,
}

impl Metrics {
    /// Records one finished request, finding its counters by name.
    pub fn request(&self, listener: &str, route: &str, status: u16, elapsed: Duration) {
        self.route_counter(listener, route).count(status);
        self.histogram(listener).observe(elapsed);
    }

    /// Records one finished request with the counters cached in a compiled listener and route.
    pub fn request_cached(
        &self,
        (listener, histogram): (&str, &CounterSlot<Histogram>),
        (route, counter): (&str, &CounterSlot<RouteCounter>),
        status: u16,
        elapsed: Duration,
    ) {
        counter.get_or_init(|| self.route_counter(listener, route)).count(status);
        histogram.get_or_init(|| self.histogram(listener)).observe(elapsed);
    }

    fn route_counter(&self, listener: &str, route: &str) -> Arc<RouteCounter> {
        let Ok(mut requests) = self.requests.lock() else { return Arc::default() };
        requests.entry((listener.to_string(), route.to_string())).or_default().clone()
    }

    fn histogram(&self, listener: &str) -> Arc<Histogram> {
        let Ok(mut latency) = self.latency.lock() else { return Arc::default() };
        if let Some(histogram) = latency.get(listener) {
            return histogram.clone();
        }
        latency.entry(listener.to_string()).or_default().clone()
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
            let mut rows: Vec<(&String, &String, u16, u64)> = requests
                .iter()
                .flat_map(|((l, r), counter)| {
                    let by_status = counter.by_status.lock().map(|s| s.clone()).unwrap_or_default();
                    by_status.into_iter().map(move |(status, count)| (l, r, status, count))
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
                let counts: Vec<u64> = h.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
                let total: u64 = counts.iter().sum();
                if total == 0 {
                    continue;
                }
                let mut cumulative = 0;
                for (count, bound) in counts.iter().zip(BUCKETS) {
                    cumulative += count;
                    let _ = writeln!(
                        out,
                        "portico_request_duration_seconds_bucket{{listener=\"{l}\",le=\"{bound}\"}} {cumulative}"
                    );
                }
                let _ =
                    writeln!(out, "portico_request_duration_seconds_bucket{{listener=\"{l}\",le=\"+Inf\"}} {total}");
                let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
                let _ = writeln!(out, "portico_request_duration_seconds_sum{{listener=\"{l}\"}} {sum}");
                let _ = writeln!(out, "portico_request_duration_seconds_count{{listener=\"{l}\"}} {total}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cached_by_a_configuration_carry_over_to_the_next() {
        let metrics = Metrics::default();
        let (latency, counter) = (CounterSlot::new(), CounterSlot::new());
        metrics.request_cached(("l", &latency), ("r", &counter), 200, Duration::from_millis(2));
        // A new configuration starts with empty slots; they find the same counters by name.
        let (latency, counter) = (CounterSlot::new(), CounterSlot::new());
        metrics.request_cached(("l", &latency), ("r", &counter), 200, Duration::from_millis(20));
        metrics.request("l", "r", 503, Duration::from_millis(1));
        let text = metrics.render();
        for line in [
            "portico_requests_total{listener=\"l\",route=\"r\",status=\"200\"} 2",
            "portico_requests_total{listener=\"l\",route=\"r\",status=\"503\"} 1",
            "portico_request_duration_seconds_bucket{listener=\"l\",le=\"0.0025\"} 2",
            "portico_request_duration_seconds_bucket{listener=\"l\",le=\"0.025\"} 3",
            "portico_request_duration_seconds_sum{listener=\"l\"} 0.023",
            "portico_request_duration_seconds_count{listener=\"l\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }
}
