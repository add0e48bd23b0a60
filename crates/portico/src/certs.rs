//! The certificate runtime: issues and renews what `cert-manager.io` resources ask for, from CA issuers,
//! and hands the resulting Secrets to the pipeline, as cert-manager would write them to the API server.
//!
//! It reads Certificates, plus the ones cert-manager's shims would create (an Ingress or Gateway annotated
//! `cert-manager.io/cluster-issuer` or `cert-manager.io/issuer`), keeps issued pairs in the state directory
//! (so a restart re-uses them), renews each at its renewal time, and reports cert-manager's conditions:
//! Certificate Ready/Issuing, Issuer Ready (KeyPairVerified, ErrGetKeyPair, ErrInvalidKeyPair). Each load
//! issues what is missing or due; [`CertManager::next_renewal`] tells the control loop when to come back.

use portico_pki::spec::{Certificate, CertificateSpec, IssuerRef, IssuerSpec};
use portico_pki::{CertStore, CertificateAuthority, CertificateRequest, Issued};
use portico_resources::core::{ByteString, ObjectMeta, Secret};
use portico_resources::status::{Condition, ResourceStatus};
use portico_resources::{Kind, ObjectKey, Resource, ResourceRef, Snapshot};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const CLUSTER_ISSUER_ANNOTATION: &str = "cert-manager.io/cluster-issuer";
const ISSUER_ANNOTATION: &str = "cert-manager.io/issuer";

/// The result of an ACME order that ran in the background.
pub struct AcmeOutcome {
    certificate: ObjectKey,
    result: Result<Issued, String>,
    issuer: ResourceRef,
    credentials: Option<portico_pki::SecretPem>,
}

/// ACME orders run in the background: challenges are answered by the proxy from `responder`, and each
/// result comes back on a channel the control loop listens to.
pub struct AcmeRuntime {
    pub responder: portico_pki::acme::Http01Responder,
    outcomes: tokio::sync::mpsc::UnboundedSender<AcmeOutcome>,
    in_flight: std::collections::BTreeSet<ObjectKey>,
    accounts: BTreeMap<ResourceRef, portico_pki::SecretPem>,
}

impl AcmeRuntime {
    /// A runtime and the receiver of its outcomes.
    pub fn new() -> (Self, tokio::sync::mpsc::UnboundedReceiver<AcmeOutcome>) {
        let (outcomes, receiver) = tokio::sync::mpsc::unbounded_channel();
        let runtime = AcmeRuntime {
            responder: portico_pki::acme::Http01Responder::new(),
            outcomes,
            in_flight: Default::default(),
            accounts: BTreeMap::new(),
        };
        (runtime, receiver)
    }
}

/// Issued certificates and their statuses, across loads.
pub struct CertManager {
    /// ACME orders; `None` where no order can run (`portico validate`).
    acme: Option<AcmeRuntime>,
    store: Option<CertStore>,
    /// Namespace of ClusterIssuers' Secrets (cert-manager's `--cluster-resource-namespace`).
    cluster_resource_namespace: String,
    /// Issued material by Certificate (`namespace/name`).
    issued: BTreeMap<ObjectKey, (String, Issued, IssuerRef)>,
    /// Consecutive failures by Certificate, for backoff.
    failures: BTreeMap<ObjectKey, (u32, SystemTime)>,
    statuses: BTreeMap<ResourceRef, ResourceStatus>,
    errors: Vec<portico_resources::Diagnostic>,
    /// The last ACME failure by Certificate, shown until an order succeeds.
    acme_errors: BTreeMap<ObjectKey, String>,
}

impl CertManager {
    /// A runtime keeping its state under `state_dir/certificates` (nothing persists without one).
    pub fn new(state_dir: Option<&Path>, cluster_resource_namespace: String) -> Self {
        let store = state_dir.and_then(|dir| match CertStore::new(dir) {
            Ok(store) => Some(store),
            Err(error) => {
                tracing::error!(%error, "certificates will not persist across restarts");
                None
            }
        });
        CertManager {
            acme: None,
            store,
            cluster_resource_namespace,
            issued: BTreeMap::new(),
            failures: BTreeMap::new(),
            statuses: BTreeMap::new(),
            errors: Vec::new(),
            acme_errors: BTreeMap::new(),
        }
    }

