//! Portico's resource model: the Kubernetes objects it reads, a consistent snapshot of them, and the loader
//! that turns manifest files into that snapshot with precise, located errors.
//!
//! Core objects use the `k8s-openapi` types; Gateway API and operator resources have their own types in
//! [`gateway`] and [`ako`] (see the crate README for why). Every provider (files, Kubernetes) produces a
//! [`Snapshot`]; the translator reads nothing else.

pub mod ako;
pub mod certmanager;
pub mod gateway;
mod load;
pub mod policy;
pub mod status;

pub use load::{ParsedFile, decode_object, parse_manifests};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Re-exported core types, so that crates below the provider need no direct `k8s-openapi` dependency.
/// Labels of the objects Portico creates (the LoadBalancer Services of Gateways).
pub mod labels {
    /// Names the Gateway's namespace (`namespace.name` does not fit a label value; two labels do).
    pub const GATEWAY_NAMESPACE: &str = "portico.dev/gateway-namespace";
    /// Names the Gateway.
    pub const GATEWAY_NAME: &str = "portico.dev/gateway-name";
    /// Marks what Portico manages: it deletes those no Gateway wants any more, and only those.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// The value of [`MANAGED_BY`].
    pub const PORTICO: &str = "portico";
}

pub mod core {
    pub use k8s_openapi::ByteString;
    pub use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServicePort, ServiceSpec};
    pub use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
    pub use k8s_openapi::api::networking::v1::{
        HTTPIngressPath, Ingress, IngressBackend, IngressClass, IngressRule, IngressSpec, IngressTLS,
    };
    pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
    pub use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
}

/// The kinds of object Portico understands. Anything else in a manifest is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    Namespace,
    Secret,
    ConfigMap,
    Service,
    EndpointSlice,
    IngressClass,
    Ingress,
    GatewayClass,
    Gateway,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
    ReferenceGrant,
    HostRule,
    #[serde(rename = "HTTPRule")]
    HttpRule,
    #[serde(rename = "TLSRoute")]
    TlsRoute,
    #[serde(rename = "GRPCRoute")]
    GrpcRoute,
    #[serde(rename = "BackendTLSPolicy")]
    BackendTlsPolicy,
    HealthMonitor,
    BackendPolicy,
    Certificate,
    Issuer,
    ClusterIssuer,
}

impl Kind {
    /// The kind for a manifest's `apiVersion` and `kind`, if Portico reads it.
    pub fn from_manifest(api_version: &str, kind: &str) -> Option<Kind> {
        let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
        let found = match (group, kind) {
            ("", "Namespace") => Kind::Namespace,
            ("", "Secret") => Kind::Secret,
            ("", "ConfigMap") => Kind::ConfigMap,
            ("", "Service") => Kind::Service,
            ("discovery.k8s.io", "EndpointSlice") => Kind::EndpointSlice,
            ("networking.k8s.io", "IngressClass") => Kind::IngressClass,
            ("networking.k8s.io", "Ingress") => Kind::Ingress,
            ("gateway.networking.k8s.io", "GatewayClass") => Kind::GatewayClass,
            ("gateway.networking.k8s.io", "Gateway") => Kind::Gateway,
            ("gateway.networking.k8s.io", "HTTPRoute") => Kind::HttpRoute,
            ("gateway.networking.k8s.io", "ReferenceGrant") => Kind::ReferenceGrant,
            ("ako.vmware.com", "HostRule") => Kind::HostRule,
            ("ako.vmware.com", "HTTPRule") => Kind::HttpRule,
            ("gateway.networking.k8s.io", "TLSRoute") => Kind::TlsRoute,
            ("gateway.networking.k8s.io", "GRPCRoute") => Kind::GrpcRoute,
            ("gateway.networking.k8s.io", "BackendTLSPolicy") => Kind::BackendTlsPolicy,
            ("ako.vmware.com", "HealthMonitor") => Kind::HealthMonitor,
            ("portico.dev", "BackendPolicy") => Kind::BackendPolicy,
            ("cert-manager.io", "Certificate") => Kind::Certificate,
            ("cert-manager.io", "Issuer") => Kind::Issuer,
            ("cert-manager.io", "ClusterIssuer") => Kind::ClusterIssuer,
            _ => return None,
        };
        Some(found)
    }

