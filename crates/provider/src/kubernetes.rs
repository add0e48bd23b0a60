//! The Kubernetes provider: watches every kind Portico reads on an API server and produces the same
//! [`Loaded`] snapshots as the file provider, debounced; writes statuses back with merge patches, only when
//! they change.
//!
//! Kinds are watched as dynamic objects and decoded with the same code as manifest files, so a field the
//! file provider rejects is rejected here with the same message. A kind whose CRD is not installed is
//! retried with backoff and simply contributes nothing until it appears. When the API server goes away the
//! last snapshot stays in force (nothing is sent), and the watches resume and resync on return.

use crate::{Loaded, ProviderError};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use portico_resources::status::ResourceStatus;
use portico_resources::{Kind, ResourceRef, Snapshot, decode_object, labels};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::sync::mpsc;

/// The API group, version and plural of each kind Portico reads.
pub const WATCHED: [(Kind, &str, &str, &str); 21] = [
    (Kind::Namespace, "", "v1", "namespaces"),
    (Kind::Secret, "", "v1", "secrets"),
    (Kind::ConfigMap, "", "v1", "configmaps"),
    (Kind::Service, "", "v1", "services"),
    (Kind::EndpointSlice, "discovery.k8s.io", "v1", "endpointslices"),
    (Kind::IngressClass, "networking.k8s.io", "v1", "ingressclasses"),
    (Kind::Ingress, "networking.k8s.io", "v1", "ingresses"),
    (Kind::GatewayClass, "gateway.networking.k8s.io", "v1", "gatewayclasses"),
    (Kind::Gateway, "gateway.networking.k8s.io", "v1", "gateways"),
    (Kind::HttpRoute, "gateway.networking.k8s.io", "v1", "httproutes"),
    (Kind::GrpcRoute, "gateway.networking.k8s.io", "v1", "grpcroutes"),
    (Kind::TlsRoute, "gateway.networking.k8s.io", "v1alpha2", "tlsroutes"),
    (Kind::ReferenceGrant, "gateway.networking.k8s.io", "v1beta1", "referencegrants"),
    (Kind::BackendTlsPolicy, "gateway.networking.k8s.io", "v1", "backendtlspolicies"),
    (Kind::HostRule, "ako.vmware.com", "v1beta1", "hostrules"),
    (Kind::HttpRule, "ako.vmware.com", "v1beta1", "httprules"),
    (Kind::HealthMonitor, "ako.vmware.com", "v1alpha1", "healthmonitors"),
    (Kind::BackendPolicy, "portico.dev", "v1alpha1", "backendpolicies"),
    (Kind::Certificate, "cert-manager.io", "v1", "certificates"),
    (Kind::Issuer, "cert-manager.io", "v1", "issuers"),
    (Kind::ClusterIssuer, "cert-manager.io", "v1", "clusterissuers"),
];

fn api_resource(kind: Kind, group: &str, version: &str, plural: &str) -> ApiResource {
    let api_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    ApiResource {
        group: group.to_string(),
        version: version.to_string(),
        api_version,
        kind: kind.as_str().to_string(),
        plural: plural.to_string(),
    }
}

/// Watches an API server.
pub struct KubernetesProvider {
    client: kube::Client,
    /// Filled by the watch, read by the status writer.
    observed: ObservedStatuses,
}

impl KubernetesProvider {
    /// A provider on the in-cluster configuration, or the kubeconfig named by `KUBECONFIG` / `kubeconfig`.
    pub async fn connect(kubeconfig: Option<&std::path::Path>) -> Result<Self, ProviderError> {
        let config = match kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| ProviderError::Kubernetes(format!("{}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|e| ProviderError::Kubernetes(format!("{}: {e}", path.display())))?
            }
            None => kube::Config::infer().await.map_err(|e| ProviderError::Kubernetes(e.to_string()))?,
        };
        let client = kube::Client::try_from(config).map_err(|e| ProviderError::Kubernetes(e.to_string()))?;
        Ok(KubernetesProvider { client, observed: ObservedStatuses::default() })
    }

    /// A status writer on the same connection; `controller_name` is the GatewayClass controller whose
    /// entries in route `status.parents` are Portico's.
    pub fn status_writer(&self, controller_name: &str) -> StatusWriter {
        StatusWriter {
            client: self.client.clone(),
            observed: self.observed.clone(),
            written: HashMap::new(),
            controller_name: controller_name.to_string(),
            leading: None,
        }
    }

