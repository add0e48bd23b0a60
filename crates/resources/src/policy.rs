//! Portico's own policy resources (`portico.dev/v1alpha1`), attached the Gateway API way (`targetRefs`).

use crate::gateway::PolicyTargetReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `BackendPolicy`: how traffic to a Service (or to the backends of an HTTPRoute or GRPCRoute) is balanced
/// and checked: `algorithm`, `persistence`, `health` (active checks) and `passive` (ejection on errors).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackendPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: BackendPolicySpec,
}

/// Spec of a [`BackendPolicy`].
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackendPolicySpec {
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// The balancing settings, decoded by the translator so that errors name their field.
    #[serde(flatten)]
    pub settings: BTreeMap<String, serde_json::Value>,
}
