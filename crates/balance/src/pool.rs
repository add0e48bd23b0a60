//! The live state of a pool: endpoints with their health and load, the configuration in force, and the
//! request-path choice of an endpoint.
//!
//! The request path reads one [`ArcSwap`] snapshot (no lock) and touches only atomics; it allocates only the
//! `Set-Cookie` value when persistence by cookie assigns an endpoint. Configuration swaps build a new snapshot
//! off the request path and carry over the state of endpoints that stay.

use crate::check::Probe;
use crate::config::{Algorithm, BalanceConfig, HashKey, Persistence, duration_format};
use crate::hash;
use arc_swap::ArcSwap;
use http::HeaderMap;
use http::header::{COOKIE, HeaderName};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Longest weighted round-robin schedule; larger weight sums are scaled down to it (each endpoint keeps at
/// least one slot). Random, power-of-two-choices and consistent hashing use the exact weights.
const MAX_SCHEDULE: u64 = 4096;

/// What the balancer needs to know about a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    /// The client's address (the TCP peer, or the address a trusted proxy reported).
    pub client_ip: IpAddr,
    /// The request's headers (for hash keys and persistence cookies).
    pub headers: &'a HeaderMap,
}

/// The endpoint chosen for a request.
#[derive(Debug)]
pub struct Pick {
    /// Where to send the request.
    pub endpoint: SocketAddr,
    /// Counts the request as in flight on the endpoint until dropped: keep it until the response is done.
    pub guard: InFlightGuard,
    /// A `Set-Cookie` value to add to the response when persistence by cookie assigned a new endpoint
    /// (`name=<id>; Path=/; HttpOnly[; Max-Age=N]`; the proxy may append `; Secure` on HTTPS).
    pub set_cookie: Option<String>,
}

/// One request in flight on an endpoint; decrements the endpoint's count when dropped. It stays valid when
/// the endpoint leaves the pool.
pub struct InFlightGuard {
    state: Arc<EndpointState>,
}

impl InFlightGuard {
    /// The endpoint the request went to.
    pub fn endpoint(&self) -> SocketAddr {
        self.state.address
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Relaxed);
    }
}

impl fmt::Debug for InFlightGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlightGuard").field("endpoint", &self.state.address).finish()
    }
}

/// How a request to an endpoint ended, for passive health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// An answer below 500: resets the endpoint's run of errors.
    Success,
    /// The connection could not be made (refused, reset, TLS failure).
    ConnectError,
    /// No answer in time.
    Timeout,
    /// A 5xx answer.
    Status5xx,
}

/// Health and load of one endpoint, for `/api/status` and `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointHealth {
    /// The endpoint.
    pub endpoint: SocketAddr,
    /// Its weight (0: no new requests).
    pub weight: u32,
    /// Up by active checks and not ejected: it gets new requests.
    pub healthy: bool,
    /// The active checks' verdict (true when there are none).
    pub checked_up: bool,
    /// Time left of a passive ejection.
    #[serde(skip_serializing_if = "Option::is_none", with = "duration_format::option")]
    pub ejected_for: Option<Duration>,
    /// Requests in flight now.
    pub in_flight: usize,
    /// Requests sent to it so far.
    pub requests: u64,
    /// Requests reported failed so far.
    pub failed_requests: u64,
    /// Active checks failed in a row.
    pub consecutive_failures: u32,
    /// Requests failed in a row (passive health).
    pub consecutive_errors: u32,
    /// Why the last active check failed; `None` when it succeeded or none ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// State of one endpoint, shared by the snapshots that hold it and by in-flight guards.