    /// The client, for the leader election.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Watches every kind and sends a fresh [`Loaded`] after each burst of changes, once every kind has
    /// listed (or failed to) for the first time.
    pub fn watch(self, debounce: Duration) -> mpsc::Receiver<Result<Loaded, ProviderError>> {
        let (events_tx, mut events_rx) = mpsc::unbounded_channel::<(Kind, Event<DynamicObject>)>();
        for (kind, group, version, plural) in WATCHED {
            let resource = api_resource(kind, group, version, plural);
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
            let events_tx = events_tx.clone();
            tokio::spawn(async move {
                // The watcher retries with backoff on its own: a missing CRD or an API server outage is
                // logged and waited out, never fatal.
                let mut stream =
                    watcher::watcher(api, watcher::Config::default()).backoff(WatchBackoff::default()).boxed();
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(event) => {
                            if events_tx.send((kind, event)).is_err() {
                                return;
                            }
                        }
                        Err(error) => tracing::debug!(kind = %kind, %error, "watch interrupted; retrying"),
                    }
                }
            });
        }
        drop(events_tx);
        let (tx, rx) = mpsc::channel(4);
        let observed = self.observed;
        tokio::spawn(async move {
            let mut objects = Objects::new();
            let mut staging = Objects::new();
            let mut synced = std::collections::BTreeSet::new();
            let kinds: std::collections::BTreeSet<Kind> = WATCHED.iter().map(|w| w.0).collect();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            // Whether something that can change the translation arrived since the last snapshot sent.
            let mut pending = false;
            loop {
                let Some((kind, event)) = events_rx.recv().await else { return };
                observed.record(kind, &event, &staging);
                pending |= apply_event(&mut objects, &mut staging, &mut synced, kind, event);
                // Let a burst settle.
                tokio::time::sleep(debounce).await;
                while let Ok((kind, event)) = events_rx.try_recv() {
                    observed.record(kind, &event, &staging);
                    pending |= apply_event(&mut objects, &mut staging, &mut synced, kind, event);
                }
                // The first snapshot waits for every kind to list once (up to 10 s: a kind without CRD
                // never lists), so that a half-loaded view is never served.
                if !pending || (synced.len() < kinds.len() && tokio::time::Instant::now() < deadline) {
                    continue;
                }
                pending = false;
                // Copying 10,000 decoded objects into a snapshot takes tens of milliseconds.
                let Some((returned, mut loaded)) = crate::on_blocking_pool(objects, |objects| snapshot(objects)).await
                else {
                    return;
                };
                objects = returned;
                loaded.partial = !(synced.contains(&Kind::Gateway) && synced.contains(&Kind::Service));
                if tx.send(Ok(loaded)).await.is_err() {
                    return;
                }
            }
        });
        rx
    }
}

/// Retry delays of a watch: 0.5 s doubling up to 5 s. kube's default grows to 30 s, which after an API
/// server outage of half a minute delays the resync by as much again; a watch is one cheap request.
struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const MIN: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// One watched object, decoded once when it arrives: decoding 10,000 routes again on every change took longer
/// than translating them. The fingerprint tells a change of the object from a write of its status.
#[derive(Clone)]
struct Stored {
    fingerprint: u64,
    decoded: Result<Option<portico_resources::Resource>, portico_resources::Diagnostic>,
}

type Objects = BTreeMap<Kind, BTreeMap<(String, String), Stored>>;

fn stored(kind: Kind, object: DynamicObject) -> Option<Stored> {
    let value = value_of(kind, object)?;
    Some(Stored { fingerprint: json_hash(&value, None), decoded: decode_object(value, "default") })
}

/// A hash of a JSON value, leaving out object members named `ignored`. Members are fed in key order (serde_json's
/// map is sorted), so equal values hash alike whatever order the API server wrote them in.
fn json_hash(value: &serde_json::Value, ignored: Option<&str>) -> u64 {
    use std::hash::{Hash, Hasher};
    fn feed(value: &serde_json::Value, ignored: Option<&str>, hasher: &mut std::hash::DefaultHasher) {
        match value {
            serde_json::Value::Null => 0u8.hash(hasher),
            serde_json::Value::Bool(b) => (1u8, b).hash(hasher),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => (2u8, i).hash(hasher),
                (None, Some(u)) => (3u8, u).hash(hasher),
                (None, None) => (4u8, n.as_f64().map(f64::to_bits)).hash(hasher),
            },
            serde_json::Value::String(s) => (5u8, s).hash(hasher),
            serde_json::Value::Array(items) => {
                (6u8, items.len()).hash(hasher);
                items.iter().for_each(|item| feed(item, ignored, hasher));
            }
            serde_json::Value::Object(map) => {
                7u8.hash(hasher);
                for (key, value) in map.iter().filter(|(key, _)| Some(key.as_str()) != ignored) {
                    key.hash(hasher);
                    feed(value, ignored, hasher);
                }
                // The end of the members, so that `{"a": {}, "b": 1}` and `{"a": {"b": 1}}` differ.
                8u8.hash(hasher);
            }
        }
    }
    let mut hasher = std::hash::DefaultHasher::new();
    feed(value, ignored, &mut hasher);
    hasher.finish()
}

fn key_of(object: &DynamicObject) -> (String, String) {
    (object.metadata.namespace.clone().unwrap_or_default(), object.metadata.name.clone().unwrap_or_default())
}

/// What the translation reads of a kind's status: a Gateway's addresses and a Service's load balancer. The rest
/// of any status is Portico's own output (or another controller's) and is not kept.
fn status_read(kind: Kind, status: serde_json::Value) -> Option<serde_json::Value> {
    match kind {
        Kind::Service => Some(status),
        Kind::Gateway => Some(serde_json::json!({ "addresses": status.get("addresses")? })),
        _ => None,
    }
}

/// The object as kept: without `managedFields` (often the larger part of it), `resourceVersion` (it changes on
/// every write) and the status that the translation does not read. So the status Portico writes, which comes
/// back as a watch event for every route and Gateway, leaves the object as it was: 10,000 status writes had
/// made 10,000 reloads.
fn value_of(kind: Kind, mut object: DynamicObject) -> Option<serde_json::Value> {
    object.metadata.managed_fields = None;
    object.metadata.resource_version = None;
    if let Some(fields) = object.data.as_object_mut()
        && let Some(status) = fields.remove("status")
        && let Some(kept) = status_read(kind, status)
    {
        fields.insert("status".into(), kept);
    }
    let mut value = serde_json::to_value(object).ok()?;
    // Dynamic objects may arrive without apiVersion/kind; the decoder needs them.
    if let Some((_, group, version, _)) = WATCHED.iter().find(|w| w.0 == kind) {
        let api_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
        value["apiVersion"] = serde_json::Value::String(api_version);
        value["kind"] = serde_json::Value::String(kind.as_str().to_string());
    }
    Some(value)
}

