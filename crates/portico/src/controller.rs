//! The control loop: snapshot -> translate -> IR to the runtimes, statuses to the admin API and state dir.
//!
//! It also keeps the last good version of every object: when an object's new version has errors (a bad
//! regex, a missing certificate), the IR is built with its previous version, so a typo in one route never
//! takes down what was serving. The status still shows the new version's errors.

use arc_swap::ArcSwap;
use portico_ir::Ir;
use portico_provider::Loaded;
use portico_proxy::Proxy;
use portico_resources::status::ResourceStatus;
use portico_resources::{Diagnostic, Resource, ResourceRef, Severity, Snapshot};
use portico_translate::{TranslateOptions, Translation, translate};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

/// What the admin API shows: the latest statuses and the IR in force.
#[derive(Default)]
pub struct View {
    pub generation: u64,
    pub ir: Arc<Ir>,
    /// The status document, serialised only when asked for (with 10,000 routes, building it as JSON on every
    /// change cost as much as the translation).
    pub status: Arc<StatusDocument>,
    /// At least one configuration has been applied.
    pub ready: bool,
    /// The DNS server and sync (`--config-file`), carried from view to view; fed on every apply.
    pub dns: Option<Arc<crate::dns::DnsRuntime>>,
}

/// The status document (`/api/status`, `state-dir/status.json`).
#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDocument {
    pub generation: u64,
    #[serde(serialize_with = "by_name")]
    pub statuses: BTreeMap<ResourceRef, ResourceStatus>,
    pub diagnostics: Vec<String>,
    pub listener_errors: Vec<String>,
    pub kept_last_good: Vec<String>,
}

/// Statuses keyed by `Kind/namespace/name`.
fn by_name<S: serde::Serializer>(
    statuses: &BTreeMap<ResourceRef, ResourceStatus>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(statuses.iter().map(|(reference, status)| (reference.to_string(), status)))
}

/// Owns the translation state between configuration changes.
pub struct Controller {
    proxy: Arc<Proxy>,
    options: TranslateOptions,
    view: Arc<ArcSwap<View>>,
    generation: u64,
    last_good: LastGood,
    /// Issues and renews certificates; its Secrets join each snapshot before translation.
    certs: crate::certs::CertManager,
    /// The provider's last load, re-applied when a certificate is due.
    /// Shared with the task that writes statuses back (Kubernetes), which must not hold up the next apply.
    last_loaded: Option<Arc<Loaded>>,
    /// Hands each status document to the task that writes `state-dir/status.json`.
    status_file: Option<tokio::sync::watch::Sender<Option<Arc<StatusDocument>>>>,
    /// The LoadBalancer Services the last translation wants for Gateways.
    gateway_services: Vec<portico_resources::core::Service>,
    /// Whether this replica issues certificates: standalone always; on Kubernetes when asked to
    /// (`--issue-certificates`, otherwise cert-manager owns them) and only while it leads.
    issuing: bool,
}

impl Controller {
    /// A controller feeding `proxy` and publishing to `view`.
    pub fn new(
        proxy: Arc<Proxy>,
        options: TranslateOptions,
        view: Arc<ArcSwap<View>>,
        state_dir: Option<PathBuf>,
        cluster_resource_namespace: String,
        acme: crate::certs::AcmeRuntime,
    ) -> Self {
        let certs = crate::certs::CertManager::new(state_dir.as_deref(), cluster_resource_namespace).with_acme(acme);
        Controller {
            proxy,
            options,
            view,
            generation: 0,
            last_good: LastGood::default(),
            certs,
            last_loaded: None,
            status_file: state_dir.map(status_file_writer),
            issuing: true,
            gateway_services: Vec::new(),
        }
    }

    /// Turns issuing on or off (the caller re-applies). Off, Certificates get no status from this replica
    /// and their Secrets are served as the API server has them.
    pub fn set_issuing(&mut self, issuing: bool) {
        self.issuing = issuing;
    }

    /// The Secrets of the certificates this replica issued, for the provider to store.
    pub fn issued_secrets(&self) -> Vec<portico_resources::core::Secret> {
        if self.issuing { self.certs.secrets() } else { Vec::new() }
    }

    /// The provider's last load, as read (without the Secrets this replica issued).
    pub fn last_loaded(&self) -> Option<Arc<Loaded>> {
        self.last_loaded.clone()
    }