    /// Lets ACME issuers order certificates.
    pub fn with_acme(mut self, acme: AcmeRuntime) -> Self {
        self.acme = Some(acme);
        self
    }

    /// Takes in the result of a background ACME order (the caller then re-applies the configuration).
    pub fn complete(&mut self, outcome: AcmeOutcome, snapshot: &Snapshot) {
        let Some(acme) = &mut self.acme else { return };
        acme.in_flight.remove(&outcome.certificate);
        if let Some(credentials) = outcome.credentials {
            acme.accounts.insert(outcome.issuer.clone(), credentials);
        }
        match outcome.result {
            Ok(issued) => {
                tracing::info!(certificate = %outcome.certificate, serial = %issued.serial, "ACME certificate issued");
                self.failures.remove(&outcome.certificate);
                if let Some(store) = &self.store
                    && let Err(error) = store.save(&outcome.certificate.namespace, &outcome.certificate.name, &issued)
                {
                    tracing::error!(certificate = %outcome.certificate, %error, "issued certificate not persisted");
                }
                if let Some(certificate) = wanted_certificates(snapshot).get(&outcome.certificate) {
                    let spec = &certificate.spec;
                    self.issued
                        .insert(outcome.certificate, (spec.secret_name.clone(), issued, spec.issuer_ref.clone()));
                }
            }
            Err(message) => {
                tracing::warn!(certificate = %outcome.certificate, %message, "ACME order failed");
                let count = self.failures.get(&outcome.certificate).map_or(1, |(c, _)| c + 1);
                self.failures.insert(outcome.certificate.clone(), (count, SystemTime::now()));
                self.acme_errors.insert(outcome.certificate, message);
            }
        }
    }

    /// Issues, renews or reloads every wanted certificate, then puts the resulting Secrets into `snapshot`
    /// (replacing Secrets of the same name read from files, as cert-manager overwrites them). Returns what
    /// they displaced, for [`restore`] to put back.
    pub fn reconcile(&mut self, snapshot: &mut Snapshot, now: SystemTime) -> Displaced {
        self.statuses.clear();
        self.errors.clear();
        let issuers = self.issuer_statuses(snapshot, now);
        let wanted = wanted_certificates(snapshot);
        self.issued.retain(|key, _| wanted.contains_key(key));
        for (key, certificate) in &wanted {
            let reference = ResourceRef { kind: Kind::Certificate, key: key.clone() };
            let generation = certificate.metadata.generation;
            let result = self.ensure(key, certificate, snapshot, &issuers, now);
            let conditions = match &result {
                Ok(issued) => {
                    let message = format!("Certificate is up to date and has not expired (serial {})", issued.serial);
                    vec![Condition::new("Ready", true, "Ready", message, generation)]
                }
                Err((reason, message)) => {
                    // The Certificate's own problem is a warning: it is not served, but the files are valid
                    // (cert-manager too just shows it not Ready). A broken issuer is reported as an error.
                    let spec_field = if *reason == "InvalidRequest" { "spec" } else { "spec.issuerRef" };
                    let diagnostic = if *reason == "InvalidRequest" {
                        portico_resources::Diagnostic::error(reference.clone(), spec_field, message.clone())
                    } else {
                        portico_resources::Diagnostic::warning(reference.clone(), spec_field, message.clone())
                    };
                    self.errors.push(diagnostic);
                    vec![
                        Condition::new("Ready", false, reason, message.clone(), generation),
                        Condition::new("Issuing", true, reason, message.clone(), generation),
                    ]
                }
            };
            // Shim-made Certificates get a status too, as cert-manager creates them as objects.
            self.statuses.insert(reference, ResourceStatus::Conditions { conditions });
        }
        let mut displaced = Vec::new();
        for (key, (secret_name, issued, issuer_ref)) in &self.issued {
            let resource = Resource::Secret(Arc::new(secret(key, secret_name, issued, issuer_ref)));
            let reference = resource.resource_ref();
            let original = snapshot.get(&reference).map(|r| (r, snapshot.sources.get(&reference).cloned()));
            snapshot.insert(resource, None);
            displaced.push((reference, original));
        }
        displaced
    }