/// Takes in one watch event; returns whether it can change the translation (a version that differs only in
/// what is not kept, as after a status write, cannot).
fn apply_event(
    objects: &mut Objects,
    staging: &mut Objects,
    synced: &mut std::collections::BTreeSet<Kind>,
    kind: Kind,
    event: Event<DynamicObject>,
) -> bool {
    match event {
        Event::Apply(object) => {
            let key = key_of(&object);
            let Some(object) = stored(kind, object) else { return false };
            let known = objects.entry(kind).or_default();
            let unchanged = known.get(&key).is_some_and(|previous| previous.fingerprint == object.fingerprint);
            known.insert(key, object);
            return !unchanged;
        }
        Event::Delete(object) => return objects.entry(kind).or_default().remove(&key_of(&object)).is_some(),
        Event::Init => {
            staging.insert(kind, BTreeMap::new());
        }
        Event::InitApply(object) => {
            let key = key_of(&object);
            if let Some(object) = stored(kind, object) {
                staging.entry(kind).or_default().insert(key, object);
            }
        }
        Event::InitDone => {
            // A relist replaces what we had: objects deleted while the watch was down disappear.
            objects.insert(kind, staging.remove(&kind).unwrap_or_default());
            synced.insert(kind);
            return true;
        }
    }
    false
}

fn snapshot(objects: &Objects) -> Loaded {
    let mut loaded = Loaded::default();
    let mut resources = Vec::new();
    for (kind, items) in objects {
        for object in items.values() {
            match &object.decoded {
                Ok(Some(resource)) => resources.push((resource.clone(), None)),
                Ok(None) => {}
                Err(diagnostic) => {
                    let mut diagnostic = diagnostic.clone();
                    diagnostic.file = Some(format!("kubernetes:{kind}"));
                    loaded.diagnostics.push(diagnostic);
                }
            }
        }
    }
    // One object per kind, namespace and name: nothing is replaced.
    loaded.snapshot = portico_resources::Snapshot::from_objects(resources).0;
    loaded
}

/// What the API server last showed of the statuses Portico writes, from the watch: a route's status is then
/// written without being read first, and a status that is already right is not written again (after a
/// restart, or by a new leader, which would otherwise rewrite every status: 20,000 requests for 10,000
/// routes).
#[derive(Clone, Default)]
struct ObservedStatuses(std::sync::Arc<std::sync::Mutex<HashMap<ResourceRef, Observed>>>);

/// One object's status as last seen: hashes only (`status_hash`), not the status itself.
#[derive(Clone, Debug, PartialEq)]
struct Observed {
    resource_version: String,
    /// The whole status; `None` for a route, which is compared by `parents`.
    status: Option<u64>,
    /// A route's `status.parents` entries: controllerName and hash of each, in order.
    parents: Vec<(String, u64)>,
    /// Each condition's `lastTransitionTime`, by [`for_each_condition`]'s key (where it sits, type, status).
    transitions: Vec<(u64, Box<str>)>,
}

impl ObservedStatuses {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ResourceRef, Observed>> {
        // A panic while holding the lock leaves a map that is still whole: every change is one insert or
        // remove.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, reference: &ResourceRef) -> Option<Observed> {
        self.lock().get(reference).cloned()
    }

    /// Takes in a watch event before [`apply_event`] (`staging` holds a relist in progress).
    fn record(&self, kind: Kind, event: &Event<DynamicObject>, staging: &Objects) {
        if matches!(
            kind,
            Kind::Namespace | Kind::Secret | Kind::ConfigMap | Kind::Service | Kind::EndpointSlice | Kind::IngressClass
        ) {
            return;
        }
        let reference = |object: &DynamicObject| {
            let (namespace, name) = key_of(object);
            ResourceRef { kind, key: portico_resources::ObjectKey { namespace, name } }
        };
        match event {
            Event::Apply(object) | Event::InitApply(object) => {
                let status = object.data.get("status").unwrap_or(&serde_json::Value::Null);
                // Each part hashed once: a route by its parents, anything else whole.
                let (status_hash_whole, parents) = if kind.is_route() {
                    let controller = |p: &serde_json::Value| {
                        p.get("controllerName").and_then(|c| c.as_str()).unwrap_or_default().to_string()
                    };
                    let parents =
                        status.get("parents").and_then(|p| p.as_array()).map(Vec::as_slice).unwrap_or_default();
                    (None, parents.iter().map(|p| (controller(p), status_hash(p))).collect())
                } else {
                    (Some(status_hash(status)), Vec::new())
                };
                // Walked with the writer's own walk (which adds fields, so it takes a status it may change): the
                // keys then match by construction. One copy of the status per event, dropped at once.
                let mut transitions = Vec::new();
                for_each_condition(&mut status.clone(), 0, &mut |key, condition| {
                    if let Some(time) = condition.get("lastTransitionTime").and_then(|t| t.as_str()) {
                        transitions.push((key, time.into()));
                    }
                });
                let observed = Observed {
                    resource_version: object.metadata.resource_version.clone().unwrap_or_default(),
                    status: status_hash_whole,
                    parents,
                    transitions,
                };
                self.lock().insert(reference(object), observed);
            }
            Event::Delete(object) => {
                self.lock().remove(&reference(object));
            }
            Event::Init => {}
            Event::InitDone => {
                let listed = staging.get(&kind);
                self.lock().retain(|reference, _| {
                    let key = (reference.key.namespace.clone(), reference.key.name.clone());
                    reference.kind != kind || listed.is_some_and(|listed| listed.contains_key(&key))
                });
            }
        }
    }
}