    /// What the admin API shows now.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// The LoadBalancer Services the last apply wants (Kubernetes creates them).
    pub fn gateway_services(&self) -> &[portico_resources::core::Service] {
        &self.gateway_services
    }

    /// The status document of the last apply (Kubernetes writes its statuses back).
    pub fn status(&self) -> Arc<StatusDocument> {
        self.view.load().status.clone()
    }

    /// How long until a certificate must be renewed (the control loop calls [`Controller::renew`] then).
    pub fn next_renewal(&self) -> Option<std::time::Duration> {
        if !self.issuing {
            return None;
        }
        self.certs.next_renewal(std::time::SystemTime::now())
    }

    /// Takes in a finished ACME order and serves its certificate.
    pub async fn acme_done(&mut self, outcome: crate::certs::AcmeOutcome) {
        if let Some(loaded) = self.last_loaded.as_deref().cloned() {
            self.certs.complete(outcome, &loaded.snapshot);
            self.apply(loaded).await;
        }
    }

    /// Re-applies the last load, so certificates that are due get renewed and served.
    pub async fn renew(&mut self) {
        if let Some(loaded) = self.last_loaded.as_deref().cloned() {
            self.apply(loaded).await;
        }
    }

    /// Translates and applies one load of the provider.
    pub async fn apply(&mut self, mut loaded: Loaded) {
        // Nothing here copies the snapshot: with 10,000 routes a copy costs more than the translation.
        let displaced = if self.issuing {
            self.certs.reconcile(&mut loaded.snapshot, std::time::SystemTime::now())
        } else {
            Vec::new()
        };
        let previous = self.last_loaded.as_ref().map(|l| &l.snapshot);
        let started = std::time::Instant::now();
        let (mut translation, served, kept) =
            translate_keeping_last_good(&loaded.snapshot, previous, &self.options, &mut self.last_good);
        crate::certs::restore(&mut loaded.snapshot, displaced);
        if self.issuing {
            translation.statuses.extend(self.certs.statuses().iter().map(|(k, v)| (k.clone(), v.clone())));
            translation.diagnostics.extend(self.certs.errors().iter().cloned());
        }
        // What is served, and the Services it needs, come from the same translation (the last good version of
        // a broken Gateway keeps its Service as it was).
        let (gateway_services, ir) = match served {
            Some(served) => (served.gateway_services, served.ir),
            None => (std::mem::take(&mut translation.gateway_services), std::mem::take(&mut translation.ir)),
        };
        self.gateway_services = gateway_services;
        self.generation += 1;
        let generation = self.generation;
        let mut listener_errors = Vec::new();
        let translated = started.elapsed();
        match self.proxy.apply(&ir, generation).await {
            Ok(errors) => listener_errors.extend(errors.iter().map(ToString::to_string)),
            Err(error) => listener_errors.push(error.to_string()),
        }
        tracing::debug!(?translated, serving = ?started.elapsed(), "translated and swapped in");
        for error in &listener_errors {
            tracing::error!(%error, "listener not serving");
        }
        // DNS: the same IR as the proxy, in the same apply.
        let dns = self.view.load().dns.clone();
        if let Some(dns) = &dns {
            dns.apply(&ir);
        }
        let mut diagnostics: Vec<Diagnostic> = loaded.diagnostics.clone();
        diagnostics.extend(translation.diagnostics.iter().cloned());
        for d in &diagnostics {
            match d.severity {
                Severity::Error => tracing::warn!("{d}"),
                Severity::Warning => tracing::info!("{d}"),
            }
        }
        let status = Arc::new(StatusDocument {
            generation,
            statuses: std::mem::take(&mut translation.statuses),
            diagnostics: diagnostics.iter().map(ToString::to_string).collect(),
            listener_errors,
            kept_last_good: kept.iter().map(ToString::to_string).collect(),
        });
        // status.json is written off the control loop, latest first (a writer that falls behind skips).
        if let Some(writer) = &self.status_file {
            writer.send_replace(Some(status.clone()));
        }
        tracing::info!(generation, listeners = ir.listeners.len(), pools = ir.pools.len(), "configuration applied");
        self.last_loaded = Some(Arc::new(loaded));
        self.view.store(Arc::new(View { generation, ir: Arc::new(ir), status, ready: true, dns }));
        // The memory the replaced configuration held goes back to the kernel once changes settle, not at once:
        // the next change in a burst reuses it. Returned at each change, it had to be faulted in and zeroed
        // again by the next one: with 10,000 routes, 11,000 page faults per change and 148 ms from change to
        // serving, against 107 ms with the memory kept (107 MiB RSS settled, 187 MiB never returned).
        let view = self.view.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RELEASE_MEMORY_AFTER).await;
            if view.load().generation == generation {
                release_freed_memory();
            }
        });
    }
}