pub(crate) struct EndpointState {
    pub(crate) address: SocketAddr,
    id: u64,
    seed: u64,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failed_requests: AtomicU64,
    /// Active checks' verdict.
    up: AtomicBool,
    check_successes: AtomicU32,
    check_failures: AtomicU32,
    consecutive_errors: AtomicU32,
    /// Milliseconds since the pool's epoch (at least 1) until which the endpoint is ejected; 0 when never.
    ejected_until: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl EndpointState {
    fn new(address: SocketAddr) -> Self {
        let id = hash::endpoint_id(address);
        EndpointState {
            address,
            id,
            seed: hash::mix(id ^ 0x9e37_79b9_7f4a_7c15),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failed_requests: AtomicU64::new(0),
            up: AtomicBool::new(true),
            check_successes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            consecutive_errors: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Applies the result of an active check.
    pub(crate) fn record_check(&self, pool: &str, result: Result<(), String>, rise: u32, fall: u32) {
        match result {
            Ok(()) => {
                self.check_failures.store(0, Relaxed);
                let successes = self.check_successes.fetch_add(1, Relaxed).saturating_add(1);
                *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = None;
                if successes >= rise && !self.up.swap(true, Relaxed) {
                    tracing::info!(pool, endpoint = %self.address, successes, "endpoint is up (health check)");
                }
            }
            Err(error) => {
                self.check_successes.store(0, Relaxed);
                let failures = self.check_failures.fetch_add(1, Relaxed).saturating_add(1);
                if failures >= fall && self.up.swap(false, Relaxed) {
                    tracing::warn!(pool, endpoint = %self.address, failures, %error, "endpoint is down (health check)");
                } else {
                    tracing::debug!(pool, endpoint = %self.address, failures, %error, "health check failed");
                }
                *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
            }
        }
    }

    fn reset_checks(&self) {
        self.up.store(true, Relaxed);
        self.check_successes.store(0, Relaxed);
        self.check_failures.store(0, Relaxed);
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// The current time in milliseconds since the pool's epoch, read at most once per pick and only if an
/// endpoint has ever been ejected.
struct Clock {
    epoch: Instant,
    now: Option<u64>,
}

impl Clock {
    fn new(epoch: Instant) -> Self {
        Clock { epoch, now: None }
    }

    fn millis(&mut self) -> u64 {
        let epoch = self.epoch;
        *self.now.get_or_insert_with(|| u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

struct Slot {
    state: Arc<EndpointState>,
    weight: u32,
}

enum CompiledKey {
    SourceIp,
    Header(HeaderName),
    Cookie(String),
}

enum CompiledAlgorithm {
    RoundRobin,
    LeastConnections,
    Random,
    PowerOfTwoChoices,
    ConsistentHash(CompiledKey),
}

struct CookieSettings {
    name: String,
    /// `; Path=/; HttpOnly[; Max-Age=N]`
    attributes: String,
}

impl CookieSettings {
    fn header(&self, id: u64) -> String {
        let mut value = String::with_capacity(self.name.len() + 17 + self.attributes.len());
        value.push_str(&self.name);
        value.push('=');
        value.push_str(&hash::format_id(id));
        value.push_str(&self.attributes);
        value
    }
}

enum CompiledPersistence {
    Cookie(CookieSettings),
    SourceIp,
}

/// One configuration generation of a pool: immutable but for the endpoints' atomics.
pub(crate) struct Snapshot {
    config: BalanceConfig,
    endpoints: Vec<Slot>,
    /// Weighted, interleaved round-robin order of endpoint indexes (weight-0 endpoints left out).
    schedule: Vec<u32>,
    /// `cumulative[i]`: sum of the weights of endpoints `0..=i`.
    cumulative: Vec<u64>,
    total_weight: u64,
    equal_weights: bool,
    by_id: HashMap<u64, usize>,
    by_address: HashMap<SocketAddr, usize, foldhash::fast::RandomState>,
    algorithm: CompiledAlgorithm,
    persistence: Option<CompiledPersistence>,
    pub(crate) probe: Option<Arc<Probe>>,
}

impl Snapshot {
    fn build(pool: &str, endpoints: Vec<(SocketAddr, u32)>, config: BalanceConfig, old: Option<&Snapshot>) -> Self {
        // Merge duplicates (two backends naming one address), keeping the first position.
        let mut by_address: HashMap<SocketAddr, usize, _> =
            HashMap::with_capacity_and_hasher(endpoints.len(), foldhash::fast::RandomState::default());
        let mut merged: Vec<(SocketAddr, u32)> = Vec::with_capacity(endpoints.len());
        for (address, weight) in endpoints {
            match by_address.get(&address) {
                Some(&i) => merged[i].1 = merged[i].1.saturating_add(weight),
                None => {
                    by_address.insert(address, merged.len());
                    merged.push((address, weight));
                }
            }
        }
        let slots: Vec<Slot> = merged
            .into_iter()
            .map(|(address, weight)| {
                let kept = old.and_then(|o| o.by_address.get(&address).map(|&i| Arc::clone(&o.endpoints[i].state)));
                let state = kept.unwrap_or_else(|| Arc::new(EndpointState::new(address)));
                if config.health.is_none() {
                    state.reset_checks();
                }
                Slot { state, weight }
            })
            .collect();
        let weights: Vec<u32> = slots.iter().map(|s| s.weight).collect();
        let mut cumulative = Vec::with_capacity(slots.len());
        let mut total_weight = 0u64;
        for &w in &weights {
            total_weight += u64::from(w);
            cumulative.push(total_weight);
        }
        let mut nonzero = weights.iter().filter(|&&w| w > 0);
        let first = nonzero.next().copied();
        let equal_weights = nonzero.all(|&w| Some(w) == first);
        let by_id = slots.iter().enumerate().map(|(i, s)| (s.state.id, i)).collect();
        let algorithm = match &config.algorithm {
            Algorithm::RoundRobin => CompiledAlgorithm::RoundRobin,
            Algorithm::LeastConnections => CompiledAlgorithm::LeastConnections,
            Algorithm::Random => CompiledAlgorithm::Random,
            Algorithm::PowerOfTwoChoices => CompiledAlgorithm::PowerOfTwoChoices,
            Algorithm::ConsistentHash(key) => CompiledAlgorithm::ConsistentHash(match key {
                HashKey::SourceIp => CompiledKey::SourceIp,
                HashKey::Header(name) => match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(name) => CompiledKey::Header(name),
                    Err(_) => {
                        tracing::warn!(pool, header = %name, "invalid hash header name; hashing the source address");
                        CompiledKey::SourceIp
                    }
                },
                HashKey::Cookie(name) => CompiledKey::Cookie(name.clone()),
            }),
        };
        let persistence = config.persistence.as_ref().map(|p| match p {
            Persistence::SourceIp => CompiledPersistence::SourceIp,
            Persistence::Cookie { name, ttl } => {
                let mut attributes = String::from("; Path=/; HttpOnly");
                if let Some(ttl) = ttl {
                    attributes.push_str(&format!("; Max-Age={}", ttl.as_secs().max(1)));
                }
                CompiledPersistence::Cookie(CookieSettings { name: name.clone(), attributes })
            }
        });
        let probe = config.health.as_ref().map(|check| Arc::new(Probe::new(check)));
        Snapshot {
            schedule: schedule(&weights),
            endpoints: slots,
            cumulative,
            total_weight,
            equal_weights,
            by_id,
            by_address,
            algorithm,
            persistence,
            probe,
            config,
        }
    }

    pub(crate) fn states(&self) -> impl Iterator<Item = &Arc<EndpointState>> {
        self.endpoints.iter().map(|s| &s.state)
    }

    fn eligible(&self, index: usize, clock: &mut Clock) -> bool {
        let slot = &self.endpoints[index];
        if slot.weight == 0 || !slot.state.up.load(Relaxed) {
            return false;
        }
        let until = slot.state.ejected_until.load(Relaxed);
        until == 0 || clock.millis() >= until
    }

    fn first_eligible(&self, start: usize, clock: &mut Clock) -> Option<usize> {
        let n = self.endpoints.len();
        (0..n).map(|k| (start + k) % n).find(|&i| self.eligible(i, clock))
    }

    fn balance(&self, request: &RequestInfo<'_>, cursor: &AtomicUsize, clock: &mut Clock) -> Option<usize> {
        match &self.algorithm {
            CompiledAlgorithm::RoundRobin => self.round_robin(cursor, clock),
            CompiledAlgorithm::LeastConnections => self.least_connections(cursor, clock),
            CompiledAlgorithm::Random => self.random(None, clock),
            CompiledAlgorithm::PowerOfTwoChoices => self.power_of_two(clock),
            CompiledAlgorithm::ConsistentHash(key) => {
                let key = match key {
                    CompiledKey::SourceIp => None,
                    CompiledKey::Header(name) => request.headers.get(name).map(|v| hash::bytes(v.as_bytes())),
                    CompiledKey::Cookie(name) => cookie_value(request.headers, name).map(|v| hash::bytes(v.as_bytes())),
                };
                self.rendezvous(key.unwrap_or_else(|| hash::ip(request.client_ip)), clock)
            }
        }
    }

    /// Each schedule slot in turn; a slot whose endpoint is unhealthy passes its turn to the next slot's
    /// owner by taking the next ticket, so the healthy endpoints share its turns in proportion.
    fn round_robin(&self, cursor: &AtomicUsize, clock: &mut Clock) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        for _ in 0..len {
            let index = self.schedule[cursor.fetch_add(1, Relaxed) % len] as usize;
            if self.eligible(index, clock) {
                return Some(index);
            }
        }
        self.first_eligible(cursor.load(Relaxed), clock)
    }

    /// Fewest in flight per unit of weight; the scan starts at the next round-robin endpoint, so ties rotate
    /// in proportion to the weights.
    fn least_connections(&self, cursor: &AtomicUsize, clock: &mut Clock) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let start = self.schedule[cursor.fetch_add(1, Relaxed) % len] as usize;
        let n = self.endpoints.len();
        let mut best: Option<(usize, u128, u128)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !self.eligible(i, clock) {
                continue;
            }
            let load = self.endpoints[i].state.in_flight.load(Relaxed) as u128;
            let weight = u128::from(self.endpoints[i].weight);
            if best.is_none_or(|(_, best_load, best_weight)| load * best_weight < best_load * weight) {
                best = Some((i, load, weight));
            }
        }
        best.map(|(i, _, _)| i)
    }

    /// A weighted random eligible endpoint other than `exclude`: rejection sampling over all endpoints a few
    /// times, then an exact draw over the eligible ones (both give the weights restricted to eligible ones).
    fn random(&self, exclude: Option<usize>, clock: &mut Clock) -> Option<usize> {
        if self.total_weight == 0 {
            return None;
        }
        for _ in 0..8 {
            let ticket = rand::random_range(0..self.total_weight);
            let i = self.cumulative.partition_point(|&c| c <= ticket);
            if i < self.endpoints.len() && Some(i) != exclude && self.eligible(i, clock) {
                return Some(i);
            }
        }
        let candidates = |i: &usize| Some(*i) != exclude;
        let total: u64 = (0..self.endpoints.len())
            .filter(candidates)
            .filter(|&i| self.eligible(i, clock))
            .map(|i| u64::from(self.endpoints[i].weight))
            .sum();
        if total == 0 {
            return None;
        }
        let mut ticket = rand::random_range(0..total);
        let mut last = None;
        for i in (0..self.endpoints.len()).filter(candidates) {
            if !self.eligible(i, clock) {
                continue;
            }
            let weight = u64::from(self.endpoints[i].weight);
            if ticket < weight {
                return Some(i);
            }
            ticket -= weight;
            last = Some(i);
        }
        last
    }

    /// Two random endpoints; the one with fewer in flight per unit of weight.
    fn power_of_two(&self, clock: &mut Clock) -> Option<usize> {
        let a = self.random(None, clock)?;
        let Some(b) = self.random(Some(a), clock) else {
            return Some(a);
        };
        let load = |i: usize| self.endpoints[i].state.in_flight.load(Relaxed) as u128;
        let weight = |i: usize| u128::from(self.endpoints[i].weight);
        Some(if load(b) * weight(a) < load(a) * weight(b) { b } else { a })
    }

    /// Highest random weight: the eligible endpoint with the best score for the key. With unequal weights
    /// the score is `-weight / ln(u)` (weighted rendezvous hashing), so shares follow the weights.
    fn rendezvous(&self, key: u64, clock: &mut Clock) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        let mut best_hash: Option<(usize, u64)> = None;
        for i in 0..self.endpoints.len() {
            if !self.eligible(i, clock) {
                continue;
            }
            let h = hash::score(key, self.endpoints[i].state.seed);
            if self.equal_weights {
                if best_hash.is_none_or(|(_, b)| h > b) {
                    best_hash = Some((i, h));
                }
            } else {
                let score = -f64::from(self.endpoints[i].weight) / hash::unit(h).ln();
                if best.is_none_or(|(_, b)| score > b) {
                    best = Some((i, score));
                }
            }
        }
        best_hash.map(|(i, _)| i).or(best.map(|(i, _)| i))
    }
}

/// The value of a request cookie (first occurrence), without surrounding quotes.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A smooth weighted round-robin order: endpoint `i` with weight `w` gets slots at virtual times
/// `(k + 1/2) / w`, `k < w`, all merged in time order (ties by index). Equal weights give `0, 1, ..., n-1`.
fn schedule(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
    if divisor == 0 {
        return Vec::new();
    }
    let mut reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w) / divisor).collect();
    let sum: u64 = reduced.iter().sum();
    let count = reduced.iter().filter(|&&w| w > 0).count() as u64;
    if sum > MAX_SCHEDULE.max(count) {
        for w in reduced.iter_mut().filter(|w| **w > 0) {
            *w = (*w * MAX_SCHEDULE / sum).max(1);
        }
    }
    let mut entries: Vec<(u64, u64, u32)> = Vec::new();
    for (i, &w) in reduced.iter().enumerate() {
        let Ok(index) = u32::try_from(i) else { break };
        entries.extend((0..w).map(|k| (2 * k + 1, w, index)));
    }
    // Compare (2k+1)/w exactly.
    entries.sort_by(|a, b| {
        (u128::from(a.0) * u128::from(b.1)).cmp(&(u128::from(b.0) * u128::from(a.1))).then(a.2.cmp(&b.2))
    });
    entries.into_iter().map(|(_, _, i)| i).collect()
}

/// The live state of one pool, kept across configuration swaps: the proxy keeps these by pool name and calls
/// [`PoolState::update`] when the pool's endpoints or settings change.
pub struct PoolState {
    pub(crate) name: Arc<str>,
    epoch: Instant,
    pub(crate) current: ArcSwap<Snapshot>,
    cursor: AtomicUsize,
    updating: Mutex<()>,
    pub(crate) wake: Arc<Notify>,
}

impl PoolState {
    /// A pool of equally weighted endpoints. Endpoints start healthy (active checks take them down after
    /// `fall` failures).
    pub fn new(name: &str, endpoints: Vec<SocketAddr>, config: BalanceConfig) -> Arc<Self> {
        Self::new_weighted(name, endpoints.into_iter().map(|e| (e, 1)).collect(), config)
    }