/// A hash of a status, or part of one, as Portico compares what it writes with what the API server has: without
/// `lastTransitionTime`, which Portico sets when it writes.
fn status_hash(value: &serde_json::Value) -> u64 {
    json_hash(value, Some("lastTransitionTime"))
}

/// Status patches sent at once. Two keep the API server busy without a queue there: in the bench (10,000 routes,
/// the API server on one CPU) every status was written as fast with 2 as with 8 (85 s), and a change made by
/// someone else while they were written took 140 ms to serve instead of 220 ms, waiting behind fewer of ours.
const STATUS_WRITES_IN_FLIGHT: usize = 2;

/// Writes statuses back, only those that changed since the last write.
pub struct StatusWriter {
    client: kube::Client,
    observed: ObservedStatuses,
    written: HashMap<ResourceRef, ResourceStatus>,
    controller_name: String,
    /// Whether this replica still leads: checked before every write, so that one deposed in the middle of a
    /// long run of writes stops at once.
    leading: Option<tokio::sync::watch::Receiver<bool>>,
}

impl StatusWriter {
    /// Writes only while `leading` says this replica leads.
    pub fn follow_leadership(&mut self, leading: tokio::sync::watch::Receiver<bool>) {
        self.leading = Some(leading);
    }

    fn deposed(&self) -> bool {
        self.leading.as_ref().is_some_and(|leading| !*leading.borrow())
    }

    /// Forgets what was written, so that the next [`StatusWriter::write`] writes every status: a new leader
    /// cannot know what the previous one left.
    pub fn reset(&mut self) {
        self.written.clear();
    }

    /// Patches the status of every resource whose status differs from what was written last. Conditions get
    /// a `lastTransitionTime` (required by the API); errors are returned per resource. Routes that are no
    /// longer Portico's lose Portico's entries in `status.parents`.
    pub async fn write(
        &mut self,
        statuses: &BTreeMap<ResourceRef, ResourceStatus>,
        snapshot: &Snapshot,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        let mut changed: Vec<_> =
            statuses.iter().filter(|(reference, status)| self.written.get(*reference) != Some(*status)).collect();
        changed.reverse();
        // A few patches in flight: one at a time, 10,000 routes took minutes to get their status after a start.
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut outcomes = Vec::with_capacity(changed.len());
        loop {
            while in_flight.len() < STATUS_WRITES_IN_FLIGHT
                && let Some((reference, status)) = changed.pop()
            {
                in_flight.push(self.write_one(reference, status, snapshot));
            }
            match in_flight.next().await {
                Some(outcome) => outcomes.push(outcome),
                None => break,
            }
        }
        drop(in_flight);
        let mut deposed = false;
        for (reference, status, outcome) in outcomes {
            match outcome {
                Ok(()) => {
                    self.written.insert(reference.clone(), status.clone());
                }
                Err(Some(error)) => errors.push(format!("{reference}: status not written: {error}")),
                Err(None) => deposed = true,
            }
        }
        if deposed {
            errors.push("no longer the leader: status writes stopped".to_string());
            return errors;
        }
        let gone: Vec<ResourceRef> =
            self.written.keys().filter(|reference| !statuses.contains_key(*reference)).cloned().collect();
        for reference in gone {
            self.written.remove(&reference);
            // A deleted object has no status left to clear; a route that left Portico's Gateways keeps the
            // parents other controllers wrote, without ours.
            if reference.kind.is_route() && snapshot.contains(&reference) {
                let cleared = serde_json::json!({ "parents": [] });
                if let Err(error) = self.patch_status(&reference, cleared, self.observed.get(&reference)).await {
                    errors.push(format!("{reference}: status not cleared: {error}"));
                }
            }
        }
        errors
    }

