//! ACME (RFC 8555) orders with instant-acme. Portico answers the challenges itself: HTTP-01 on its own
//! listeners (an [`Http01Responder`] that the listeners consult for `/.well-known/acme-challenge/TOKEN`),
//! DNS-01 through any [`ChallengeSink`] that can publish a TXT record (Portico's DNS, once it exists).

use crate::issue::{Issued, VerifyError};
use crate::key::{KeyAlgorithm, KeyError, PrivateKey, SecretPem};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Path prefix under which HTTP-01 key authorizations are served.
pub const HTTP01_PATH_PREFIX: &str = "/.well-known/acme-challenge/";

/// Why an ACME order failed. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The ACME server or the HTTP exchange with it failed.
    #[error("ACME server {directory}: {message}")]
    Server {
        /// The directory URL.
        directory: String,
        /// What happened.
        message: String,
    },
    /// The server's TLS root given for the directory is not usable.
    #[error("ACME directory CA: {0}")]
    BadRoot(String),
    /// Stored account credentials do not parse.
    #[error("ACME account credentials: {0}")]
    BadCredentials(String),
    /// The server offered no challenge of the kind the sink answers.
    #[error("{identifier}: the ACME server offers no {kind} challenge")]
    NoChallenge {
        /// The name being authorized.
        identifier: String,
        /// The wanted challenge kind.
        kind: ChallengeKind,
    },
    /// The sink could not publish a challenge.
    #[error("{identifier}: publishing the {kind} challenge failed: {message}")]
    Publish {
        /// The name being authorized.
        identifier: String,
        /// The challenge kind.
        kind: ChallengeKind,
        /// What the sink said.
        message: String,
    },
    /// The server refused a challenge answer (e.g. it got the wrong key authorization, or no answer).
    #[error("{identifier}: {kind} challenge failed: {detail}")]
    ChallengeFailed {
        /// The name being authorized.
        identifier: String,
        /// The challenge kind.
        kind: ChallengeKind,
        /// The server's explanation.
        detail: String,
    },
    /// The order did not become ready (a challenge failed, or it timed out).
    #[error("order for {names:?} is {status}: {detail}")]
    OrderFailed {
        /// The names ordered.
        names: Vec<String>,
        /// The order's final status.
        status: String,
        /// The server's explanation, if any.
        detail: String,
    },
    /// The key for the certificate could not be made.
    #[error("private key: {0}")]
    Key(#[from] KeyError),
    /// The certificate returned does not go with the key or does not parse.
    #[error("certificate returned by the ACME server: {0}")]
    Certificate(#[from] VerifyError),
}

/// The kind of challenge a sink answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeKind {
    /// HTTP-01: serve the key authorization at `http://NAME/.well-known/acme-challenge/TOKEN`.
    Http01,
    /// DNS-01: publish `dns_value` as a TXT record at `_acme-challenge.NAME`.
    Dns01,
}

impl std::fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::Dns01 => "dns-01",
        })
    }
}

/// One challenge to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The kind.
    pub kind: ChallengeKind,
    /// The name being authorized (without a wildcard's `*.`).
    pub identifier: String,
    /// The challenge token (the last path segment for HTTP-01).
    pub token: String,
    /// The key authorization (the HTTP-01 response body).
    pub key_authorization: String,
    /// The DNS-01 TXT value (base64url SHA-256 of the key authorization).
    pub dns_value: String,
}

impl Challenge {
    /// The TXT record name for DNS-01: `_acme-challenge.NAME.`.
    pub fn dns_record_name(&self) -> String {
        format!("_acme-challenge.{}.", self.identifier.trim_end_matches('.'))
    }
}

/// Where challenges are published while an order is validated.
pub trait ChallengeSink: Send + Sync {
    /// The kind of challenge this sink answers.
    fn kind(&self) -> ChallengeKind;
    /// Makes the challenge answerable (before the server is told to validate it).
    fn publish(&self, challenge: &Challenge) -> Result<(), String>;
    /// Removes it once the order is decided.
    fn unpublish(&self, challenge: &Challenge);
}

/// HTTP-01 challenges in memory, for Portico's HTTP listeners to answer: clone it into the listeners and
/// call [`Http01Responder::respond`] for requests under [`HTTP01_PATH_PREFIX`].
#[derive(Clone, Debug, Default)]
pub struct Http01Responder {
    tokens: Arc<RwLock<HashMap<String, String>>>,
}