    /// The kind's name as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::IngressClass => "IngressClass",
            Kind::Ingress => "Ingress",
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::HostRule => "HostRule",
            Kind::HttpRule => "HTTPRule",
            Kind::TlsRoute => "TLSRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::BackendTlsPolicy => "BackendTLSPolicy",
            Kind::HealthMonitor => "HealthMonitor",
            Kind::BackendPolicy => "BackendPolicy",
            Kind::Certificate => "Certificate",
            Kind::Issuer => "Issuer",
            Kind::ClusterIssuer => "ClusterIssuer",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::IngressClass | Kind::GatewayClass | Kind::ClusterIssuer)
    }

    /// Gateway API route kinds, whose status lists one entry per parent and controller.
    pub fn is_route(self) -> bool {
        matches!(self, Kind::HttpRoute | Kind::GrpcRoute | Kind::TlsRoute)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Namespace and name of an object; the namespace is empty for cluster-scoped kinds.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// A key from namespace and name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey { namespace: namespace.into(), name: name.into() }
    }

    /// Whether this is the key of `namespace`/`name` (compared in place, without making a key).
    pub fn is(&self, namespace: &str, name: &str) -> bool {
        self.namespace == namespace && self.name == name
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() { f.write_str(&self.name) } else { write!(f, "{}/{}", self.namespace, self.name) }
    }
}

/// A kind plus an object key: which object a status or an error is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ResourceRef {
    pub kind: Kind,
    #[serde(flatten)]
    pub key: ObjectKey,
}

impl ResourceRef {
    /// A reference from kind, namespace and name.
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ResourceRef { kind, key: ObjectKey::new(namespace, name) }
    }
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.key)
    }
}

/// One object of a kind Portico understands, shared: a snapshot is rebuilt on every change, and with 10,000
/// routes copying the unchanged objects into it took 44 ms of each reload (the objects are never changed in place).
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Namespace(Arc<Namespace>),
    Secret(Arc<Secret>),
    ConfigMap(Arc<ConfigMap>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    IngressClass(Arc<IngressClass>),
    Ingress(Arc<Ingress>),
    GatewayClass(Arc<gateway::GatewayClass>),
    Gateway(Arc<gateway::Gateway>),
    HttpRoute(Arc<gateway::HttpRoute>),
    ReferenceGrant(Arc<gateway::ReferenceGrant>),
    HostRule(Arc<ako::HostRule>),
    HttpRule(Arc<ako::HttpRule>),
    TlsRoute(Arc<gateway::TlsRoute>),
    GrpcRoute(Arc<gateway::GrpcRoute>),
    BackendTlsPolicy(Arc<gateway::BackendTlsPolicy>),
    HealthMonitor(Arc<ako::HealthMonitor>),
    BackendPolicy(Arc<policy::BackendPolicy>),
    Certificate(Arc<certmanager::Certificate>),
    Issuer(Arc<certmanager::Issuer>),
    ClusterIssuer(Arc<certmanager::ClusterIssuer>),
}

/// Where an object was read from: the file, the line its document starts on, and the document's text (kept
/// so that an error about a field can point at the field's own line).
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub file: Arc<str>,
    pub line: usize,
    pub text: Arc<str>,
}