    /// Patches one status; `Err(None)` when this replica no longer leads.
    async fn write_one<'a>(
        &self,
        reference: &'a ResourceRef,
        status: &'a ResourceStatus,
        snapshot: &Snapshot,
    ) -> (&'a ResourceRef, &'a ResourceStatus, Result<(), Option<kube::Error>>) {
        if self.deposed() {
            return (reference, status, Err(None));
        }
        let generation = snapshot.get(reference).and_then(|r| r.metadata().generation);
        // Only what changed is serialised: with 10,000 routes, converting every status on every event cost as
        // much as the translation.
        let mut body = serde_json::to_value(status).unwrap_or_default();
        let observed = self.observed.get(reference);
        let transitions = observed.as_ref().map_or(&[][..], |observed| &observed.transitions[..]);
        let now = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        stamp_conditions(&mut body, generation, transitions, &now);
        if observed.as_ref().is_some_and(|observed| self.already_there(reference, &body, observed)) {
            return (reference, status, Ok(()));
        }
        (reference, status, self.patch_status(reference, body, observed).await.map_err(Some))
    }

    /// Whether the API server already has `status` (as last seen by the watch), but for `lastTransitionTime`s:
    /// for a route, Portico's entries in `status.parents`.
    fn already_there(&self, reference: &ResourceRef, status: &serde_json::Value, observed: &Observed) -> bool {
        if !reference.kind.is_route() {
            return observed.status == Some(status_hash(status));
        }
        let ours = status.get("parents").and_then(|p| p.as_array()).map(Vec::as_slice).unwrap_or_default();
        let there = observed.parents.iter().filter(|(controller, _)| *controller == self.controller_name);
        there.map(|(_, hash)| *hash).eq(ours.iter().map(status_hash))
    }

    fn api(&self, reference: &ResourceRef) -> Option<Api<DynamicObject>> {
        let (kind, group, version, plural) = WATCHED.iter().find(|w| w.0 == reference.kind)?;
        let resource = api_resource(*kind, group, version, plural);
        Some(if reference.kind.namespaced() {
            Api::namespaced_with(self.client.clone(), &reference.key.namespace, &resource)
        } else {
            Api::all_with(self.client.clone(), &resource)
        })
    }

    /// Merge-patches `status`. A merge patch replaces arrays whole, so for routes the parents that other
    /// controllers wrote (another `controllerName`) are kept: when the watch saw none (`observed`), the patch
    /// is made on the version it saw, without a read; otherwise, or when that version is outdated, the route
    /// is read first.
    async fn patch_status(
        &self,
        reference: &ResourceRef,
        status: serde_json::Value,
        observed: Option<Observed>,
    ) -> Result<(), kube::Error> {
        let Some(api) = self.api(reference) else { return Ok(()) };
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        let Some(ours) = status.get("parents").and_then(|p| p.as_array()).cloned() else {
            let patch = serde_json::json!({ "status": status });
            api.patch_status(&reference.key.name, &params, &Patch::Merge(&patch)).await?;
            return Ok(());
        };
        let only_ours = observed.filter(|o| {
            !o.resource_version.is_empty()
                && o.parents.iter().all(|(controller, _)| *controller == self.controller_name)
        });
        if let Some(observed) = only_ours {
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": observed.resource_version },
                "status": status,
            });
            match api.patch_status(&reference.key.name, &params, &Patch::Merge(&patch)).await {
                // Written since the watch saw it: read it, as below.
                Err(kube::Error::Api(response)) if response.code == 409 => {}
                result => return result.map(|_| ()),
            }
        }
        // Read, merge, write conditionally on the resourceVersion read: another controller's write in between
        // makes the API server refuse (409), and the merge is done again on what it wrote.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = api.get_status(&reference.key.name).await?;
            let mut parents: Vec<serde_json::Value> = current
                .data
                .pointer("/status/parents")
                .and_then(|p| p.as_array())
                .map(|parents| {
                    parents
                        .iter()
                        .filter(|p| {
                            p.get("controllerName").and_then(|c| c.as_str()).is_some_and(|c| c != self.controller_name)
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            parents.extend(ours.iter().cloned());
            let mut status = status.clone();
            status["parents"] = serde_json::Value::Array(parents);
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": current.metadata.resource_version },
                "status": status,
            });
            match api.patch_status(&reference.key.name, &params, &Patch::Merge(&patch)).await {
                Err(kube::Error::Api(response)) if response.code == 409 && attempt < 5 => continue,
                result => return result.map(|_| ()),
            }
        }
    }

    /// Creates or updates the Secrets of certificates Portico issued, when their content differs from what
    /// the API server has (the snapshot, before Portico's own Secrets were put in).
    pub async fn write_secrets(&self, secrets: &[Secret], current: &Snapshot) -> Vec<String> {
        let mut errors = Vec::new();
        for secret in secrets {
            if self.deposed() {
                errors.push("no longer the leader: Secret writes stopped".to_string());
                return errors;
            }
            let (Some(namespace), Some(name)) = (&secret.metadata.namespace, &secret.metadata.name) else { continue };
            let key = portico_resources::ObjectKey { namespace: namespace.clone(), name: name.clone() };
            let existing = current.secrets.get(&key);
            let annotations_match = |existing: &Secret| {
                let wanted = secret.metadata.annotations.clone().unwrap_or_default();
                let have = existing.metadata.annotations.clone().unwrap_or_default();
                wanted.iter().all(|(k, v)| have.get(k) == Some(v))
            };
            if existing.is_some_and(|e| e.data == secret.data && e.type_ == secret.type_ && annotations_match(e)) {
                continue;
            }
            let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
            let result = match api.get_opt(name).await {
                Ok(None) => {
                    api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, secret)
                        .await
                }
                Ok(Some(mut found)) => {
                    // Keep labels and other annotations; replace what cert-manager's layout defines.
                    let annotations = found.metadata.annotations.get_or_insert_with(Default::default);
                    annotations.extend(secret.metadata.annotations.clone().unwrap_or_default());
                    found.data = secret.data.clone();
                    found.string_data = None;
                    found.type_ = secret.type_.clone();
                    api.replace(
                        name,
                        &PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() },
                        &found,
                    )
                    .await
                }
                Err(error) => Err(error),
            };
            match result {
                Ok(_) => tracing::info!(secret = %key, "certificate Secret written"),
                Err(error) => errors.push(format!("Secret/{key}: not written: {error}")),
            }
        }
        errors
    }
}