    /// Issuer and ClusterIssuer statuses; returns the usable CAs by issuer reference.
    fn issuer_statuses(&mut self, snapshot: &Snapshot, now: SystemTime) -> BTreeMap<ResourceRef, IssuerState> {
        let mut issuers = BTreeMap::new();
        let all = snapshot
            .issuers
            .iter()
            .map(|(k, i)| {
                (ResourceRef { kind: Kind::Issuer, key: k.clone() }, &i.spec, &i.metadata, k.namespace.clone())
            })
            .chain(snapshot.cluster_issuers.iter().map(|(k, i)| {
                (
                    ResourceRef { kind: Kind::ClusterIssuer, key: k.clone() },
                    &i.spec,
                    &i.metadata,
                    self.cluster_resource_namespace.clone(),
                )
            }));
        for (reference, spec, metadata, secret_namespace) in all {
            let state = issuer_state(snapshot, spec, &secret_namespace, now);
            let condition = match &state {
                IssuerState::Ca(ca) => Condition::new(
                    "Ready",
                    true,
                    "KeyPairVerified",
                    format!("Signing CA {} verified", ca.subject()),
                    metadata.generation,
                ),
                IssuerState::Acme(acme) => Condition::new(
                    "Ready",
                    true,
                    "ACMEAccountRegistered",
                    format!("ACME server {}", acme.server),
                    metadata.generation,
                ),
                IssuerState::Unsupported(message) => {
                    Condition::new("Ready", false, "Unsupported", message.clone(), metadata.generation)
                }
                IssuerState::Broken(reason, message) => {
                    self.errors.push(portico_resources::Diagnostic::error(
                        reference.clone(),
                        "spec.ca.secretName",
                        message.clone(),
                    ));
                    Condition::new("Ready", false, reason, message.clone(), metadata.generation)
                }
            };
            self.statuses.insert(reference.clone(), ResourceStatus::Conditions { conditions: vec![condition] });
            issuers.insert(reference, state);
        }
        issuers
    }

