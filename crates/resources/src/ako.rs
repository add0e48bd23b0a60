//! The load balancer operator's resources (`ako.vmware.com/v1beta1`) that teams already have in their charts.
//!
//! Portico honours them on Ingress *and* HTTPRoute. Fields that name objects which only exist inside the
//! vendor's controller are kept as raw values so the translator can report them instead of dropping them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `HostRule`: settings of one virtual host (FQDN).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostRule {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: HostRuleSpec,
}

/// Spec of a [`HostRule`].
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostRuleSpec {
    pub virtualhost: HostRuleVirtualHost,
}

/// `spec.virtualhost` of a [`HostRule`].
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostRuleVirtualHost {
    pub fqdn: String,
    /// `Exact` (the default), `Wildcard` or `Contains`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_virtual_host: Option<bool>,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Every other field, kept so that what Portico cannot honour is reported by name.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `HTTPRule`: per-path pool settings of one FQDN.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRule {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: HttpRuleSpec,
}

/// Spec of an [`HttpRule`].
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRuleSpec {
    pub fqdn: String,
    #[serde(default)]
    pub paths: Vec<HttpRulePath>,
}

/// One `paths[]` entry of an [`HttpRule`].
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRulePath {
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<HttpRuleTls>,
    /// Every other field (algorithm, persistence, health monitors, ...).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `paths[].tls` of an [`HttpRule`]: re-encryption to the pool.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRuleTls {
    /// `reencrypt`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_profile: Option<String>,
    /// PEM of the CA that the backend's certificate must chain to.
    #[serde(rename = "destinationCA", default, skip_serializing_if = "Option::is_none")]
    pub destination_ca: Option<String>,
}

/// `HealthMonitor` (`ako.vmware.com/v1alpha1`): the operator's health monitor, referred to by name from
/// HTTPRule `paths[].healthMonitors`. The spec is kept raw; the translator maps the fields it honours and
/// reports the rest.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthMonitor {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
}