impl StatusWriter {
    /// Creates or updates the LoadBalancer Services Portico wants for its Gateways, and deletes the ones it
    /// made that no Gateway wants any more (only Services labelled as Portico's, in `namespace`). The
    /// Services' status (the address the LB provider gives) is the provider's; Portico reads it back through
    /// the watch.
    pub async fn sync_gateway_services(&self, wanted: &[Service], current: &Loaded, namespace: &str) -> Vec<String> {
        let (partial, current) = (current.partial, &current.snapshot);
        let mut errors = Vec::new();
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
        let mut wanted_names = std::collections::BTreeSet::new();
        for service in wanted {
            if self.deposed() {
                errors.push("no longer the leader: Service writes stopped".to_string());
                return errors;
            }
            let Some(name) = service.metadata.name.clone() else { continue };
            wanted_names.insert(name.clone());
            let key = portico_resources::ObjectKey { namespace: namespace.to_string(), name: name.clone() };
            let result = match current.services.get(&key) {
                None => api.create(&params, service).await.map(|_| "created"),
                Some(existing) if same_service(existing, service) => continue,
                // Someone else's Service by that name: never taken over.
                Some(existing) if !managed_by_portico(existing) => {
                    errors.push(format!("Service/{key}: exists and is not Portico's; the Gateway gets no Service"));
                    continue;
                }
                Some(_) => match api.get_opt(&name).await {
                    // Keep what the API server and others set (clusterIP, nodePorts, annotations, status).
                    Ok(Some(mut found)) => {
                        let spec = found.spec.get_or_insert_with(Default::default);
                        let desired = service.spec.clone().unwrap_or_default();
                        spec.type_ = desired.type_;
                        spec.selector = desired.selector;
                        spec.external_traffic_policy = desired.external_traffic_policy;
                        spec.ports =
                            Some(merge_ports(spec.ports.take().unwrap_or_default(), desired.ports.unwrap_or_default()));
                        found
                            .metadata
                            .labels
                            .get_or_insert_with(Default::default)
                            .extend(service.metadata.labels.clone().unwrap_or_default());
                        api.replace(&name, &params, &found).await.map(|_| "updated")
                    }
                    Ok(None) => api.create(&params, service).await.map(|_| "created"),
                    Err(error) => Err(error),
                },
            };
            match result {
                Ok(action) => tracing::info!(service = %key, action, "Gateway Service written"),
                Err(error) => errors.push(format!("Service/{key}: not written: {error}")),
            }
        }
        // A partial view (Gateways or Services not listed yet) deletes nothing: what it lacks may exist.
        let ours = current.services.iter().filter(|_| !partial).filter(|(key, service)| {
            key.namespace == namespace && !wanted_names.contains(&key.name) && managed_by_portico(service)
        });
        for (key, _) in ours {
            if self.deposed() {
                return errors;
            }
            match api.delete(&key.name, &Default::default()).await {
                Ok(_) => tracing::info!(service = %key, "Gateway Service deleted: no Gateway wants it"),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => errors.push(format!("Service/{key}: not deleted: {error}")),
            }
        }
        errors
    }
}

/// Whether Portico made this Service for a Gateway (the only ones it updates or deletes).
fn managed_by_portico(service: &Service) -> bool {
    service.metadata.labels.as_ref().is_some_and(|l| {
        l.get(labels::MANAGED_BY).map(String::as_str) == Some(labels::PORTICO) && l.contains_key(labels::GATEWAY_NAME)
    })
}

/// Whether the API server's Service already has what Portico wants (fields the API server fills in aside).
fn same_service(existing: &Service, wanted: &Service) -> bool {
    let (Some(have), Some(want)) = (&existing.spec, &wanted.spec) else { return false };
    let ports =
        |ports: &Option<Vec<k8s_openapi::api::core::v1::ServicePort>>| -> Vec<(Option<String>, i32, Option<String>)> {
            ports.iter().flatten().map(|p| (p.name.clone(), p.port, p.protocol.clone())).collect()
        };
    let labels_present = wanted
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| existing.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    have.type_ == want.type_
        && have.selector == want.selector
        && have.external_traffic_policy == want.external_traffic_policy
        && ports(&have.ports) == ports(&want.ports)
        && labels_present
}

/// The wanted ports, keeping the node ports the API server allocated for ports that stay.
fn merge_ports(
    existing: Vec<k8s_openapi::api::core::v1::ServicePort>,
    wanted: Vec<k8s_openapi::api::core::v1::ServicePort>,
) -> Vec<k8s_openapi::api::core::v1::ServicePort> {
    wanted
        .into_iter()
        .map(|mut port| {
            port.node_port = existing.iter().find(|e| e.port == port.port).and_then(|e| e.node_port);
            port
        })
        .collect()
}

/// The field manager of Portico's writes (shown in `managedFields`).
pub const FIELD_MANAGER: &str = "portico";

/// Adds `lastTransitionTime` (and `observedGeneration`) to every condition in a status document. The time is
/// the one the API server shows for the same condition with the same status (`transitions`, from the watch):
/// it is when the condition last changed status, not when Portico last wrote it; else `now`.
fn stamp_conditions(
    value: &mut serde_json::Value,
    generation: Option<i64>,
    transitions: &[(u64, Box<str>)],
    now: &str,
) {
    for_each_condition(value, 0, &mut |key, condition| {
        if !condition.contains_key("lastTransitionTime") {
            let time = transitions.iter().find(|(seen, _)| *seen == key).map_or(now, |(_, time)| time);
            condition.insert("lastTransitionTime".to_string(), serde_json::Value::String(time.to_string()));
        }
        if let Some(generation) = generation {
            condition.entry("observedGeneration").or_insert(serde_json::Value::from(generation));
        }
    });
}