impl Source {
    /// The line of `field` (a path such as `spec.rules[0].matches[0].path.value`) in this document, found by
    /// walking the keys in order; the document's first line when a key is not found.
    pub fn line_of(&self, field: &str) -> usize {
        let lines: Vec<&str> = self.text.lines().collect();
        let mut at = 0usize;
        let mut found_any = false;
        for segment in field.split('.') {
            let (key, indexes) = match segment.find('[') {
                Some(i) => (&segment[..i], &segment[i..]),
                None => (segment, ""),
            };
            if key.is_empty() {
                continue;
            }
            let Some(offset) = lines[at..].iter().position(|line| {
                let t = line.trim_start().trim_start_matches("- ");
                t.strip_prefix(key).is_some_and(|rest| rest.starts_with(':'))
            }) else {
                break;
            };
            at += offset;
            found_any = true;
            // Skip to the n-th list item below the key, so `rules[2]` lands on the third rule.
            for index in indexes.split(']').filter_map(|i| i.trim_start_matches('[').parse::<usize>().ok()) {
                let mut seen = 0;
                for (i, line) in lines.iter().enumerate().skip(at + 1) {
                    if line.trim_start().starts_with("- ") || line.trim() == "-" {
                        if seen == index {
                            at = i;
                            break;
                        }
                        seen += 1;
                    }
                }
            }
        }
        if found_any { self.line + at } else { self.line }
    }
}

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// A located message about the configuration, printed as `file:line: kind/ns/name: field: message`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl Diagnostic {
    /// An error about a field of a resource; file and line are filled in by [`Snapshot::locate`].
    pub fn error(resource: ResourceRef, field: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: None,
            line: None,
            resource: Some(resource),
            field: Some(field.into()).filter(|f: &String| !f.is_empty()),
            message: message.into(),
        }
    }

    /// A warning about a field of a resource.
    pub fn warning(resource: ResourceRef, field: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(resource, field, message) }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            _ => {}
        }
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if let Some(resource) = &self.resource {
            write!(f, "{resource}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every object Portico understands, by kind, as one consistent view. Providers build it; the translator
/// reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub namespaces: BTreeMap<ObjectKey, Arc<Namespace>>,
    pub secrets: BTreeMap<ObjectKey, Arc<Secret>>,
    pub config_maps: BTreeMap<ObjectKey, Arc<ConfigMap>>,
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    pub ingress_classes: BTreeMap<ObjectKey, Arc<IngressClass>>,
    pub ingresses: BTreeMap<ObjectKey, Arc<Ingress>>,
    pub gateway_classes: BTreeMap<ObjectKey, Arc<gateway::GatewayClass>>,
    pub gateways: BTreeMap<ObjectKey, Arc<gateway::Gateway>>,
    pub http_routes: BTreeMap<ObjectKey, Arc<gateway::HttpRoute>>,
    pub reference_grants: BTreeMap<ObjectKey, Arc<gateway::ReferenceGrant>>,
    pub host_rules: BTreeMap<ObjectKey, Arc<ako::HostRule>>,
    pub http_rules: BTreeMap<ObjectKey, Arc<ako::HttpRule>>,
    pub tls_routes: BTreeMap<ObjectKey, Arc<gateway::TlsRoute>>,
    pub grpc_routes: BTreeMap<ObjectKey, Arc<gateway::GrpcRoute>>,
    pub backend_tls_policies: BTreeMap<ObjectKey, Arc<gateway::BackendTlsPolicy>>,
    pub health_monitors: BTreeMap<ObjectKey, Arc<ako::HealthMonitor>>,
    pub backend_policies: BTreeMap<ObjectKey, Arc<policy::BackendPolicy>>,
    pub certificates: BTreeMap<ObjectKey, Arc<certmanager::Certificate>>,
    pub issuers: BTreeMap<ObjectKey, Arc<certmanager::Issuer>>,
    pub cluster_issuers: BTreeMap<ObjectKey, Arc<certmanager::ClusterIssuer>>,
    /// Where each object came from, when it came from a file.
    pub sources: BTreeMap<ResourceRef, Source>,
}

fn object_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    ObjectKey::new(meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

impl Resource {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Namespace(_) => Kind::Namespace,
            Resource::Secret(_) => Kind::Secret,
            Resource::ConfigMap(_) => Kind::ConfigMap,
            Resource::Service(_) => Kind::Service,
            Resource::EndpointSlice(_) => Kind::EndpointSlice,
            Resource::IngressClass(_) => Kind::IngressClass,
            Resource::Ingress(_) => Kind::Ingress,
            Resource::GatewayClass(_) => Kind::GatewayClass,
            Resource::Gateway(_) => Kind::Gateway,
            Resource::HttpRoute(_) => Kind::HttpRoute,
            Resource::ReferenceGrant(_) => Kind::ReferenceGrant,
            Resource::HostRule(_) => Kind::HostRule,
            Resource::HttpRule(_) => Kind::HttpRule,
            Resource::TlsRoute(_) => Kind::TlsRoute,
            Resource::GrpcRoute(_) => Kind::GrpcRoute,
            Resource::BackendTlsPolicy(_) => Kind::BackendTlsPolicy,
            Resource::HealthMonitor(_) => Kind::HealthMonitor,
            Resource::BackendPolicy(_) => Kind::BackendPolicy,
            Resource::Certificate(_) => Kind::Certificate,
            Resource::Issuer(_) => Kind::Issuer,
            Resource::ClusterIssuer(_) => Kind::ClusterIssuer,
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Resource::Namespace(o) => &o.metadata,
            Resource::Secret(o) => &o.metadata,
            Resource::ConfigMap(o) => &o.metadata,
            Resource::Service(o) => &o.metadata,
            Resource::EndpointSlice(o) => &o.metadata,
            Resource::IngressClass(o) => &o.metadata,
            Resource::Ingress(o) => &o.metadata,
            Resource::GatewayClass(o) => &o.metadata,
            Resource::Gateway(o) => &o.metadata,
            Resource::HttpRoute(o) => &o.metadata,
            Resource::ReferenceGrant(o) => &o.metadata,
            Resource::HostRule(o) => &o.metadata,
            Resource::HttpRule(o) => &o.metadata,
            Resource::TlsRoute(o) => &o.metadata,
            Resource::GrpcRoute(o) => &o.metadata,
            Resource::BackendTlsPolicy(o) => &o.metadata,
            Resource::HealthMonitor(o) => &o.metadata,
            Resource::BackendPolicy(o) => &o.metadata,
            Resource::Certificate(o) => &o.metadata,
            Resource::Issuer(o) => &o.metadata,
            Resource::ClusterIssuer(o) => &o.metadata,
        }
    }

    /// Kind, namespace and name.
    pub fn resource_ref(&self) -> ResourceRef {
        ResourceRef { kind: self.kind(), key: object_key(self.metadata()) }
    }
}

