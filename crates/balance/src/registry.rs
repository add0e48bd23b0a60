//! The proxy's set of live pools by name: created, updated and dropped to match each new configuration, each
//! with its health checker; and their health for `/api/status` and `/metrics`.

use crate::check::{HealthTask, spawn_health_checks};
use crate::config::BalanceConfig;
use crate::pool::{EndpointHealth, PoolState};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// One pool of a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    /// The pool's name (the IR's key).
    pub name: String,
    /// Endpoints with their weights.
    pub endpoints: Vec<(SocketAddr, u32)>,
    /// Its settings.
    pub config: BalanceConfig,
}

struct Entry {
    state: Arc<PoolState>,
    checks: Option<HealthTask>,
}

/// Live pools by name, kept across configuration swaps. Not on the request path: the proxy puts the
/// `Arc<PoolState>` that [`PoolRegistry::sync`] returns into its compiled configuration.
#[derive(Default)]
pub struct PoolRegistry {
    pools: Mutex<BTreeMap<String, Entry>>,
}

impl PoolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        PoolRegistry::default()
    }

    /// Makes the registry hold exactly these pools: pools already known are updated (keeping the state of
    /// endpoints that stay), new ones created, the others dropped (their checks stop). A pool's health
    /// checker starts the first time it has an active check. Returns every pool by name.
    ///
    /// # Panics
    /// Outside a Tokio runtime when a health checker must start.
    pub fn sync(&self, pools: impl IntoIterator<Item = PoolSpec>) -> HashMap<String, Arc<PoolState>> {
        let mut registry = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        let mut kept = BTreeMap::new();
        for spec in pools {
            let checked = spec.config.health.is_some();
            let mut entry = match registry.remove(&spec.name) {
                Some(entry) => {
                    entry.state.update_weighted(spec.endpoints, spec.config);
                    entry
                }
                None => Entry { state: PoolState::new_weighted(&spec.name, spec.endpoints, spec.config), checks: None },
            };
            if checked && entry.checks.is_none() {
                entry.checks = Some(spawn_health_checks(Arc::clone(&entry.state)));
            }
            kept.insert(spec.name, entry);
        }
        // Pools left in `registry` are gone: dropping their entries stops their checkers.
        *registry = kept;
        registry.iter().map(|(name, entry)| (name.clone(), Arc::clone(&entry.state))).collect()
    }

    /// A pool by name.
    pub fn get(&self, name: &str) -> Option<Arc<PoolState>> {
        self.pools.lock().unwrap_or_else(PoisonError::into_inner).get(name).map(|e| Arc::clone(&e.state))
    }

    /// Every pool's endpoint health, by pool name (for `/api/status`).
    pub fn health(&self) -> BTreeMap<String, Vec<EndpointHealth>> {
        let pools: Vec<(String, Arc<PoolState>)> = self
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, entry)| (name.clone(), Arc::clone(&entry.state)))
            .collect();
        pools.into_iter().map(|(name, state)| (name, state.health())).collect()
    }

    /// Endpoint health and load in the Prometheus text format: `portico_endpoint_healthy`,
    /// `portico_endpoint_in_flight` (gauges), `portico_endpoint_requests_total` and
    /// `portico_endpoint_failed_requests_total` (counters), labelled by pool and endpoint.
    pub fn render_metrics(&self) -> String {
        let health = self.health();
        let mut out = String::new();
        let families: [Family; 4] = [
            ("portico_endpoint_healthy", "gauge", "1 when the endpoint gets new requests.", |h| u64::from(h.healthy)),
            ("portico_endpoint_in_flight", "gauge", "Requests in flight to the endpoint.", |h| h.in_flight as u64),
            ("portico_endpoint_requests_total", "counter", "Requests sent to the endpoint.", |h| h.requests),
            ("portico_endpoint_failed_requests_total", "counter", "Requests to the endpoint reported failed.", |h| {
                h.failed_requests
            }),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (pool, endpoints) in &health {
                for endpoint in endpoints {
                    let _ = writeln!(
                        out,
                        "{name}{{pool=\"{}\",endpoint=\"{}\"}} {}",
                        escape(pool),
                        endpoint.endpoint,
                        value(endpoint)
                    );
                }
            }
        }
        out
    }
}

impl std::fmt::Debug for PoolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("PoolRegistry").field("pools", &pools.keys().collect::<Vec<_>>()).finish()
    }
}

/// A metric family: name, type, help, and the value of one endpoint.
type Family = (&'static str, &'static str, &'static str, fn(&EndpointHealth) -> u64);

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