    fn ensure(
        &mut self,
        key: &ObjectKey,
        certificate: &Certificate,
        snapshot: &Snapshot,
        issuers: &BTreeMap<ResourceRef, IssuerState>,
        now: SystemTime,
    ) -> Result<Issued, (&'static str, String)> {
        let spec = &certificate.spec;
        let issuer = issuer_reference(&spec.issuer_ref, &key.namespace)?;
        let ca = match issuers.get(&issuer) {
            None => return Err(("IssuerNotFound", format!("{issuer} does not exist"))),
            Some(IssuerState::Ca(ca)) => ca,
            Some(IssuerState::Acme(acme)) => return self.ensure_acme(key, certificate, &issuer, acme, now),
            Some(IssuerState::Unsupported(m)) => return Err(("IssuerNotReady", format!("{issuer}: {m}"))),
            Some(IssuerState::Broken(_, m)) => return Err(("IssuerNotReady", format!("{issuer} is not ready: {m}"))),
        };
        let ca_issuer = issuer_spec(snapshot, &issuer).and_then(|s| s.ca.clone());
        let request =
            CertificateRequest::from_spec(spec, ca_issuer.as_ref()).map_err(|e| ("InvalidRequest", e.to_string()))?;
        // What we hold already, in memory or in the state directory.
        let held = match self.issued.get(key) {
            Some((_, issued, _)) if issued.matches(&request).is_ok() => Some(issued.clone()),
            _ => match self.store.as_ref().map(|s| s.load(&key.namespace, &key.name, &request)) {
                Some(Ok(found)) => found,
                Some(Err(error)) => {
                    // A corrupt or foreign file is never used: reported, then replaced by a new issuance.
                    tracing::warn!(certificate = %key, %error, "stored certificate not used; issuing a new one");
                    self.errors.push(portico_resources::Diagnostic::warning(
                        ResourceRef { kind: Kind::Certificate, key: key.clone() },
                        "",
                        format!("stored certificate not used, issuing a new one: {error}"),
                    ));
                    None
                }
                None => None,
            },
        };
        // Then what the Secret holds already: on Kubernetes another replica (the previous leader) or an
        // earlier run may have issued it; re-issuing at every failover would churn certificates.
        let usable = |issued: &Issued| issued.issued_by(ca) && issued.renewal_time > now;
        let held = held
            .filter(usable)
            .or_else(|| issued_in_secret(snapshot, &key.namespace, &spec.secret_name, &request).filter(usable));
        if let Some(issued) = held {
            self.issued.insert(key.clone(), (spec.secret_name.clone(), issued.clone(), spec.issuer_ref.clone()));
            return Ok(issued);
        }
        // Due, missing or from another CA: issue, unless a recent failure asks to wait.
        if let Some((count, since)) = self.failures.get(key) {
            let wait =
                portico_pki::Backoff { initial: Duration::from_secs(5), max: Duration::from_secs(300) }.delay(*count);
            if now < *since + wait {
                if let Some((_, issued, _)) = self.issued.get(key) {
                    return Ok(issued.clone());
                }
                return Err(("Backoff", format!("issuance failed {count} time(s); next try in {wait:?}")));
            }
        }
        match portico_pki::issue(ca, &request) {
            Ok(issued) => {
                self.failures.remove(key);
                if let Some(store) = &self.store
                    && let Err(error) = store.save(&key.namespace, &key.name, &issued)
                {
                    tracing::error!(certificate = %key, %error, "issued certificate not persisted");
                }
                tracing::info!(certificate = %key, serial = %issued.serial, "certificate issued");
                self.issued.insert(key.clone(), (spec.secret_name.clone(), issued.clone(), spec.issuer_ref.clone()));
                Ok(issued)
            }
            Err(error) => {
                let count = self.failures.get(key).map_or(1, |(c, _)| c + 1);
                self.failures.insert(key.clone(), (count, now));
                // The Secret keeps its previous certificate, if any, until issuance works again.
                Err((error.reason(), error.to_string()))
            }
        }
    }