/// Hands `$callback!` the snapshot field and the [`Kind`] variant of every kind, so that code over all kinds
/// is written once.
macro_rules! with_kinds {
    ($callback:ident) => {
        $callback!(
            namespaces => Namespace,
            secrets => Secret,
            config_maps => ConfigMap,
            services => Service,
            endpoint_slices => EndpointSlice,
            ingress_classes => IngressClass,
            ingresses => Ingress,
            gateway_classes => GatewayClass,
            gateways => Gateway,
            http_routes => HttpRoute,
            reference_grants => ReferenceGrant,
            host_rules => HostRule,
            http_rules => HttpRule,
            tls_routes => TlsRoute,
            grpc_routes => GrpcRoute,
            backend_tls_policies => BackendTlsPolicy,
            health_monitors => HealthMonitor,
            backend_policies => BackendPolicy,
            certificates => Certificate,
            issuers => Issuer,
            cluster_issuers => ClusterIssuer
        )
    };
}

/// An object that a later definition of the same kind, namespace and name replaced in
/// [`Snapshot::from_objects`].
#[derive(Debug)]
pub struct Replaced {
    pub reference: ResourceRef,
    /// Where the replaced definition came from.
    pub earlier: Option<Source>,
    /// Where the definition in force came from.
    pub later: Option<Source>,
}

impl Snapshot {
    /// A snapshot of `objects` (with where each came from), in the order given: a later object replaces an
    /// earlier one of the same kind, namespace and name, and is reported in the second value. Built from the
    /// sorted objects at once: with 10,000 routes, inserting them one by one was half of each reload.
    pub fn from_objects(objects: Vec<(Resource, Option<Source>)>) -> (Self, Vec<Replaced>) {
        let mut keyed: Vec<(ResourceRef, Resource, Option<Source>)> =
            objects.into_iter().map(|(resource, source)| (resource.resource_ref(), resource, source)).collect();
        // Stable: of two definitions of one object, the later stays after the earlier.
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let mut replaced = Vec::new();
        let mut kept = Vec::with_capacity(keyed.len());
        let mut objects = keyed.into_iter().peekable();
        while let Some((reference, resource, source)) = objects.next() {
            match objects.peek() {
                Some((next, _, later)) if *next == reference => {
                    replaced.push(Replaced { reference, earlier: source, later: later.clone() })
                }
                _ => kept.push((reference, resource, source)),
            }
        }
        macro_rules! build {
            ($($field:ident => $kind:ident),* $(,)?) => {{
                $(let mut $field = Vec::new();)*
                let mut sources = Vec::with_capacity(kept.len());
                for (reference, resource, source) in kept {
                    let key = reference.key.clone();
                    if let Some(source) = source {
                        sources.push((reference, source));
                    }
                    match resource {
                        $(Resource::$kind(object) => $field.push((key, object)),)*
                    }
                }
                // Each list is sorted, so each map is built without a search per object.
                Snapshot { $($field: BTreeMap::from_iter($field),)* sources: BTreeMap::from_iter(sources) }
            }};
        }
        (with_kinds!(build), replaced)
    }