/// Calls `visit` with each condition of a status (an object with `type`, `status` and `reason`) and a key made
/// of where it sits, its type and its status. Where it sits is the path of object members and, in arrays, each
/// item's identity (a listener's `name`, a route parent's `parentRef` and `controllerName`, a policy ancestor's
/// `ancestorRef`; else its index), so that a condition is found again in another version of the status even
/// when items came in another order.
fn for_each_condition(
    value: &mut serde_json::Value,
    at: u64,
    visit: &mut dyn FnMut(u64, &mut serde_json::Map<String, serde_json::Value>),
) {
    match value {
        serde_json::Value::Object(map) => {
            if map.contains_key("type") && map.contains_key("status") && map.contains_key("reason") {
                let (kind, status) = (map.get("type"), map.get("status"));
                visit(located(at, &(kind.and_then(|t| t.as_str()), status.and_then(|s| s.as_str()))), map);
            }
            for (name, member) in map.iter_mut() {
                for_each_condition(member, located(at, name), visit);
            }
        }
        serde_json::Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                let identity: Vec<u64> = ["name", "parentRef", "controllerName", "ancestorRef"]
                    .iter()
                    .filter_map(|field| item.get(*field).map(|value| json_hash(value, None)))
                    .collect();
                let item_at = if identity.is_empty() { located(at, &index) } else { located(at, &identity) };
                for_each_condition(item, item_at, visit);
            }
        }
        _ => {}
    }
}