    /// ACME: serve what is held while it is valid, else start an order in the background (once).
    fn ensure_acme(
        &mut self,
        key: &ObjectKey,
        certificate: &Certificate,
        issuer: &ResourceRef,
        spec: &portico_pki::spec::AcmeIssuer,
        now: SystemTime,
    ) -> Result<Issued, (&'static str, String)> {
        let request =
            CertificateRequest::from_spec(&certificate.spec, None).map_err(|e| ("InvalidRequest", e.to_string()))?;
        // An ACME server sets the subject as it likes: only the names must match.
        let mut wanted: Vec<String> =
            request.dns_names.iter().chain(request.common_name.iter()).map(|n| n.to_ascii_lowercase()).collect();
        wanted.sort();
        wanted.dedup();
        let names_match = |issued: &Issued| {
            let mut got: Vec<String> = issued.dns_names.iter().map(|n| n.to_ascii_lowercase()).collect();
            got.sort();
            got.dedup();
            got == wanted
        };
        let held = match self.issued.get(key) {
            Some((_, issued, _)) if names_match(issued) => Some(issued.clone()),
            _ => self.store.as_ref().and_then(|s| {
                let relaxed = CertificateRequest { common_name: None, dns_names: wanted.clone(), ..request.clone() };
                s.load(&key.namespace, &key.name, &relaxed).ok().flatten()
            }),
        };
        if let Some(issued) = held.filter(|i| i.renewal_time > now && names_match(i)) {
            let spec = &certificate.spec;
            self.issued.insert(key.clone(), (spec.secret_name.clone(), issued.clone(), spec.issuer_ref.clone()));
            return Ok(issued);
        }
        let Some(acme) = &mut self.acme else {
            return Err(("Pending", "ACME orders run only under `portico run`".into()));
        };
        if let Some(message) = self.acme_errors.get(key)
            && let Some((count, since)) = self.failures.get(key)
        {
            let wait =
                portico_pki::Backoff { initial: Duration::from_secs(5), max: Duration::from_secs(300) }.delay(*count);
            if now < *since + wait {
                return Err(("Failed", format!("ACME order failed: {message}; next try in {wait:?}")));
            }
        }
        if acme.in_flight.insert(key.clone()) {
            let mut names: Vec<String> = certificate.spec.dns_names.clone();
            if let Some(cn) = &certificate.spec.common_name
                && !names.contains(cn)
            {
                names.insert(0, cn.clone());
            }
            let ca_bundle = spec.ca_bundle.as_deref().and_then(|b| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.decode(b.trim()).ok().and_then(|d| String::from_utf8(d).ok())
            });
            let task = AcmeTask {
                certificate: key.clone(),
                issuer: issuer.clone(),
                directory: spec.server.clone(),
                ca_bundle,
                email: spec.email.clone(),
                credentials: acme.accounts.get(issuer).cloned(),
                names,
                algorithm: request.key_algorithm,
                responder: acme.responder.clone(),
                outcomes: acme.outcomes.clone(),
            };
            tokio::spawn(task.run());
        }
        Err(("Issuing", format!("ACME order for {} in progress", certificate.spec.secret_name)))
    }

    /// When the next certificate is due for renewal (or a failed one for another try).
    pub fn next_renewal(&self, now: SystemTime) -> Option<Duration> {
        let renewals = self.issued.values().map(|(_, i, _)| i.renewal_time);
        let retries = self.failures.values().map(|(count, since)| {
            *since
                + portico_pki::Backoff { initial: Duration::from_secs(5), max: Duration::from_secs(300) }.delay(*count)
        });
        renewals.chain(retries).min().map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
    }

    /// Certificate and Issuer statuses of the last reconcile.
    pub fn statuses(&self) -> &BTreeMap<ResourceRef, ResourceStatus> {
        &self.statuses
    }

    /// The Secrets of the Certificates issued so far (what [`CertManager::reconcile`] puts in snapshots),
    /// for a provider that stores them (Kubernetes).
    pub fn secrets(&self) -> Vec<Secret> {
        self.issued.iter().map(|(key, (name, issued, issuer))| secret(key, name, issued, issuer)).collect()
    }

    /// Errors of the last reconcile, for the status document and logs.
    pub fn errors(&self) -> &[portico_resources::Diagnostic] {
        &self.errors
    }
}

/// One ACME order, run in the background.
struct AcmeTask {
    certificate: ObjectKey,
    issuer: ResourceRef,
    directory: String,
    ca_bundle: Option<String>,
    email: Option<String>,
    credentials: Option<portico_pki::SecretPem>,
    names: Vec<String>,
    algorithm: portico_pki::KeyAlgorithm,
    responder: portico_pki::acme::Http01Responder,
    outcomes: tokio::sync::mpsc::UnboundedSender<AcmeOutcome>,
}

impl AcmeTask {
    async fn run(self) {
        let account = portico_pki::acme::AcmeAccount::connect(
            &self.directory,
            self.ca_bundle.as_deref(),
            self.email.as_deref(),
            self.credentials.as_ref(),
        )
        .await;
        let (result, credentials) = match account {
            Ok((account, credentials)) => {
                let order = account.order(&self.names, self.algorithm, &self.responder, Duration::from_secs(90)).await;
                (order.map_err(|e| e.to_string()), Some(credentials))
            }
            Err(error) => (Err(error.to_string()), None),
        };
        let _ =
            self.outcomes.send(AcmeOutcome { certificate: self.certificate, result, issuer: self.issuer, credentials });
    }
}