impl Http01Responder {
    /// An empty responder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The body to answer a request for `path` with (`text/plain`, status 200), or `None` (answer 404).
    pub fn respond(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PATH_PREFIX)?;
        self.tokens.read().ok()?.get(token).cloned()
    }

    /// How many challenges are published.
    pub fn len(&self) -> usize {
        self.tokens.read().map(|t| t.len()).unwrap_or(0)
    }

    /// Whether no challenge is published.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ChallengeSink for Http01Responder {
    fn kind(&self) -> ChallengeKind {
        ChallengeKind::Http01
    }

    fn publish(&self, challenge: &Challenge) -> Result<(), String> {
        let mut tokens = self.tokens.write().map_err(|_| "responder lock poisoned".to_string())?;
        tokens.insert(challenge.token.clone(), challenge.key_authorization.clone());
        Ok(())
    }

    fn unpublish(&self, challenge: &Challenge) {
        if let Ok(mut tokens) = self.tokens.write() {
            tokens.remove(&challenge.token);
        }
    }
}

/// An ACME account on one directory.
#[derive(Clone)]
pub struct AcmeAccount {
    account: Account,
    directory: String,
}

impl std::fmt::Debug for AcmeAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeAccount").field("directory", &self.directory).field("id", &self.account.id()).finish()
    }
}

impl AcmeAccount {
    /// Connects to `directory_url`, trusting `root_ca_pem` for its TLS when given (a test or private ACME
    /// server) or the system's roots otherwise. With `credentials` (JSON from an earlier
    /// [`AcmeAccount::connect`]) the account is restored; without, a new one is registered with `email`.
    /// Returns the account and its credentials JSON to store (it holds the account key: keep it private).
    pub async fn connect(
        directory_url: &str,
        root_ca_pem: Option<&str>,
        email: Option<&str>,
        credentials: Option<&SecretPem>,
    ) -> Result<(Self, SecretPem), AcmeError> {
        let server =
            |e: instant_acme::Error| AcmeError::Server { directory: directory_url.to_string(), message: e.to_string() };
        let builder = match root_ca_pem {
            Some(pem) => Account::builder_with_http(Box::new(http_client_with_root(pem)?)),
            None => Account::builder().map_err(server)?,
        };
        let (account, creds) = match credentials {
            Some(json) => {
                let creds: AccountCredentials =
                    serde_json::from_str(json.expose()).map_err(|e| AcmeError::BadCredentials(e.to_string()))?;
                let account = builder.from_credentials(creds).await.map_err(server)?;
                (account, json.clone())
            }
            None => {
                let contact = email.map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
                let (account, creds) = builder.create(&new, directory_url.to_string(), None).await.map_err(server)?;
                let json = serde_json::to_string(&creds).map_err(|e| AcmeError::BadCredentials(e.to_string()))?;
                (account, SecretPem::new(json))
            }
        };
        Ok((AcmeAccount { account, directory: directory_url.to_string() }, creds))
    }

    /// Orders a certificate for `names` (DNS names, wildcards with DNS-01, or IP addresses), answering every
    /// pending authorization through `sink`, with a new `key_algorithm` key. Waits up to `timeout` for
    /// validation and for the certificate. Challenges are unpublished whatever the outcome.
    pub async fn order(
        &self,
        names: &[String],
        key_algorithm: KeyAlgorithm,
        sink: &dyn ChallengeSink,
        timeout: Duration,
    ) -> Result<Issued, AcmeError> {
        let mut published = Vec::new();
        let result = self.order_inner(names, key_algorithm, sink, timeout, &mut published).await;
        for challenge in &published {
            sink.unpublish(challenge);
        }
        result
    }