    /// A pool of weighted endpoints (weight 0: no new requests). A repeated address has its weights added.
    pub fn new_weighted(name: &str, endpoints: Vec<(SocketAddr, u32)>, config: BalanceConfig) -> Arc<Self> {
        let snapshot = Snapshot::build(name, endpoints, config, None);
        Arc::new(PoolState {
            name: Arc::from(name),
            epoch: Instant::now(),
            current: ArcSwap::from_pointee(snapshot),
            cursor: AtomicUsize::new(0),
            updating: Mutex::new(()),
            wake: Arc::new(Notify::new()),
        })
    }

    /// Takes a new endpoint list and configuration (all endpoints weight 1). Endpoints that stay keep their
    /// health, in-flight count, ejection and counters; new ones start healthy; requests in flight to removed
    /// ones finish normally. Without an active check, every endpoint's check verdict is reset to up.
    pub fn update(&self, endpoints: Vec<SocketAddr>, config: BalanceConfig) {
        self.update_weighted(endpoints.into_iter().map(|e| (e, 1)).collect(), config);
    }

    /// [`PoolState::update`] with weights.
    pub fn update_weighted(&self, endpoints: Vec<(SocketAddr, u32)>, config: BalanceConfig) {
        let _serial = self.updating.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.current.load_full();
        let snapshot = Snapshot::build(&self.name, endpoints, config, Some(&old));
        self.current.store(Arc::new(snapshot));
        // Let the health checker see the new endpoints and settings.
        self.wake.notify_waiters();
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration in force.
    pub fn config(&self) -> BalanceConfig {
        self.current.load().config.clone()
    }

    /// The endpoints, in order.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.current.load().endpoints.iter().map(|s| s.state.address).collect()
    }

