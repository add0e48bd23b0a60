//! The translator: a pure function from a resource [`Snapshot`] to the data-plane [`Ir`] and the status of
//! every resource Portico owns.
//!
//! It reads nothing but its arguments and has no clock, so the same snapshot always gives the same output;
//! golden tests (`testdata/NAME.in.yaml` -> `NAME.out.yaml`) pin its behaviour. The stages are:
//! [`gateway`] (classes, Gateways, listeners) -> [`httproute`] (attach routes, resolve references) and
//! [`ingress`] -> [`hostrule`] (operator overlays) -> [`assemble`] (order virtual hosts and routes into
//! the IR) -> [`dns`] (the records to serve and to publish, when DNS is configured).

mod address;
mod assemble;
mod backend;
mod dns;
mod gateway;
mod grpcroute;
mod hostname;
mod hostrule;
mod httproute;
mod ingress;
mod policy;
mod refgrant;
mod route;
mod tls;
mod tlsroute;

pub use dns::{DEFAULT_DNS_TTL, DnsOptions};
use portico_ir::Ir;
use portico_resources::status::{Condition, ResourceStatus};
use portico_resources::{Diagnostic, ResourceRef, Snapshot};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Settings of the translation that do not come from resources.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TranslateOptions {
    /// GatewayClasses with this `controllerName` are Portico's.
    pub gateway_controller: String,
    /// IngressClasses with this `spec.controller` are Portico's.
    pub ingress_controller: String,
    /// Ingresses without a class are Portico's when this is set (or when one of Portico's IngressClasses
    /// carries the `ingressclass.kubernetes.io/is-default-class` annotation).
    pub default_ingress_class: Option<String>,
    /// The VIPs that Ingresses are served on.
    pub ingress_addresses: Vec<IpAddr>,
    /// `namespace/name` of the default certificate's Secret: served by HTTPS listeners without
    /// certificateRefs and Ingress `tls` entries without a secretName (the operator's default ingress
    /// certificate, e.g. a Certificate issued into `avi-system/router-certs-default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_certificate: Option<String>,
    /// The address a Gateway gets when it requests none (standalone mode has no LoadBalancer Service).
    pub default_gateway_address: Option<IpAddr>,
    /// `namespace/name` of the Service in front of Portico's replicas: Ingresses, and Gateways that request
    /// no address, report its load-balancer IPs (as ingress-nginx's `--publish-service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_service: Option<String>,
    /// Addresses handed out to Gateways that request none, one each (the edge mode's static pool).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_address_pool: Vec<IpAddr>,
    /// When set, Portico wants a Service of type LoadBalancer in this namespace for every Gateway that requests
    /// no address, and serves the Gateway on the address the cluster's LB provider gives that Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_services_namespace: Option<String>,
    /// The selector of those Services: Portico's pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gateway_service_selector: BTreeMap<String, String>,
    /// Listen on the wildcard address of each port instead of the VIPs: in a pod, traffic arrives at the
    /// pod's own address (the Service's load balancer translates the VIP).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub listen_any: bool,
    /// DNS records to serve and publish (`ir.dns`); nothing is computed when no zone and no sync is set.
    #[serde(default)]
    pub dns: DnsOptions,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        TranslateOptions {
            gateway_controller: GATEWAY_CONTROLLER.into(),
            ingress_controller: INGRESS_CONTROLLER.into(),
            default_ingress_class: None,
            ingress_addresses: vec![IpAddr::from([127, 0, 0, 1])],
            default_gateway_address: None,
            default_certificate: None,
            publish_service: None,
            gateway_address_pool: Vec::new(),
            gateway_services_namespace: None,
            gateway_service_selector: BTreeMap::new(),
            listen_any: false,
            dns: DnsOptions::default(),
        }
    }
}

/// The `controllerName` of Portico's GatewayClasses.
pub const GATEWAY_CONTROLLER: &str = "portico.dev/gateway-controller";
/// The `spec.controller` of Portico's IngressClasses.
pub const INGRESS_CONTROLLER: &str = "portico.dev/ingress-controller";