    /// Adds (or replaces) an object, remembering where it came from.
    pub fn insert(&mut self, resource: Resource, source: Option<Source>) {
        let reference = resource.resource_ref();
        let key = reference.key.clone();
        match resource {
            Resource::Namespace(o) => drop(self.namespaces.insert(key, o)),
            Resource::Secret(o) => drop(self.secrets.insert(key, o)),
            Resource::ConfigMap(o) => drop(self.config_maps.insert(key, o)),
            Resource::Service(o) => drop(self.services.insert(key, o)),
            Resource::EndpointSlice(o) => drop(self.endpoint_slices.insert(key, o)),
            Resource::IngressClass(o) => drop(self.ingress_classes.insert(key, o)),
            Resource::Ingress(o) => drop(self.ingresses.insert(key, o)),
            Resource::GatewayClass(o) => drop(self.gateway_classes.insert(key, o)),
            Resource::Gateway(o) => drop(self.gateways.insert(key, o)),
            Resource::HttpRoute(o) => drop(self.http_routes.insert(key, o)),
            Resource::ReferenceGrant(o) => drop(self.reference_grants.insert(key, o)),
            Resource::HostRule(o) => drop(self.host_rules.insert(key, o)),
            Resource::HttpRule(o) => drop(self.http_rules.insert(key, o)),
            Resource::TlsRoute(o) => drop(self.tls_routes.insert(key, o)),
            Resource::GrpcRoute(o) => drop(self.grpc_routes.insert(key, o)),
            Resource::BackendTlsPolicy(o) => drop(self.backend_tls_policies.insert(key, o)),
            Resource::HealthMonitor(o) => drop(self.health_monitors.insert(key, o)),
            Resource::BackendPolicy(o) => drop(self.backend_policies.insert(key, o)),
            Resource::Certificate(o) => drop(self.certificates.insert(key, o)),
            Resource::Issuer(o) => drop(self.issuers.insert(key, o)),
            Resource::ClusterIssuer(o) => drop(self.cluster_issuers.insert(key, o)),
        }
        match source {
            Some(source) => drop(self.sources.insert(reference, source)),
            None => drop(self.sources.remove(&reference)),
        }
    }

    /// Removes an object, returning it.
    pub fn remove(&mut self, reference: &ResourceRef) -> Option<Resource> {
        self.sources.remove(reference);
        let key = &reference.key;
        match reference.kind {
            Kind::Namespace => self.namespaces.remove(key).map(Resource::Namespace),
            Kind::Secret => self.secrets.remove(key).map(Resource::Secret),
            Kind::ConfigMap => self.config_maps.remove(key).map(Resource::ConfigMap),
            Kind::Service => self.services.remove(key).map(Resource::Service),
            Kind::EndpointSlice => self.endpoint_slices.remove(key).map(Resource::EndpointSlice),
            Kind::IngressClass => self.ingress_classes.remove(key).map(Resource::IngressClass),
            Kind::Ingress => self.ingresses.remove(key).map(Resource::Ingress),
            Kind::GatewayClass => self.gateway_classes.remove(key).map(Resource::GatewayClass),
            Kind::Gateway => self.gateways.remove(key).map(Resource::Gateway),
            Kind::HttpRoute => self.http_routes.remove(key).map(Resource::HttpRoute),
            Kind::ReferenceGrant => self.reference_grants.remove(key).map(Resource::ReferenceGrant),
            Kind::HostRule => self.host_rules.remove(key).map(Resource::HostRule),
            Kind::HttpRule => self.http_rules.remove(key).map(Resource::HttpRule),
            Kind::TlsRoute => self.tls_routes.remove(key).map(Resource::TlsRoute),
            Kind::GrpcRoute => self.grpc_routes.remove(key).map(Resource::GrpcRoute),
            Kind::BackendTlsPolicy => self.backend_tls_policies.remove(key).map(Resource::BackendTlsPolicy),
            Kind::HealthMonitor => self.health_monitors.remove(key).map(Resource::HealthMonitor),
            Kind::BackendPolicy => self.backend_policies.remove(key).map(Resource::BackendPolicy),
            Kind::Certificate => self.certificates.remove(key).map(Resource::Certificate),
            Kind::Issuer => self.issuers.remove(key).map(Resource::Issuer),
            Kind::ClusterIssuer => self.cluster_issuers.remove(key).map(Resource::ClusterIssuer),
        }
    }