    /// Picks an endpoint for a request: the persistence target if it is healthy, else by the algorithm.
    /// `None` when no endpoint is healthy (the proxy answers 503).
    pub fn pick(&self, request: &RequestInfo<'_>) -> Option<Pick> {
        let snapshot = self.current.load();
        let mut clock = Clock::new(self.epoch);
        let mut set_cookie = None;
        let index = match &snapshot.persistence {
            None => snapshot.balance(request, &self.cursor, &mut clock)?,
            Some(CompiledPersistence::SourceIp) => snapshot.rendezvous(hash::ip(request.client_ip), &mut clock)?,
            Some(CompiledPersistence::Cookie(cookie)) => {
                let pinned = cookie_value(request.headers, &cookie.name)
                    .and_then(hash::parse_id)
                    .and_then(|id| snapshot.by_id.get(&id).copied())
                    .filter(|&i| snapshot.eligible(i, &mut clock));
                match pinned {
                    Some(i) => i,
                    None => {
                        let i = snapshot.balance(request, &self.cursor, &mut clock)?;
                        set_cookie = Some(cookie.header(snapshot.endpoints[i].state.id));
                        i
                    }
                }
            }
        };
        let state = &snapshot.endpoints[index].state;
        state.in_flight.fetch_add(1, Relaxed);
        state.requests.fetch_add(1, Relaxed);
        Some(Pick { endpoint: state.address, guard: InFlightGuard { state: Arc::clone(state) }, set_cookie })
    }