/// What a snapshot translates to.
#[derive(Clone, Debug, Default)]
pub struct Translation {
    pub ir: Ir,
    /// Status of every resource Portico owns.
    pub statuses: BTreeMap<ResourceRef, ResourceStatus>,
    /// Errors and warnings, located in their files when the snapshot knows them.
    pub diagnostics: Vec<Diagnostic>,
    /// The LoadBalancer Services Portico wants for its Gateways (`gateway_services_namespace`).
    pub gateway_services: Vec<portico_resources::core::Service>,
}

impl Translation {
    /// Resources with at least one error.
    pub fn resources_with_errors(&self) -> Vec<ResourceRef> {
        let mut refs: Vec<ResourceRef> = self
            .diagnostics
            .iter()
            .filter(|d| d.severity == portico_resources::Severity::Error)
            .filter_map(|d| d.resource.clone())
            .collect();
        refs.sort();
        refs.dedup();
        refs
    }

    /// A serialisable view (statuses keyed by `Kind/namespace/name`), for golden files, the admin API and
    /// `portico translate`.
    pub fn report(&self) -> Report<'_> {
        Report {
            ir: &self.ir,
            statuses: self.statuses.iter().map(|(k, v)| (k.to_string(), v)).collect(),
            diagnostics: self.diagnostics.iter().map(ToString::to_string).collect(),
            gateway_services: &self.gateway_services,
        }
    }
}

/// See [`Translation::report`].
#[derive(Serialize)]
pub struct Report<'a> {
    pub ir: &'a Ir,
    pub statuses: BTreeMap<String, &'a ResourceStatus>,
    pub diagnostics: Vec<String>,
    #[serde(rename = "gatewayServices", skip_serializing_if = "<[_]>::is_empty")]
    pub gateway_services: &'a [portico_resources::core::Service],
}

/// Translates a snapshot. Pure: no I/O, no clock.
pub fn translate(snapshot: &Snapshot, options: &TranslateOptions) -> Translation {
    let mut cx = Context {
        snapshot,
        options,
        out: Translation::default(),
        routes: assemble::RouteTable::new(options.listen_any),
        backend_tls: BTreeMap::new(),
        policies: policy::PolicyIndex::default(),
        pending_statuses: Vec::new(),
    };
    backend::translate_backend_tls_policies(&mut cx);
    cx.policies = policy::index_backend_policies(&mut cx);
    let mut gateways = gateway::translate_gateways(&mut cx);
    httproute::translate_http_and_grpc_routes(&mut cx, &mut gateways);
    tlsroute::translate_tls_routes(&mut cx, &mut gateways);
    gateway::write_gateway_statuses(&mut cx, &gateways);
    ingress::translate_ingresses(&mut cx);
    hostrule::apply_host_rules(&mut cx);
    let routes = std::mem::take(&mut cx.routes);
    cx.out.ir = routes.assemble(&mut cx.out.ir);
    dns::translate_dns(&mut cx, &gateways);
    cx.flush_statuses();
    let mut out = cx.out;
    for diagnostic in &mut out.diagnostics {
        snapshot.locate(diagnostic);
    }
    out.diagnostics.sort_by(|a, b| {
        (&a.file, a.line, &a.resource, &a.field, &a.message).cmp(&(&b.file, b.line, &b.resource, &b.field, &b.message))
    });
    out.diagnostics.dedup();
    out
}

/// State shared by the stages of one translation.
pub(crate) struct Context<'a> {
    pub snapshot: &'a Snapshot,
    pub options: &'a TranslateOptions,
    pub out: Translation,
    pub routes: assemble::RouteTable,
    /// Upstream TLS from BackendTLSPolicies, by target Service and optional port name; `Err` (why) for a
    /// policy that is not valid, whose Service gets no traffic rather than plain text.
    pub backend_tls: BTreeMap<(portico_resources::ObjectKey, Option<String>), Result<portico_ir::UpstreamTls, String>>,
    /// BackendPolicies by target.
    pub policies: policy::PolicyIndex,
    /// Statuses set and not yet in `out.statuses` (read them with [`Context::status`]): they go in at once,
    /// since 10,000 single inserts into the map, each scanning the nodes on its path, were an eighth of a
    /// translation.
    pending_statuses: Vec<(ResourceRef, ResourceStatus)>,
}