/// The last good version of the objects whose current version has errors. Kept without copying snapshots: an
/// object that translated cleanly in the previous snapshot has that version as its last good one; one that was
/// broken then too carries the version found before.
#[derive(Default)]
pub struct LastGood {
    broken: HashSet<ResourceRef>,
    carried: HashMap<ResourceRef, Resource>,
}

/// Translates, then re-translates with the last good version of every object whose new version has errors.
/// Returns the translation whose statuses describe the new objects, the one whose IR is served when it differs
/// (`None`: the first one is served), and the objects whose old version was kept.
pub fn translate_keeping_last_good(
    snapshot: &Snapshot,
    previous: Option<&Snapshot>,
    options: &TranslateOptions,
    last_good: &mut LastGood,
) -> (Translation, Option<Translation>, Vec<ResourceRef>) {
    let translation = translate(snapshot, options);
    let broken: HashSet<ResourceRef> = translation.resources_with_errors().into_iter().collect();
    let mut carried = HashMap::new();
    for reference in &broken {
        let good = if last_good.broken.contains(reference) {
            last_good.carried.remove(reference)
        } else {
            previous.and_then(|p| p.get(reference))
        };
        if let Some(good) = good {
            carried.insert(reference.clone(), good);
        }
    }
    last_good.broken = broken;
    last_good.carried = carried;
    let mut kept: Vec<ResourceRef> = last_good
        .carried
        .iter()
        .filter(|(reference, good)| snapshot.get(reference).as_ref() != Some(*good))
        .map(|(reference, _)| reference.clone())
        .collect();
    if kept.is_empty() {
        return (translation, None, kept);
    }
    kept.sort();
    let mut served = snapshot.clone();
    for reference in &kept {
        tracing::warn!(resource = %reference, "new version has errors; the last good version stays in force");
        served.insert(last_good.carried[reference].clone(), snapshot.sources.get(reference).cloned());
    }
    let served = translate(&served, options);
    (translation, Some(served), kept)
}

/// How long after the last configuration change freed memory is given back (see the allocator's purge delay in
/// main.rs, which is longer, so that this is what returns it).
const RELEASE_MEMORY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Gives the memory the previous configuration held back to the system: after a large configuration is
/// replaced, what the allocator keeps is the size of a whole copy of it (with 10,000 routes and glibc's malloc,
/// the process stayed at 320 MiB instead of 200).
fn release_freed_memory() {
    // SAFETY: mi_collect frees what mimalloc holds unused (thread-delayed frees, empty pages); it does not
    // touch allocated memory and may be called from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// A task that writes the latest status document to `dir/status.json`; it ends with the sender.
fn status_file_writer(dir: PathBuf) -> tokio::sync::watch::Sender<Option<Arc<StatusDocument>>> {
    let (sender, mut receiver) = tokio::sync::watch::channel::<Option<Arc<StatusDocument>>>(None);
    tokio::spawn(async move {
        while receiver.changed().await.is_ok() {
            let Some(document) = receiver.borrow_and_update().clone() else { continue };
            let dir = dir.clone();
            let _ = tokio::task::spawn_blocking(move || write_status(&dir, &document)).await;
        }
    });
    sender
}

/// Writes the status document atomically (temp file + rename), readable by the owner only.
fn write_status(dir: &std::path::Path, status: &StatusDocument) {
    let result = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let temp = dir.join(".status.json.tmp");
        std::fs::write(&temp, serde_json::to_vec_pretty(status).unwrap_or_default())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))?;
        }
        std::fs::rename(&temp, dir.join("status.json"))
    })();
    if let Err(error) = result {
        tracing::warn!(dir = %dir.display(), %error, "cannot write status.json");
    }
}