/// A key for `part` within the place keyed `at`.
fn located(at: u64, part: &impl std::hash::Hash) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    (at, part).hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(hostname: &str, resource_version: &str, status: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {
                "name": "web", "namespace": "dev", "resourceVersion": resource_version, "generation": 1,
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": [hostname]},
            "status": status,
        }))
        .expect("an HTTPRoute")
    }

    fn gateway(resource_version: &str, address: &str, attached_routes: i32) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "dev", "resourceVersion": resource_version},
            "spec": {"gatewayClassName": "portico", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
            "status": {
                "addresses": [{"type": "IPAddress", "value": address}],
                "listeners": [{"name": "http", "attachedRoutes": attached_routes}],
            },
        }))
        .expect("a Gateway")
    }

    #[test]
    fn a_status_write_does_not_reload_but_a_spec_change_does() {
        let (mut objects, mut staging, mut synced) = (Objects::new(), Objects::new(), Default::default());
        let mut event = |kind, event| apply_event(&mut objects, &mut staging, &mut synced, kind, event);
        assert!(event(Kind::HttpRoute, Event::Apply(route("a.example", "1", serde_json::json!({})))));
        // Portico's own status write comes back as a new version with only status and resourceVersion changed.
        let accepted = serde_json::json!({"parents": [{"controllerName": "portico.dev/gateway-controller"}]});
        assert!(!event(Kind::HttpRoute, Event::Apply(route("a.example", "2", accepted.clone()))));
        assert!(event(Kind::HttpRoute, Event::Apply(route("b.example", "3", accepted))));
        // A Gateway's addresses are read by the translation: a change there reloads. The rest of its status is
        // Portico's own output (here the count of attached routes that it writes).
        assert!(event(Kind::Gateway, Event::Apply(gateway("4", "192.0.2.1", 0))));
        assert!(!event(Kind::Gateway, Event::Apply(gateway("5", "192.0.2.1", 1))));
        assert!(event(Kind::Gateway, Event::Apply(gateway("6", "192.0.2.2", 1))));
        assert!(event(Kind::HttpRoute, Event::Delete(route("b.example", "7", serde_json::json!({})))));
        assert!(!event(Kind::HttpRoute, Event::Delete(route("b.example", "7", serde_json::json!({})))));

        let loaded = snapshot(&objects);
        let gateways: Vec<_> = loaded.snapshot.gateways.values().collect();
        assert_eq!(gateways.len(), 1);
        assert_eq!(gateways[0].status.as_ref().map(|s| s.addresses[0].value.as_str()), Some("192.0.2.2"));
        assert!(loaded.snapshot.http_routes.is_empty(), "the deleted route is gone");
    }

    /// The Gateway API's `lastTransitionTime` is when a condition last changed status: a condition written again
    /// with the same status keeps the time the API server shows, wherever its parent or listener now sits in
    /// the list; one whose status changed, or that is new, gets the time of the write.
    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let observed = ObservedStatuses::default();
        let staging = Objects::new();
        let condition = |kind: &str, status: &str, time: Option<&str>| {
            let mut condition = serde_json::json!({"type": kind, "status": status, "reason": kind});
            if let Some(time) = time {
                condition["lastTransitionTime"] = serde_json::json!(time);
            }
            condition
        };
        let parent = |gateway: &str, conditions: Vec<serde_json::Value>| {
            serde_json::json!({"controllerName": "portico.dev/gateway-controller", "parentRef": {"name": gateway},
                               "conditions": conditions})
        };
        let t0 = Some("2026-01-01T00:00:00Z");
        let seen = serde_json::json!({"parents": [
            parent("gw", vec![condition("Accepted", "True", t0), condition("ResolvedRefs", "True", t0)]),
            parent("gw2", vec![condition("Accepted", "True", t0)]),
        ]});
        observed.record(Kind::HttpRoute, &Event::Apply(route("a.example", "7", seen)), &staging);
        let web = ResourceRef { kind: Kind::HttpRoute, key: portico_resources::ObjectKey::new("dev", "web") };
        let transitions = observed.get(&web).expect("recorded").transitions;
        let mut written = serde_json::json!({"parents": [
            parent("gw2", vec![condition("Accepted", "False", None)]),
            parent("gw3", vec![condition("Accepted", "True", None)]),
            parent("gw", vec![condition("Accepted", "True", None), condition("ResolvedRefs", "False", None)]),
        ]});
        stamp_conditions(&mut written, Some(2), &transitions, "2026-11-28T12:00:00Z");
        let time = |parent: usize, condition: usize| {
            let condition = &written["parents"][parent]["conditions"][condition];
            assert_eq!(condition["observedGeneration"], 2);
            condition["lastTransitionTime"].as_str().unwrap_or_default().to_string()
        };
        assert_eq!(time(2, 0), "2026-01-01T00:00:00Z", "gw: still Accepted, since t0");
        assert_eq!(time(2, 1), "2026-11-28T12:00:00Z", "gw: ResolvedRefs turned False now");
        assert_eq!(time(0, 0), "2026-11-28T12:00:00Z", "gw2: no longer Accepted");
        assert_eq!(time(1, 0), "2026-11-28T12:00:00Z", "gw3: a new parent");

        // A Gateway's listeners are told apart by name.
        let listener = |name: &str, time: Option<&str>| serde_json::json!({"name": name, "conditions": [condition("Programmed", "True", time)]});
        let mut gw = gateway("8", "192.0.2.1", 1);
        gw.data["status"] = serde_json::json!({"conditions": [condition("Programmed", "True", t0)],
                                               "listeners": [listener("http", t0)]});
        observed.record(Kind::Gateway, &Event::Apply(gw), &staging);
        let key = ResourceRef { kind: Kind::Gateway, key: portico_resources::ObjectKey::new("dev", "gw") };
        let transitions = observed.get(&key).expect("recorded").transitions;
        let mut written = serde_json::json!({"conditions": [condition("Programmed", "True", None)],
                                             "listeners": [listener("https", None), listener("http", None)]});
        stamp_conditions(&mut written, None, &transitions, "2026-11-28T12:00:00Z");
        assert_eq!(written["conditions"][0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(written["listeners"][1]["conditions"][0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(written["listeners"][0]["conditions"][0]["lastTransitionTime"], "2026-11-28T12:00:00Z");
        assert!(written["conditions"][0].get("observedGeneration").is_none());
    }

    #[test]
    fn observed_statuses_follow_the_watch_and_compare_without_transition_times() {
        let observed = ObservedStatuses::default();
        let staging = Objects::new();
        let parent = |controller: &str, time: &str, generation: i64| {
            serde_json::json!({
                "controllerName": controller, "parentRef": {"name": "gw"},
                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                "lastTransitionTime": time, "observedGeneration": generation}],
            })
        };
        let status = serde_json::json!({"parents": [parent("other.example/controller", "t0", 1),
                                                    parent("portico.dev/gateway-controller", "t1", 1)]});
        observed.record(Kind::HttpRoute, &Event::Apply(route("a.example", "7", status)), &staging);
        let web = ResourceRef { kind: Kind::HttpRoute, key: portico_resources::ObjectKey::new("dev", "web") };
        let seen = observed.get(&web).expect("the route's status was recorded");
        assert_eq!(seen.resource_version, "7");
        let controllers: Vec<&str> = seen.parents.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(controllers, ["other.example/controller", "portico.dev/gateway-controller"]);
        // The same entry written at another time compares equal; another generation does not.
        assert_eq!(seen.parents[1].1, status_hash(&parent("portico.dev/gateway-controller", "t9", 1)));
        assert_ne!(seen.parents[1].1, status_hash(&parent("portico.dev/gateway-controller", "t1", 2)));
        // Where an object ends is part of the hash.
        let flat = serde_json::json!({"a": {}, "b": 1});
        let nested = serde_json::json!({"a": {"b": 1}});
        assert_ne!(json_hash(&flat, None), json_hash(&nested, None));
        // A Gateway's status is recorded too; a Service's, which Portico does not write, is not.
        observed.record(Kind::Gateway, &Event::Apply(gateway("8", "192.0.2.1", 1)), &staging);
        let gw = ResourceRef { kind: Kind::Gateway, key: portico_resources::ObjectKey::new("dev", "gw") };
        assert!(observed.get(&gw).is_some());
        let service: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "gw", "namespace": "dev"}, "status": {},
        }))
        .expect("a Service");
        observed.record(Kind::Service, &Event::Apply(service), &staging);
        let svc = ResourceRef { kind: Kind::Service, key: portico_resources::ObjectKey::new("dev", "gw") };
        assert!(observed.get(&svc).is_none());
        // A relist keeps only what it listed (the Gateway is not in it); a deletion forgets.
        observed.record(Kind::Gateway, &Event::InitDone, &staging);
        assert!(observed.get(&gw).is_none());
        assert!(observed.get(&web).is_some());
        observed.record(Kind::HttpRoute, &Event::Delete(route("a.example", "9", serde_json::json!({}))), &staging);
        assert!(observed.get(&web).is_none());
    }

    #[test]
    fn managed_fields_and_route_status_are_not_kept() {
        let accepted = serde_json::json!({"parents": [{"controllerName": "portico.dev/gateway-controller"}]});
        let value = value_of(Kind::HttpRoute, route("a.example", "1", accepted)).expect("a value");
        assert!(value.pointer("/metadata/managedFields").is_none());
        assert!(value.pointer("/metadata/resourceVersion").is_none());
        assert!(value.get("status").is_none());
        assert_eq!(value.pointer("/spec/hostnames/0").and_then(|h| h.as_str()), Some("a.example"));
        let value = value_of(Kind::Gateway, gateway("1", "192.0.2.1", 3)).expect("a value");
        assert_eq!(value.pointer("/status/addresses/0/value").and_then(|h| h.as_str()), Some("192.0.2.1"));
        assert!(value.pointer("/status/listeners").is_none());
    }
}