/// What an issuer can do.
enum IssuerState {
    Ca(Box<CertificateAuthority>),
    Acme(Box<portico_pki::spec::AcmeIssuer>),
    Unsupported(String),
    Broken(&'static str, String),
}

fn issuer_state(snapshot: &Snapshot, spec: &IssuerSpec, secret_namespace: &str, now: SystemTime) -> IssuerState {
    if let Some(acme) = &spec.acme {
        let http01 = acme.solvers.is_empty() || acme.solvers.iter().any(|s| s.http01.is_some());
        return if http01 {
            IssuerState::Acme(Box::new(acme.clone()))
        } else {
            IssuerState::Unsupported("only HTTP-01 ACME solvers are served (DNS-01 comes with Portico's DNS)".into())
        };
    }
    let Some(ca) = &spec.ca else {
        return IssuerState::Unsupported("neither spec.ca nor spec.acme is set".into());
    };
    let key = ObjectKey::new(secret_namespace, &ca.secret_name);
    let Some(secret) = snapshot.secrets.get(&key) else {
        return IssuerState::Broken("ErrGetKeyPair", format!("Secret {key} does not exist"));
    };
    let data: BTreeMap<String, Vec<u8>> = secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
    match CertificateAuthority::from_secret_data(&data) {
        Ok(authority) if authority.not_after() > now => IssuerState::Ca(Box::new(authority)),
        Ok(_) => IssuerState::Broken("ErrInvalidKeyPair", format!("the CA in Secret {key} has expired")),
        Err(error) => IssuerState::Broken(error.reason(), format!("Secret {key}: {error}")),
    }
}

fn issuer_reference(issuer: &IssuerRef, namespace: &str) -> Result<ResourceRef, (&'static str, String)> {
    if issuer.group_or_default() != "cert-manager.io" {
        return Err(("IssuerNotFound", format!("issuers of group {} are not served", issuer.group_or_default())));
    }
    match issuer.kind_or_default() {
        "ClusterIssuer" => Ok(ResourceRef::new(Kind::ClusterIssuer, "", &issuer.name)),
        "Issuer" => Ok(ResourceRef::new(Kind::Issuer, namespace, &issuer.name)),
        other => Err(("IssuerNotFound", format!("issuerRef.kind {other} is not Issuer or ClusterIssuer"))),
    }
}

fn issuer_spec<'a>(snapshot: &'a Snapshot, issuer: &ResourceRef) -> Option<&'a IssuerSpec> {
    match issuer.kind {
        Kind::Issuer => snapshot.issuers.get(&issuer.key).map(|i| &i.spec),
        Kind::ClusterIssuer => snapshot.cluster_issuers.get(&issuer.key).map(|i| &i.spec),
        _ => None,
    }
}

/// The Secret cert-manager would write for an issued certificate.
/// Secrets [`CertManager::reconcile`] put into a snapshot, with what each replaced (and its source).
pub type Displaced = Vec<(ResourceRef, Option<(Resource, Option<portico_resources::Source>)>)>;

/// Takes the Secrets [`CertManager::reconcile`] put into `snapshot` out again, so that it is the provider's
/// view once more (on Kubernetes: what the API server has, which decides whether a Secret must be written).
pub fn restore(snapshot: &mut Snapshot, displaced: Displaced) {
    for (reference, original) in displaced.into_iter().rev() {
        snapshot.remove(&reference);
        if let Some((resource, source)) = original {
            snapshot.insert(resource, source);
        }
    }
}

/// The certificate in Secret `namespace/name` of the snapshot, if it is a valid pair for `request`.
fn issued_in_secret(snapshot: &Snapshot, namespace: &str, name: &str, request: &CertificateRequest) -> Option<Issued> {
    let secret = snapshot.secrets.get(&ObjectKey { namespace: namespace.to_string(), name: name.to_string() })?;
    let data = secret.data.as_ref()?;
    let text = |field: &str| data.get(field).and_then(|bytes| std::str::from_utf8(&bytes.0).ok());
    let issued = Issued::from_pem(text("tls.crt")?, text("tls.key")?, text("ca.crt"), request.renew_before).ok()?;
    issued.matches(request).ok()?;
    Some(issued)
}