    async fn order_inner(
        &self,
        names: &[String],
        key_algorithm: KeyAlgorithm,
        sink: &dyn ChallengeSink,
        timeout: Duration,
        published: &mut Vec<Challenge>,
    ) -> Result<Issued, AcmeError> {
        let server =
            |e: instant_acme::Error| AcmeError::Server { directory: self.directory.clone(), message: e.to_string() };
        let identifiers: Vec<Identifier> = names
            .iter()
            .map(|n| n.parse::<IpAddr>().map_or_else(|_| Identifier::Dns(n.clone()), Identifier::Ip))
            .collect();
        let mut order = self.account.new_order(&NewOrder::new(&identifiers)).await.map_err(server)?;
        let wanted = match sink.kind() {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::Dns01 => ChallengeType::Dns01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(server)?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            let identifier = match authz.identifier().identifier {
                Identifier::Dns(name) => name.clone(),
                Identifier::Ip(ip) => ip.to_string(),
                _ => authz.identifier().to_string(),
            };
            let mut handle = authz
                .challenge(wanted.clone())
                .ok_or(AcmeError::NoChallenge { identifier: identifier.clone(), kind: sink.kind() })?;
            let key_authorization = handle.key_authorization();
            let challenge = Challenge {
                kind: sink.kind(),
                identifier: identifier.clone(),
                token: handle.token.clone(),
                key_authorization: key_authorization.as_str().to_string(),
                dns_value: key_authorization.dns_value(),
            };
            sink.publish(&challenge).map_err(|message| AcmeError::Publish {
                identifier: identifier.clone(),
                kind: sink.kind(),
                message,
            })?;
            published.push(challenge);
            handle.set_ready().await.map_err(|e| match e {
                instant_acme::Error::Api(problem) => AcmeError::ChallengeFailed {
                    identifier: identifier.clone(),
                    kind: sink.kind(),
                    detail: problem.to_string(),
                },
                other => server(other),
            })?;
        }
        let retry = RetryPolicy::new().timeout(timeout);
        // instant-acme reports an order carrying a problem as an API error, and a plain invalid one as a status.
        let (status, order_problem) = match order.poll_ready(&retry).await {
            Ok(status) => (status, None),
            Err(instant_acme::Error::Api(problem)) => (OrderStatus::Invalid, Some(problem.to_string())),
            Err(other) => return Err(server(other)),
        };
        if status != OrderStatus::Ready {
            // Say why: each failed challenge's problem (e.g. "connection refused"), then the order's if new.
            let mut details = Vec::new();
            let mut authorizations = order.authorizations();
            while let Some(Ok(authz)) = authorizations.next().await {
                let identifier = authz.identifier().to_string();
                for problem in authz.challenges.iter().filter_map(|c| c.error.as_ref()) {
                    details.push(format!("{identifier}: {problem}"));
                }
            }
            let order_problems = order_problem.into_iter().chain(order.state().error.iter().map(ToString::to_string));
            for problem in order_problems.collect::<Vec<_>>() {
                if !details.iter().any(|d| d.contains(&problem)) {
                    details.push(problem);
                }
            }
            let detail = if details.is_empty() { "no detail given".to_string() } else { details.join("; ") };
            return Err(AcmeError::OrderFailed { names: names.to_vec(), status: format!("{status:?}"), detail });
        }
        let key = PrivateKey::generate(key_algorithm)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(|e| AcmeError::OrderFailed {
            names: names.to_vec(),
            status: "not finalized".into(),
            detail: e.to_string(),
        })?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key.key_pair()?).map_err(|e| AcmeError::OrderFailed {
            names: names.to_vec(),
            status: "not finalized".into(),
            detail: e.to_string(),
        })?;
        order.finalize_csr(csr.der()).await.map_err(server)?;
        let chain = order.poll_certificate(&retry).await.map_err(server)?;
        Ok(Issued::from_pem(&chain, key.to_pem().expose(), None, None)?)
    }
}

/// One-shot HTTP-01 order: registers an account on `directory_url` (trusting `root_ca_pem_for_directory`
/// for its TLS when given) and orders a certificate for `names` with an ECDSA P-256 key, publishing the
/// challenges to `challenge_sink`. Waits at most two minutes.
pub async fn order_http01(
    directory_url: &str,
    root_ca_pem_for_directory: Option<&str>,
    email: Option<&str>,
    names: &[String],
    challenge_sink: &dyn ChallengeSink,
) -> Result<Issued, AcmeError> {
    let (account, _) = AcmeAccount::connect(directory_url, root_ca_pem_for_directory, email, None).await?;
    account.order(names, KeyAlgorithm::EcdsaP256, challenge_sink, Duration::from_secs(120)).await
}

/// An HTTPS client for instant-acme that trusts only the given PEM roots.
fn http_client_with_root(
    pem: &str,
) -> Result<
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        instant_acme::BodyWrapper<bytes::Bytes>,
    >,
    AcmeError,
> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = crate::ca::parse_certificates(pem, "ACME root").map_err(|e| AcmeError::BadRoot(e.to_string()))?;
    if certs.is_empty() {
        return Err(AcmeError::BadRoot("no PEM certificate found".into()));
    }
    for der in certs {
        roots.add(der.into()).map_err(|e| AcmeError::BadRoot(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::BadRoot(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
}