    /// A copy of one object, if present.
    pub fn get(&self, reference: &ResourceRef) -> Option<Resource> {
        let key = &reference.key;
        match reference.kind {
            Kind::Namespace => self.namespaces.get(key).cloned().map(Resource::Namespace),
            Kind::Secret => self.secrets.get(key).cloned().map(Resource::Secret),
            Kind::ConfigMap => self.config_maps.get(key).cloned().map(Resource::ConfigMap),
            Kind::Service => self.services.get(key).cloned().map(Resource::Service),
            Kind::EndpointSlice => self.endpoint_slices.get(key).cloned().map(Resource::EndpointSlice),
            Kind::IngressClass => self.ingress_classes.get(key).cloned().map(Resource::IngressClass),
            Kind::Ingress => self.ingresses.get(key).cloned().map(Resource::Ingress),
            Kind::GatewayClass => self.gateway_classes.get(key).cloned().map(Resource::GatewayClass),
            Kind::Gateway => self.gateways.get(key).cloned().map(Resource::Gateway),
            Kind::HttpRoute => self.http_routes.get(key).cloned().map(Resource::HttpRoute),
            Kind::ReferenceGrant => self.reference_grants.get(key).cloned().map(Resource::ReferenceGrant),
            Kind::HostRule => self.host_rules.get(key).cloned().map(Resource::HostRule),
            Kind::HttpRule => self.http_rules.get(key).cloned().map(Resource::HttpRule),
            Kind::TlsRoute => self.tls_routes.get(key).cloned().map(Resource::TlsRoute),
            Kind::GrpcRoute => self.grpc_routes.get(key).cloned().map(Resource::GrpcRoute),
            Kind::BackendTlsPolicy => self.backend_tls_policies.get(key).cloned().map(Resource::BackendTlsPolicy),
            Kind::HealthMonitor => self.health_monitors.get(key).cloned().map(Resource::HealthMonitor),
            Kind::BackendPolicy => self.backend_policies.get(key).cloned().map(Resource::BackendPolicy),
            Kind::Certificate => self.certificates.get(key).cloned().map(Resource::Certificate),
            Kind::Issuer => self.issuers.get(key).cloned().map(Resource::Issuer),
            Kind::ClusterIssuer => self.cluster_issuers.get(key).cloned().map(Resource::ClusterIssuer),
        }
    }

    /// Fills in the file and line of a diagnostic about an object read from a file.
    pub fn locate(&self, diagnostic: &mut Diagnostic) {
        if diagnostic.file.is_some() {
            return;
        }
        let Some(source) = diagnostic.resource.as_ref().and_then(|r| self.sources.get(r)) else {
            return;
        };
        diagnostic.file = Some(source.file.to_string());
        diagnostic.line = Some(match &diagnostic.field {
            Some(field) => source.line_of(field),
            None => source.line,
        });
    }

    /// How many objects the snapshot holds.
    pub fn len(&self) -> usize {
        macro_rules! count {
            ($($field:ident => $kind:ident),* $(,)?) => {
                0 $(+ self.$field.len())*
            };
        }
        with_kinds!(count)
    }

    /// Whether the snapshot holds the object, without copying it.
    pub fn contains(&self, reference: &ResourceRef) -> bool {
        let key = &reference.key;
        macro_rules! contains {
            ($($field:ident => $kind:ident),* $(,)?) => {
                match reference.kind {
                    $(Kind::$kind => self.$field.contains_key(key),)*
                }
            };
        }
        with_kinds!(contains)
    }

    /// Whether the snapshot holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
