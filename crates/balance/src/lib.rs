//! Load balancing for Portico's backend pools: algorithms, session persistence, and active and passive
//! health.
//!
//! - [`BalanceConfig`] is a pool's settings as plain data (the IR carries it; serde, camelCase).
//! - [`PoolState`] is a pool's live state. The proxy keeps one per pool name across configuration swaps,
//!   calls [`PoolState::update`] when the IR changes, [`PoolState::pick`] for each request (holding the
//!   returned [`InFlightGuard`] until the response is done), and [`PoolState::report`] with the outcome.
//!   [`PoolState::health`] feeds `/api/status` and `/metrics`.
//! - [`spawn_health_checks`] runs a pool's active checks; [`PoolRegistry`] does all of the above for a whole
//!   configuration (create, update and drop pools by name, start their checkers, render their health as
//!   Prometheus metrics).
//! - [`algorithm_from_operator`], [`persistence_from_operator`] and [`health_check_from_operator`] map the
//!   load balancer operator's names (`ako.vmware.com` HTTPRule and HealthMonitor).
//!
//! Algorithms ([`Algorithm`]): round robin (default; weighted and interleaved, fair across healthy
//! endpoints), least connections (fewest in flight per unit of weight; ties rotate), random,
//! power-of-two-choices (two random endpoints, the less loaded), and consistent hashing by rendezvous hashing
//! of the source address, a header or a cookie (a key moves only when its endpoint leaves or becomes
//! unhealthy). Persistence ([`Persistence`]) by cookie (the value is a stable hash of `ip:port`) or by source
//! address takes precedence over the algorithm while the chosen endpoint is healthy. An endpoint is healthy
//! when the active checks say up (or there are none) and it is not ejected by passive health; a pool without
//! a healthy endpoint picks `None` (the proxy answers 503).
//!
//! The request path takes no lock: it reads an `ArcSwap` snapshot and updates atomics, and allocates only a
//! new persistence cookie's `Set-Cookie` value. Least connections and consistent hashing scan the pool's
//! endpoints (O(n) per request); round robin, random and power-of-two-choices are O(1) while most endpoints
//! are healthy.
//!
//! Without the default `runtime` feature the crate is only the configuration types and the operator mapping
//! (serde and http), for crates that carry or produce the settings.

#![warn(missing_docs)]

mod config;
mod operator;

#[cfg(feature = "runtime")]
mod check;
#[cfg(feature = "runtime")]
mod hash;
#[cfg(feature = "runtime")]
mod pool;
#[cfg(feature = "runtime")]
mod registry;

pub use config::{
    Algorithm, BalanceConfig, DEFAULT_EXPECTED, DEFAULT_PERSISTENCE_COOKIE, HashKey, HealthCheck, HealthKind,
    HttpProbe, HttpsProbe, PassiveHealth, Persistence, ProbeMethod, StatusRange, TlsProbe, duration_format,
};
pub use operator::{
    OperatorHealthMonitor, OperatorHttpMonitor, OperatorTcpMonitor, algorithm_from_operator,
    health_check_from_operator, persistence_from_operator,
};

#[cfg(feature = "runtime")]
pub use check::{HealthTask, spawn_health_checks};
#[cfg(feature = "runtime")]
pub use pool::{EndpointHealth, InFlightGuard, Outcome, Pick, PoolState, RequestInfo};
#[cfg(feature = "runtime")]
pub use registry::{PoolRegistry, PoolSpec};