    /// Reports how a request to `endpoint` ended (passive health). With passive health configured,
    /// `consecutive_errors` failures in a row eject the endpoint for the ejection time; a success resets the
    /// run. Reports for endpoints no longer in the pool are ignored.
    pub fn report(&self, endpoint: SocketAddr, outcome: Outcome) {
        let snapshot = self.current.load();
        let Some(&index) = snapshot.by_address.get(&endpoint) else {
            return;
        };
        let state = &snapshot.endpoints[index].state;
        if outcome == Outcome::Success {
            if state.consecutive_errors.load(Relaxed) != 0 {
                state.consecutive_errors.store(0, Relaxed);
            }
            return;
        }
        state.failed_requests.fetch_add(1, Relaxed);
        let Some(passive) = &snapshot.config.passive else {
            state.consecutive_errors.fetch_add(1, Relaxed);
            return;
        };
        let mut clock = Clock::new(self.epoch);
        let until = state.ejected_until.load(Relaxed);
        if until != 0 && clock.millis() < until {
            // Already ejected: answers of requests sent before the ejection do not extend it.
            return;
        }
        let errors = state.consecutive_errors.fetch_add(1, Relaxed).saturating_add(1);
        if errors >= passive.consecutive_errors
            && state.consecutive_errors.compare_exchange(errors, 0, Relaxed, Relaxed).is_ok()
        {
            let ejection = u64::try_from(passive.ejection.as_millis()).unwrap_or(u64::MAX);
            state.ejected_until.store(clock.millis().saturating_add(ejection).max(1), Relaxed);
            tracing::warn!(
                pool = %self.name,
                %endpoint,
                errors,
                ejection = %duration_format::format(passive.ejection),
                ?outcome,
                "endpoint ejected after consecutive errors"
            );
        }
    }