fn secret(certificate: &ObjectKey, secret_name: &str, issued: &Issued, issuer: &IssuerRef) -> Secret {
    let data = portico_pki::secret_data(issued).into_iter().map(|(k, v)| (k, ByteString(v))).collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.to_string()),
            namespace: Some(certificate.namespace.clone()),
            annotations: Some(portico_pki::secret_annotations(issued, &certificate.name, issuer)),
            ..ObjectMeta::default()
        },
        type_: Some(portico_pki::secret::SECRET_TYPE_TLS.to_string()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Certificates to serve: the explicit ones, plus those cert-manager's ingress-shim and gateway-shim derive
/// from annotated Ingresses (one per `tls[]` entry) and Gateways (one per referenced Secret, with the
/// hostnames of the listeners that use it; listeners without a hostname and Passthrough ones are skipped).
pub fn wanted_certificates(snapshot: &Snapshot) -> BTreeMap<ObjectKey, Certificate> {
    let mut wanted: BTreeMap<ObjectKey, Certificate> =
        snapshot.certificates.iter().map(|(key, certificate)| (key.clone(), Certificate::clone(certificate))).collect();
    let issuer_of = |meta: &ObjectMeta| -> Option<IssuerRef> {
        let annotations = meta.annotations.as_ref()?;
        let (name, kind) = match (annotations.get(CLUSTER_ISSUER_ANNOTATION), annotations.get(ISSUER_ANNOTATION)) {
            (Some(name), _) => (name.clone(), "ClusterIssuer"),
            (None, Some(name)) => (name.clone(), "Issuer"),
            _ => return None,
        };
        Some(IssuerRef { name, kind: Some(kind.to_string()), group: Some("cert-manager.io".into()) })
    };
    let shim = |meta: &ObjectMeta, namespace: &str, secret: &str, names: Vec<String>, issuer: IssuerRef| {
        let annotations = meta.annotations.clone().unwrap_or_default();
        let spec = CertificateSpec {
            secret_name: secret.to_string(),
            issuer_ref: issuer,
            common_name: annotations.get("cert-manager.io/common-name").cloned(),
            duration: annotations.get("cert-manager.io/duration").cloned(),
            renew_before: annotations.get("cert-manager.io/renew-before").cloned(),
            dns_names: names,
            private_key: annotations
                .get("cert-manager.io/private-key-algorithm")
                .map(|a| portico_pki::spec::CertificatePrivateKey { algorithm: Some(a.clone()), ..Default::default() }),
            ..CertificateSpec::default()
        };
        let metadata = ObjectMeta {
            name: Some(secret.to_string()),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        };
        (ObjectKey::new(namespace, secret), Certificate { metadata, spec })
    };
    for (key, ingress) in &snapshot.ingresses {
        let Some(issuer) = issuer_of(&ingress.metadata) else { continue };
        for tls in ingress.spec.iter().flat_map(|s| s.tls.iter().flatten()) {
            let Some(secret_name) = &tls.secret_name else { continue };
            let (k, c) = shim(
                &ingress.metadata,
                &key.namespace,
                secret_name,
                tls.hosts.clone().unwrap_or_default(),
                issuer.clone(),
            );
            wanted.entry(k).or_insert(c);
        }
    }
    for (key, gateway) in &snapshot.gateways {
        let Some(issuer) = issuer_of(&gateway.metadata) else { continue };
        let mut by_secret: BTreeMap<ObjectKey, Vec<String>> = BTreeMap::new();
        for listener in &gateway.spec.listeners {
            let Some(tls) = &listener.tls else { continue };
            let (Some(hostname), false) = (&listener.hostname, tls.mode.as_deref() == Some("Passthrough")) else {
                continue;
            };
            for cert_ref in &tls.certificate_refs {
                let namespace = cert_ref.namespace.clone().unwrap_or_else(|| key.namespace.clone());
                let names = by_secret.entry(ObjectKey::new(namespace, &cert_ref.name)).or_default();
                if !names.contains(hostname) {
                    names.push(hostname.clone());
                }
            }
        }
        for (secret, names) in by_secret {
            let (k, c) = shim(&gateway.metadata, &secret.namespace, &secret.name, names, issuer.clone());
            wanted.entry(k).or_insert(c);
        }
    }
    wanted
}
