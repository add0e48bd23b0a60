//! Load-balancing settings from the three places operators put them, and their precedence (most specific
//! wins, field by field):
//!
//! 1. `BackendPolicy` (portico.dev) targeting a **Service**: the pool's base settings;
//! 2. `BackendPolicy` targeting an **HTTPRoute or GRPCRoute**: that route's backends;
//! 3. Gateway API `sessionPersistence` on a **route rule**: that rule's persistence;
//! 4. the operator's `HTTPRule` for an **FQDN and path**: the routes under that path (applied in
//!    [`crate::hostrule`]).
//!
//! A setting that differs from the Service's base makes a variant of the pool (`pool+suffix`), so one Service
//! can be balanced one way for one route and another way for another.

use crate::{Context, not, ok};
use portico_balance::{Algorithm, BalanceConfig, HealthCheck, PassiveHealth, Persistence};
use portico_ir::{Action, WeightedPool};
use portico_resources::gateway::SessionPersistence;
use portico_resources::status::ResourceStatus;
use portico_resources::{Kind, ObjectKey, ResourceRef};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Settings that override a pool's, field by field; `None` keeps what the pool has.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BalanceOverride {
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    #[serde(default)]
    pub persistence: Option<Persistence>,
    #[serde(default)]
    pub health: Option<HealthCheck>,
    #[serde(default)]
    pub passive: Option<PassiveHealth>,
}

impl BalanceOverride {
    /// Applies the set fields to `config`.
    pub fn apply(&self, config: &mut BalanceConfig) {
        if let Some(algorithm) = &self.algorithm {
            config.algorithm = algorithm.clone();
        }
        if let Some(persistence) = &self.persistence {
            config.persistence = Some(persistence.clone());
        }
        if let Some(health) = &self.health {
            config.health = Some(health.clone());
        }
        if let Some(passive) = &self.passive {
            config.passive = Some(passive.clone());
        }
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == BalanceOverride::default()
    }
}

/// BackendPolicies by what they target: `(kind, namespace/name)`.
#[derive(Default)]
pub struct PolicyIndex {
    /// By target kind, then target: every route and backend looks here, and a lookup copies nothing.
    by_target: BTreeMap<String, BTreeMap<ObjectKey, BalanceOverride>>,
}

impl PolicyIndex {
    /// The override for a Service, or a route of `kind`.
    pub fn get(&self, kind: &str, key: &ObjectKey) -> Option<&BalanceOverride> {
        self.by_target.get(kind)?.get(key)
    }
}

/// Decodes and validates every BackendPolicy, writes its status, and indexes the valid ones by target.
pub fn index_backend_policies(cx: &mut Context<'_>) -> PolicyIndex {
    let mut index = PolicyIndex::default();
    let policies: Vec<_> = cx.snapshot.backend_policies.iter().map(|(k, p)| (k.clone(), p.clone())).collect();
    for (key, policy) in policies {
        let reference = ResourceRef { kind: Kind::BackendPolicy, key: key.clone() };
        let generation = policy.metadata.generation;
        let settings = serde_json::Value::Object(policy.spec.settings.clone().into_iter().collect());
        let decoded: Result<BalanceOverride, _> = serde_path_to_error::deserialize(settings);
        let result = decoded.map_err(|e| (format!("spec.{}", e.path()), e.into_inner().to_string())).and_then(|o| {
            let mut check = BalanceConfig::default();
            o.apply(&mut check);
            check.validate().map(|()| o).map_err(|m| ("spec".to_string(), m))
        });
        let conditions = match result {
            Err((field, message)) => {
                cx.error(&reference, field, message.clone());
                vec![not("Accepted", "Invalid", message, generation)]
            }
            Ok(settings) => {
                let mut missing = Vec::new();
                for (i, target) in policy.spec.target_refs.iter().enumerate() {
                    let target_key = ObjectKey::new(&key.namespace, &target.name);
                    let exists = match (target.group.as_str(), target.kind.as_str()) {
                        ("", "Service") => cx.snapshot.services.contains_key(&target_key),
                        ("gateway.networking.k8s.io", "HTTPRoute") => cx.snapshot.http_routes.contains_key(&target_key),
                        ("gateway.networking.k8s.io", "GRPCRoute") => cx.snapshot.grpc_routes.contains_key(&target_key),
                        (group, kind) => {
                            cx.error(
                                &reference,
                                format!("spec.targetRefs[{i}]"),
                                format!(
                                    "{kind} in group {group:?} cannot be targeted (Service, HTTPRoute, GRPCRoute can)"
                                ),
                            );
                            continue;
                        }
                    };
                    if !exists {
                        missing.push(format!("{} {target_key}", target.kind));
                    }
                    index.by_target.entry(target.kind.clone()).or_default().insert(target_key, settings.clone());
                }
                if missing.is_empty() {
                    vec![ok("Accepted", "Accepted", "Policy applied", generation)]
                } else {
                    vec![not(
                        "Accepted",
                        "TargetNotFound",
                        format!("no such target: {}", missing.join(", ")),
                        generation,
                    )]
                }
            }
        };
        cx.set_status(reference, ResourceStatus::Conditions { conditions });
    }
    index
}

/// Gateway API `sessionPersistence` of a rule as a balancing override (cookie persistence only: header
/// persistence is reported by the caller).
pub fn session_persistence(spec: &SessionPersistence) -> Result<BalanceOverride, String> {
    match spec.kind.as_deref().unwrap_or("Cookie") {
        "Cookie" => {
            let ttl = match spec.absolute_timeout.as_deref() {
                Some(text) => Some(
                    portico_balance::duration_format::parse(text)
                        .map_err(|e| format!("absoluteTimeout {text:?}: {e}"))?,
                ),
                None => None,
            };
            let name = spec.session_name.clone().unwrap_or_else(|| portico_balance::DEFAULT_PERSISTENCE_COOKIE.into());
            Ok(BalanceOverride { persistence: Some(Persistence::Cookie { name, ttl }), ..BalanceOverride::default() })
        }
        other => Err(format!("session persistence of type {other} is not supported (Cookie is)")),
    }
}

/// Points the action's pools at variants carrying `settings` (created on first use, named `pool+suffix`).
pub fn apply_to_action(cx: &mut Context<'_>, action: &mut Action, settings: &BalanceOverride, suffix: &str) {
    if settings.is_empty() {
        return;
    }
    if let Action::Forward(pools) = action {
        for weighted in pools.iter_mut() {
            apply_to_pool(cx, weighted, settings, suffix);
        }
    }
}

/// Points one weighted pool at a variant carrying `settings`.
pub fn apply_to_pool(cx: &mut Context<'_>, weighted: &mut WeightedPool, settings: &BalanceOverride, suffix: &str) {
    let Some(name) = weighted.pool.clone() else { return };
    let Some(pool) = cx.out.ir.pools.get(&name) else { return };
    let mut balance = pool.balance.clone();
    settings.apply(&mut balance);
    if balance == pool.balance {
        return;
    }
    let variant = format!("{name}+{suffix}");
    let mut copy = pool.clone();
    copy.name = variant.clone();
    copy.balance = balance;
    cx.out.ir.pools.insert(variant.clone(), copy);
    weighted.pool = Some(variant);
}