    /// Health and load of every endpoint, in order.
    pub fn health(&self) -> Vec<EndpointHealth> {
        let snapshot = self.current.load();
        let mut clock = Clock::new(self.epoch);
        snapshot
            .endpoints
            .iter()
            .map(|slot| {
                let s = &slot.state;
                let until = s.ejected_until.load(Relaxed);
                let ejected_for =
                    (until != 0 && clock.millis() < until).then(|| Duration::from_millis(until - clock.millis()));
                let checked_up = s.up.load(Relaxed);
                EndpointHealth {
                    endpoint: s.address,
                    weight: slot.weight,
                    healthy: checked_up && ejected_for.is_none(),
                    checked_up,
                    ejected_for,
                    in_flight: s.in_flight.load(Relaxed),
                    requests: s.requests.load(Relaxed),
                    failed_requests: s.failed_requests.load(Relaxed),
                    consecutive_failures: s.check_failures.load(Relaxed),
                    consecutive_errors: s.consecutive_errors.load(Relaxed),
                    last_error: s.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone(),
                }
            })
            .collect()
    }

    /// Runs one round of active checks now (every endpoint probed once, results applied with the usual rise and
    /// fall counts) and waits for it. Does nothing without an active check. For tests and "check now" buttons;
    /// [`spawn_health_checks`](crate::spawn_health_checks) does this every interval.
    pub async fn check_now(&self) {
        let snapshot = self.current.load_full();
        if let Some(probe) = snapshot.probe.clone() {
            crate::check::run_round(&self.name, &snapshot, &probe).await;
        }
    }
}

impl Drop for PoolState {
    fn drop(&mut self) {
        // Wakes the health checker so it sees the pool is gone and stops.
        self.wake.notify_waiters();
    }
}

impl fmt::Debug for PoolState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.current.load();
        f.debug_struct("PoolState")
            .field("name", &self.name)
            .field("endpoints", &snapshot.endpoints.iter().map(|s| s.state.address).collect::<Vec<_>>())
            .field("config", &snapshot.config)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_interleave_by_weight() {
        assert_eq!(schedule(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(schedule(&[2, 2]), vec![0, 1]);
        assert_eq!(schedule(&[1, 0, 1]), vec![0, 2]);
        assert_eq!(schedule(&[0, 0]), Vec::<u32>::new());
        assert_eq!(schedule(&[]), Vec::<u32>::new());
        // 1:3 -> B A B B or similar: each endpoint's slots spread out, never A twice in a row.
        let s = schedule(&[1, 3]);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 1);
        assert_eq!(s.iter().filter(|&&i| i == 1).count(), 3);
        let s = schedule(&[3, 3, 6]);
        assert_eq!(s.len(), 4);
        assert_eq!(s.iter().filter(|&&i| i == 2).count(), 2);
        assert_ne!(s[0], s[1]);
        let big = schedule(&[1, 1_000_000]);
        assert!(big.len() as u64 <= MAX_SCHEDULE + 1 && big.contains(&0), "{}", big.len());
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, http::HeaderValue::from_static("a=1; portico-session=\"abc\"; b=2"));
        headers.append(COOKIE, http::HeaderValue::from_static("c=3"));
        assert_eq!(cookie_value(&headers, "portico-session"), Some("abc"));
        assert_eq!(cookie_value(&headers, "c"), Some("3"));
        assert_eq!(cookie_value(&headers, "d"), None);
    }
}
