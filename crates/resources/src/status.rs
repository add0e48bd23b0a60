//! Status that Portico writes back to resources, in the shapes the Kubernetes APIs define.

use crate::gateway::{ParentReference, RouteGroupKind};
use serde::Serialize;

/// A status condition (`metav1.Condition` without the transition time, which the status writer stamps).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// A condition whose status is `True` when `ok`, `False` otherwise.
    pub fn new(kind: &str, ok: bool, reason: &str, message: impl Into<String>, generation: Option<i64>) -> Self {
        Condition {
            kind: kind.to_string(),
            status: if ok { "True" } else { "False" }.to_string(),
            reason: reason.to_string(),
            message: message.into(),
            observed_generation: generation,
        }
    }

    /// Whether the condition's status is `True`.
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// The status of one object, by kind.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ResourceStatus {
    /// A GatewayClass: conditions and the Gateway API features Portico implements (sorted, as the spec asks).
    GatewayClass {
        conditions: Vec<Condition>,
        #[serde(rename = "supportedFeatures")]
        supported_features: Vec<SupportedFeature>,
    },
    /// Kinds that only carry conditions (HostRule, HTTPRule, Certificate, ...).
    Conditions {
        conditions: Vec<Condition>,
    },
    Gateway(GatewayStatus),
    Route(RouteStatus),
    Ingress(IngressStatus),
}

impl ResourceStatus {
    /// Every condition in the status, including those of listeners and route parents.
    pub fn all_conditions(&self) -> Vec<&Condition> {
        match self {
            ResourceStatus::Conditions { conditions } | ResourceStatus::GatewayClass { conditions, .. } => {
                conditions.iter().collect()
            }
            ResourceStatus::Gateway(g) => {
                g.conditions.iter().chain(g.listeners.iter().flat_map(|l| l.conditions.iter())).collect()
            }
            ResourceStatus::Route(r) => r.parents.iter().flat_map(|p| p.conditions.iter()).collect(),
            ResourceStatus::Ingress(_) => Vec::new(),
        }
    }
}

/// One entry of `GatewayClass.status.supportedFeatures`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SupportedFeature {
    pub name: String,
}

/// `Gateway.status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    pub addresses: Vec<GatewayStatusAddress>,
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
}

/// An address the Gateway is reachable on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatusAddress {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

/// `Gateway.status.listeners[]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    pub name: String,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub attached_routes: i32,
    pub conditions: Vec<Condition>,
}

/// `status` of a route kind (HTTPRoute, ...).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    pub parents: Vec<RouteParentStatus>,
}

/// `status.parents[]` of a route.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentReference,
    pub controller_name: String,
    pub conditions: Vec<Condition>,
}

/// `Ingress.status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressStatus {
    pub load_balancer: IngressLoadBalancerStatus,
}

/// `Ingress.status.loadBalancer`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressLoadBalancerStatus {
    pub ingress: Vec<IngressLoadBalancerIngress>,
}

/// One address of `Ingress.status.loadBalancer.ingress[]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressLoadBalancerIngress {
    pub ip: String,
}