impl Context<'_> {
    /// The default certificate, loaded into the IR; `None` (with a diagnostic naming `resource`) when it is
    /// not configured or not usable.
    pub fn default_certificate(&mut self, resource: &ResourceRef, field: &str) -> Option<String> {
        let name = self.options.default_certificate.clone()?;
        let (namespace, secret) = name.split_once('/').unwrap_or(("default", name.as_str()));
        let key = portico_resources::ObjectKey::new(namespace, secret);
        match tls::load_certificate(self.snapshot, &key) {
            Ok(certificate) => {
                self.out.ir.certificates.insert(key.to_string(), certificate);
                Some(key.to_string())
            }
            Err(tls::CertError::NotFound(m) | tls::CertError::Invalid(m)) => {
                self.error(resource, field, format!("the default certificate is not usable: {m}"));
                None
            }
        }
    }

    pub fn error(&mut self, resource: &ResourceRef, field: impl Into<String>, message: impl Into<String>) {
        self.out.diagnostics.push(Diagnostic::error(resource.clone(), field, message));
    }

    pub fn warning(&mut self, resource: &ResourceRef, field: impl Into<String>, message: impl Into<String>) {
        self.out.diagnostics.push(Diagnostic::warning(resource.clone(), field, message));
    }

    /// Sets a resource's status; a later one for the same resource replaces it.
    pub fn set_status(&mut self, resource: ResourceRef, status: ResourceStatus) {
        self.pending_statuses.push((resource, status));
    }

    /// The status set last for a resource.
    pub fn status(&mut self, resource: &ResourceRef) -> Option<&ResourceStatus> {
        self.flush_statuses();
        self.out.statuses.get(resource)
    }

    /// Moves the pending statuses into `out.statuses`, the latest of each resource winning.
    fn flush_statuses(&mut self) {
        if self.pending_statuses.is_empty() {
            return;
        }
        let mut all: Vec<_> = std::mem::take(&mut self.out.statuses).into_iter().collect();
        all.append(&mut self.pending_statuses);
        // Stable: the statuses of one resource stay in the order they were set. Of each run of one resource,
        // the last is swapped into the place that is kept.
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        self.out.statuses = all.into_iter().collect();
    }
}

/// A name made of `parts` and then `numbers`, written into a string of the right size: `format!` grows its
/// string several times, and names are made for each of 10,000 routes.
pub(crate) fn name_of(parts: &[&str], numbers: std::fmt::Arguments<'_>) -> String {
    use std::fmt::Write;
    let mut name = String::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + 24);
    for part in parts {
        name.push_str(part);
    }
    // Writing to a String cannot fail.
    let _ = name.write_fmt(numbers);
    name
}

/// Shorthand for a condition with `True` status.
pub(crate) fn ok(kind: &str, reason: &str, message: impl Into<String>, generation: Option<i64>) -> Condition {
    Condition::new(kind, true, reason, message, generation)
}

/// Shorthand for a condition with `False` status.
pub(crate) fn not(kind: &str, reason: &str, message: impl Into<String>, generation: Option<i64>) -> Condition {
    Condition::new(kind, false, reason, message, generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_resources::{Kind, ObjectKey};

    #[test]
    fn the_status_set_last_for_a_resource_wins() {
        let snapshot = Snapshot::default();
        let options = TranslateOptions::default();
        let mut cx = Context {
            snapshot: &snapshot,
            options: &options,
            out: Translation::default(),
            routes: assemble::RouteTable::new(false),
            backend_tls: BTreeMap::new(),
            policies: policy::PolicyIndex::default(),
            pending_statuses: Vec::new(),
        };
        let route = |name: &str| ResourceRef { kind: Kind::HttpRoute, key: ObjectKey::new("default", name) };
        let status =
            |reason: &str| ResourceStatus::Conditions { conditions: vec![ok("Accepted", reason, "test", None)] };
        cx.set_status(route("b"), status("first"));
        cx.set_status(route("a"), status("only"));
        assert_eq!(cx.status(&route("b")), Some(&status("first")));
        // Set again after a read, and twice before the next one.
        cx.set_status(route("b"), status("second"));
        cx.set_status(route("c"), status("one"));
        cx.set_status(route("b"), status("third"));
        cx.set_status(route("c"), status("two"));
        assert_eq!(cx.status(&route("b")), Some(&status("third")));
        assert_eq!(cx.status(&route("c")), Some(&status("two")));
        assert_eq!(cx.status(&route("a")), Some(&status("only")));
        let names: Vec<&str> = cx.out.statuses.keys().map(|r| r.key.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }
}
