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
        Ok(KubernetesProvider { client })
    }

    /// A status writer on the same connection; `controller_name` is the GatewayClass controller whose
    /// entries in route `status.parents` are Portico's.
    pub fn status_writer(&self, controller_name: &str) -> StatusWriter {
        StatusWriter {
            client: self.client.clone(),
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
        tokio::spawn(async move {
            let mut objects: BTreeMap<Kind, BTreeMap<(String, String), serde_json::Value>> = BTreeMap::new();
            let mut staging: BTreeMap<Kind, BTreeMap<(String, String), serde_json::Value>> = BTreeMap::new();
            let mut synced = std::collections::BTreeSet::new();
            let kinds: std::collections::BTreeSet<Kind> = WATCHED.iter().map(|w| w.0).collect();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let Some((kind, event)) = events_rx.recv().await else { return };
                apply_event(&mut objects, &mut staging, &mut synced, kind, event);
                // Let a burst settle.
                tokio::time::sleep(debounce).await;
                while let Ok((kind, event)) = events_rx.try_recv() {
                    apply_event(&mut objects, &mut staging, &mut synced, kind, event);
                }
                // The first snapshot waits for every kind to list once (up to 10 s: a kind without CRD
                // never lists), so that a half-loaded view is never served.
                if synced.len() < kinds.len() && tokio::time::Instant::now() < deadline {
                    continue;
                }
                let mut loaded = snapshot(&objects);
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

type Objects = BTreeMap<Kind, BTreeMap<(String, String), serde_json::Value>>;

fn key_of(object: &DynamicObject) -> (String, String) {
    (object.metadata.namespace.clone().unwrap_or_default(), object.metadata.name.clone().unwrap_or_default())
}

fn value_of(kind: Kind, object: DynamicObject) -> Option<serde_json::Value> {
    let mut value = serde_json::to_value(object).ok()?;
    // Dynamic objects may arrive without apiVersion/kind; the decoder needs them.
    if let Some((_, group, version, _)) = WATCHED.iter().find(|w| w.0 == kind) {
        let api_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
        value["apiVersion"] = serde_json::Value::String(api_version);
        value["kind"] = serde_json::Value::String(kind.as_str().to_string());
    }
    Some(value)
}

fn apply_event(
    objects: &mut Objects,
    staging: &mut Objects,
    synced: &mut std::collections::BTreeSet<Kind>,
    kind: Kind,
    event: Event<DynamicObject>,
) {
    match event {
        Event::Apply(object) => {
            let key = key_of(&object);
            if let Some(value) = value_of(kind, object) {
                objects.entry(kind).or_default().insert(key, value);
            }
        }
        Event::Delete(object) => {
            objects.entry(kind).or_default().remove(&key_of(&object));
        }
        Event::Init => {
            staging.insert(kind, BTreeMap::new());
        }
        Event::InitApply(object) => {
            let key = key_of(&object);
            if let Some(value) = value_of(kind, object) {
                staging.entry(kind).or_default().insert(key, value);
            }
        }
        Event::InitDone => {
            // A relist replaces what we had: objects deleted while the watch was down disappear.
            objects.insert(kind, staging.remove(&kind).unwrap_or_default());
            synced.insert(kind);
        }
    }
}

fn snapshot(objects: &Objects) -> Loaded {
    let mut loaded = Loaded::default();
    for (kind, items) in objects {
        for value in items.values() {
            match decode_object(value.clone(), "default") {
                Ok(Some(resource)) => loaded.snapshot.insert(resource, None),
                Ok(None) => {}
                Err(mut diagnostic) => {
                    diagnostic.file = Some(format!("kubernetes:{kind}"));
                    loaded.diagnostics.push(diagnostic);
                }
            }
        }
    }
    loaded
}

/// Writes statuses back, only those that changed since the last write.
pub struct StatusWriter {
    client: kube::Client,
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
        for (reference, status) in statuses {
            if self.written.get(reference) == Some(status) {
                continue;
            }
            if self.deposed() {
                errors.push("no longer the leader: status writes stopped".to_string());
                return errors;
            }
            let generation = snapshot.get(reference).and_then(|r| r.metadata().generation);
            // Only what changed is serialised: with 10,000 routes, converting every status on every event
            // cost as much as the translation.
            let mut body = serde_json::to_value(status).unwrap_or_default();
            stamp_conditions(&mut body, generation);
            match self.patch_status(reference, body).await {
                Ok(()) => {
                    self.written.insert(reference.clone(), status.clone());
                }
                Err(error) => errors.push(format!("{reference}: status not written: {error}")),
            }
        }
        let gone: Vec<ResourceRef> =
            self.written.keys().filter(|reference| !statuses.contains_key(*reference)).cloned().collect();
        for reference in gone {
            self.written.remove(&reference);
            // A deleted object has no status left to clear; a route that left Portico's Gateways keeps the
            // parents other controllers wrote, without ours.
            if reference.kind.is_route() && snapshot.contains(&reference) {
                let cleared = serde_json::json!({ "parents": [] });
                if let Err(error) = self.patch_status(&reference, cleared).await {
                    errors.push(format!("{reference}: status not cleared: {error}"));
                }
            }
        }
        errors
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
    /// controllers wrote (another `controllerName`) are read first and kept.
    async fn patch_status(&self, reference: &ResourceRef, status: serde_json::Value) -> Result<(), kube::Error> {
        let Some(api) = self.api(reference) else { return Ok(()) };
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        let Some(ours) = status.get("parents").and_then(|p| p.as_array()).cloned() else {
            let patch = serde_json::json!({ "status": status });
            api.patch_status(&reference.key.name, &params, &Patch::Merge(&patch)).await?;
            return Ok(());
        };
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

/// Adds `lastTransitionTime` (and `observedGeneration`) to every condition in a status document.
fn stamp_conditions(value: &mut serde_json::Value, generation: Option<i64>) {
    match value {
        serde_json::Value::Object(map) => {
            let is_condition = map.contains_key("type") && map.contains_key("status") && map.contains_key("reason");
            if is_condition {
                map.entry("lastTransitionTime").or_insert_with(|| {
                    serde_json::Value::String(
                        k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    )
                });
                if let Some(generation) = generation {
                    map.entry("observedGeneration").or_insert(serde_json::Value::from(generation));
                }
            }
            map.values_mut().for_each(|v| stamp_conditions(v, generation));
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| stamp_conditions(v, generation)),
        _ => {}
    }
}
