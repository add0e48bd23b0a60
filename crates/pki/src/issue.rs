//! Issuing a certificate from a [`CertificateAuthority`], what the result looks like ([`Issued`]), when to
//! renew it and how long to wait after a failure.

use crate::ca::{CaError, CertificateAuthority, parse_certificates, to_system_time};
use crate::der;
use crate::key::{KeyAlgorithm, KeyError, PrivateKey, SecretPem, pem_encode};
use crate::spec::{self, CaIssuer, CertificateSpec, X509Subject};
use rcgen::{
    BasicConstraints, CertificateParams, CrlDistributionPoint, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, SanType, SerialNumber, SigningKey,
};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// Why a certificate was not issued. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The request is not valid (a spec field is wrong); `field` is its path in the Certificate.
    #[error("{field}: {message}")]
    InvalidRequest {
        /// Path of the field, e.g. `spec.ipAddresses[1]`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A requested name is outside what the CA may sign (its nameConstraints).
    #[error("{name} may not be issued by this CA: {detail}")]
    NameNotPermitted {
        /// The refused name.
        name: String,
        /// Which constraint refuses it.
        detail: String,
    },
    /// The private key could not be made or read.
    #[error("private key: {0}")]
    Key(#[from] KeyError),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

impl IssueError {
    /// The condition reason to report on the Certificate (`InvalidRequest` for a bad spec, cert-manager's
    /// `SigningError` otherwise).
    pub fn reason(&self) -> &'static str {
        match self {
            IssueError::InvalidRequest { .. } => "InvalidRequest",
            _ => "SigningError",
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> IssueError {
    IssueError::InvalidRequest { field: field.into(), message: message.into() }
}

/// What to issue: a Certificate's spec, resolved and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct CertificateRequest {
    /// Subject common name.
    pub common_name: Option<String>,
    /// Other subject fields.
    pub subject: X509Subject,
    /// DNS subject alternative names (wildcards allowed).
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// URI subject alternative names.
    pub uris: Vec<String>,
    /// Email subject alternative names.
    pub email_addresses: Vec<String>,
    /// Requested validity (capped at the CA's own notAfter).
    pub duration: Duration,
    /// How long before notAfter to renew; `None` means one third of the duration.
    pub renew_before: Option<Duration>,
    /// Algorithm of a new key.
    pub key_algorithm: KeyAlgorithm,
    /// `spec.privateKey.rotationPolicy: Never`: the caller should put the current key in `private_key`.
    pub rotation_never: bool,
    /// A key to reuse instead of generating one.
    pub private_key: Option<PrivateKey>,
    /// cert-manager usages (`digital signature`, `server auth`, ...); empty means the default
    /// (digital signature, plus key encipherment for RSA keys).
    pub usages: Vec<String>,
    /// Whether the certificate is itself a CA.
    pub is_ca: bool,
    /// CRL distribution points to stamp into the certificate (from the issuer).
    pub crl_distribution_points: Vec<String>,
    /// OCSP responders to stamp into the certificate (from the issuer).
    pub ocsp_servers: Vec<String>,
    /// CA issuer URLs to stamp into the certificate (from the issuer).
    pub issuing_certificate_urls: Vec<String>,
}

impl Default for CertificateRequest {
    fn default() -> Self {
        CertificateRequest {
            common_name: None,
            subject: X509Subject::default(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            uris: Vec::new(),
            email_addresses: Vec::new(),
            duration: spec::DEFAULT_DURATION,
            renew_before: None,
            key_algorithm: KeyAlgorithm::default(),
            rotation_never: false,
            private_key: None,
            usages: Vec::new(),
            is_ca: false,
            crl_distribution_points: Vec::new(),
            ocsp_servers: Vec::new(),
            issuing_certificate_urls: Vec::new(),
        }
    }
}

impl CertificateRequest {
    /// The request for a Certificate's spec, with the URLs of the CA issuer that signs it. Errors name the
    /// field (`spec.duration: invalid duration "90d" ...`).
    pub fn from_spec(spec: &CertificateSpec, ca_issuer: Option<&CaIssuer>) -> Result<Self, IssueError> {
        let duration = match &spec.duration {
            Some(text) => spec::parse_duration(text).map_err(|e| invalid("spec.duration", e))?,
            None => spec::DEFAULT_DURATION,
        };
        if duration.is_zero() {
            return Err(invalid("spec.duration", "must be greater than zero"));
        }
        let renew_before = match (&spec.renew_before, spec.renew_before_percentage) {
            (Some(text), _) => Some(spec::parse_duration(text).map_err(|e| invalid("spec.renewBefore", e))?),
            (None, Some(pct)) if (1..100).contains(&pct) => Some(duration.mul_f64(f64::from(pct) / 100.0)),
            (None, Some(pct)) => {
                return Err(invalid("spec.renewBeforePercentage", format!("{pct} is not between 1 and 99")));
            }
            (None, None) => None,
        };
        if let Some(rb) = renew_before
            && rb >= duration
        {
            return Err(invalid("spec.renewBefore", format!("{rb:?} must be shorter than the duration {duration:?}")));
        }
        let ip_addresses = spec
            .ip_addresses
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                ip.trim()
                    .parse()
                    .map_err(|_| invalid(format!("spec.ipAddresses[{i}]"), format!("\"{ip}\" is not an IP address")))
            })
            .collect::<Result<Vec<IpAddr>, _>>()?;
        let pk = spec.private_key.clone().unwrap_or_default();
        let key_algorithm =
            KeyAlgorithm::from_spec(pk.algorithm.as_deref(), pk.size).map_err(|e| invalid("spec.privateKey", e))?;
        let rotation_never = match pk.rotation_policy.as_deref() {
            None | Some("Always") => false,
            Some("Never") => true,
            Some(other) => {
                return Err(invalid("spec.privateKey.rotationPolicy", format!("\"{other}\" is not Always or Never")));
            }
        };
        for (i, usage) in spec.usages.iter().enumerate() {
            if usage_of(usage).is_none() {
                return Err(invalid(format!("spec.usages[{i}]"), format!("unknown usage \"{usage}\"")));
            }
        }
        let ca = ca_issuer.cloned().unwrap_or_default();
        let request = CertificateRequest {
            common_name: spec.common_name.clone().filter(|cn| !cn.is_empty()),
            subject: spec.subject.clone().unwrap_or_default(),
            dns_names: spec.dns_names.clone(),
            ip_addresses,
            uris: spec.uris.clone(),
            email_addresses: spec.email_addresses.clone(),
            duration,
            renew_before,
            key_algorithm,
            rotation_never,
            private_key: None,
            usages: spec.usages.clone(),
            is_ca: spec.is_ca.unwrap_or(false),
            crl_distribution_points: ca.crl_distribution_points,
            ocsp_servers: ca.ocsp_servers,
            issuing_certificate_urls: ca.issuing_certificate_urls,
        };
        request.validate()?;
        Ok(request)
    }

    fn validate(&self) -> Result<(), IssueError> {
        if self.common_name.is_none()
            && self.dns_names.is_empty()
            && self.ip_addresses.is_empty()
            && self.uris.is_empty()
            && self.email_addresses.is_empty()
        {
            return Err(invalid(
                "spec",
                "no commonName, dnsNames, ipAddresses, uris or emailAddresses: nothing to certify",
            ));
        }
        if let Some(cn) = &self.common_name
            && cn.len() > 64
        {
            return Err(invalid("spec.commonName", format!("{} bytes long, the limit is 64", cn.len())));
        }
        for (i, name) in self.dns_names.iter().enumerate() {
            if name.is_empty() || !name.is_ascii() || name.contains(char::is_whitespace) {
                return Err(invalid(format!("spec.dnsNames[{i}]"), format!("\"{name}\" is not a DNS name")));
            }
        }
        Ok(())
    }

    /// Every name that the CA's name constraints must allow: DNS names, IP addresses, and the common name
    /// when it is a host name or an address.
    fn check_names(&self, ca: &CertificateAuthority) -> Result<(), IssueError> {
        let refuse = |name: &str, detail: String| IssueError::NameNotPermitted { name: name.to_string(), detail };
        let cn = self.common_name.iter().filter(|cn| !self.dns_names.contains(cn));
        for name in self.dns_names.iter().chain(cn) {
            match name.parse::<IpAddr>() {
                Ok(ip) => ca.permits_ip(ip).map_err(|d| refuse(name, d))?,
                Err(_) if name.contains('.') && !name.contains(' ') => {
                    ca.permits_dns(name).map_err(|d| refuse(name, d))?
                }
                Err(_) => {}
            }
        }
        for ip in &self.ip_addresses {
            ca.permits_ip(*ip).map_err(|d| refuse(&ip.to_string(), d))?;
        }
        Ok(())
    }
}

/// A certificate with its key, in the shapes a Secret and a listener need.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The leaf followed by the intermediates (`tls.crt`).
    pub chain_pem: String,
    /// The private key as PKCS#8 PEM (`tls.key`), redacted when printed.
    pub key_pem: SecretPem,
    /// The root CA (`ca.crt`) when known.
    pub ca_pem: Option<String>,
    /// Serial number in upper-case hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// When to renew: notAfter minus renewBefore (default a third of the actual validity).
    pub renewal_time: SystemTime,
    /// Subject common name of the leaf.
    pub common_name: Option<String>,
    /// DNS names of the leaf.
    pub dns_names: Vec<String>,
    /// IP addresses of the leaf.
    pub ip_addresses: Vec<IpAddr>,
    /// URIs of the leaf.
    pub uris: Vec<String>,
    /// Email addresses of the leaf.
    pub email_addresses: Vec<String>,
}

/// Why a certificate and key do not make a usable pair.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The certificate text is wrong.
    #[error("certificate: {0}")]
    Certificate(#[from] CaError),
    /// The key text is wrong.
    #[error("private key: {0}")]
    Key(#[from] KeyError),
    /// The key is not the certificate's (cert-manager's `SecretMismatch` / `InvalidKeyPair`).
    #[error("the private key does not match the certificate \"{subject}\"")]
    KeyMismatch {
        /// Subject of the leaf.
        subject: String,
    },
}

impl Issued {
    /// Reads and checks a certificate chain (leaf first), its key and optionally the root: everything
    /// parses and the key is the leaf's. `renew_before` as in [`renewal_time`].
    pub fn from_pem(
        chain_pem: &str,
        key_pem: &str,
        ca_pem: Option<&str>,
        renew_before: Option<Duration>,
    ) -> Result<Self, VerifyError> {
        let chain = parse_certificates(chain_pem, "tls.crt")?;
        let leaf_der = chain.first().ok_or(CaError::NoCertificate)?;
        if let Some(ca) = ca_pem {
            parse_certificates(ca, "ca.crt")?;
        }
        let key = PrivateKey::from_pem(key_pem)?;
        let (_, leaf) = X509Certificate::from_der(leaf_der).map_err(|e| CaError::BadCertificate {
            file: "tls.crt",
            index: 1,
            message: e.to_string(),
        })?;
        if key.public_key_raw() != leaf.public_key().subject_public_key.data.as_ref() {
            return Err(VerifyError::KeyMismatch { subject: leaf.subject().to_string() });
        }
        let not_before = to_system_time(leaf.validity().not_before);
        let not_after = to_system_time(leaf.validity().not_after);
        let mut issued = Issued {
            chain_pem: chain.iter().map(|der| pem_encode("CERTIFICATE", der)).collect(),
            key_pem: key.to_pem(),
            ca_pem: ca_pem.map(str::to_string).filter(|s| !s.trim().is_empty()),
            serial: leaf.raw_serial().iter().map(|b| format!("{b:02X}")).collect(),
            not_before,
            not_after,
            renewal_time: renewal_time(not_before, not_after, renew_before),
            common_name: leaf.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            uris: Vec::new(),
            email_addresses: Vec::new(),
        };
        if let Ok(Some(san)) = leaf.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => issued.dns_names.push(n.to_string()),
                    GeneralName::URI(u) => issued.uris.push(u.to_string()),
                    GeneralName::RFC822Name(e) => issued.email_addresses.push(e.to_string()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                            issued.ip_addresses.push(IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                            issued.ip_addresses.push(IpAddr::from(v6));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(issued)
    }

    /// The private key, parsed.
    pub fn private_key(&self) -> Result<PrivateKey, KeyError> {
        PrivateKey::from_pem(self.key_pem.expose())
    }

    /// Whether this certificate still answers the request: same common name and the same sets of DNS
    /// names, IP addresses, URIs and emails. The error lists what changed (cert-manager's `RequestChanged`).
    pub fn matches(&self, request: &CertificateRequest) -> Result<(), String> {
        fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
            let mut v = v.to_vec();
            v.sort();
            v.dedup();
            v
        }
        let lower = |v: &[String]| sorted(&v.iter().map(|s| s.to_ascii_lowercase()).collect::<Vec<_>>());
        let mut changed = Vec::new();
        if self.common_name != request.common_name {
            changed.push("commonName");
        }
        if lower(&self.dns_names) != lower(&request.dns_names) {
            changed.push("dnsNames");
        }
        if sorted(&self.ip_addresses) != sorted(&request.ip_addresses) {
            changed.push("ipAddresses");
        }
        if sorted(&self.uris) != sorted(&request.uris) {
            changed.push("uris");
        }
        if lower(&self.email_addresses) != lower(&request.email_addresses) {
            changed.push("emailAddresses");
        }
        if changed.is_empty() { Ok(()) } else { Err(format!("{} differ from the request", changed.join(", "))) }
    }

    /// Whether the leaf was signed by this CA (cert-manager's `IncorrectIssuer` when not).
    pub fn issued_by(&self, ca: &CertificateAuthority) -> bool {
        let Ok(chain) = parse_certificates(&self.chain_pem, "tls.crt") else { return false };
        let (Some(leaf), Ok((_, ca_cert))) = (chain.first(), X509Certificate::from_der(&ca.chain[0])) else {
            return false;
        };
        X509Certificate::from_der(leaf).is_ok_and(|(_, leaf)| {
            leaf.issuer().as_raw() == ca_cert.subject().as_raw()
                && leaf.verify_signature(Some(ca_cert.public_key())).is_ok()
        })
    }
}

/// When to renew: `not_after - renew_before`, where a missing `renew_before`, or one not shorter than the
/// validity, means a third of the validity (cert-manager's rule).
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime, renew_before: Option<Duration>) -> SystemTime {
    let validity = not_after.duration_since(not_before).unwrap_or_default();
    let before = renew_before.filter(|rb| *rb < validity).unwrap_or(validity / 3);
    not_after - before
}

/// Bounded exponential backoff after failed issuance attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
}

impl Backoff {
    /// cert-manager's: 1 hour after the first failure, doubling up to 32 hours.
    pub const CERT_MANAGER: Backoff =
        Backoff { initial: Duration::from_secs(3600), max: Duration::from_secs(32 * 3600) };

    /// The delay before the next attempt after `failed_attempts` consecutive failures (zero when none).
    pub fn delay(&self, failed_attempts: u32) -> Duration {
        if failed_attempts == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(failed_attempts - 1).unwrap_or(u32::MAX);
        self.initial.checked_mul(factor).map_or(self.max, |d| d.min(self.max))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::CERT_MANAGER
    }
}

/// A cert-manager usage: a key usage bit or an extended key usage.
enum Usage {
    Key(KeyUsagePurpose),
    Extended(ExtendedKeyUsagePurpose),
}

/// Maps a cert-manager usage to a key usage or an extended key usage.
fn usage_of(usage: &str) -> Option<Usage> {
    use ExtendedKeyUsagePurpose as E;
    use KeyUsagePurpose as K;
    Some(match usage {
        "signing" | "digital signature" => Usage::Key(K::DigitalSignature),
        "content commitment" => Usage::Key(K::ContentCommitment),
        "key encipherment" => Usage::Key(K::KeyEncipherment),
        "key agreement" => Usage::Key(K::KeyAgreement),
        "data encipherment" => Usage::Key(K::DataEncipherment),
        "cert sign" => Usage::Key(K::KeyCertSign),
        "crl sign" => Usage::Key(K::CrlSign),
        "encipher only" => Usage::Key(K::EncipherOnly),
        "decipher only" => Usage::Key(K::DecipherOnly),
        "any" => Usage::Extended(E::Any),
        "server auth" => Usage::Extended(E::ServerAuth),
        "client auth" => Usage::Extended(E::ClientAuth),
        "code signing" => Usage::Extended(E::CodeSigning),
        "email protection" | "s/mime" => Usage::Extended(E::EmailProtection),
        "timestamping" => Usage::Extended(E::TimeStamping),
        "ocsp signing" => Usage::Extended(E::OcspSigning),
        "ipsec end system" => Usage::Extended(E::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 5])),
        "ipsec tunnel" => Usage::Extended(E::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 6])),
        "ipsec user" => Usage::Extended(E::Other(vec![1, 3, 6, 1, 5, 5, 7, 3, 7])),
        "microsoft sgc" => Usage::Extended(E::Other(vec![1, 3, 6, 1, 4, 1, 311, 10, 3, 3])),
        "netscape sgc" => Usage::Extended(E::Other(vec![2, 16, 840, 1, 113730, 4, 1])),
        _ => return None,
    })
}

/// A random, positive 16-byte serial number.
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// The DER subject of a request: Go's order (C, ST, L, street, postal code, O, OU, CN, serialNumber).
fn subject_der(common_name: Option<&str>, s: &X509Subject) -> Vec<u8> {
    let mut attrs: Vec<(&[u64], &str)> = Vec::new();
    let groups: [(&[u64], &Vec<String>); 7] = [
        (&[2, 5, 4, 6], &s.countries),
        (&[2, 5, 4, 8], &s.provinces),
        (&[2, 5, 4, 7], &s.localities),
        (&[2, 5, 4, 9], &s.street_addresses),
        (&[2, 5, 4, 17], &s.postal_codes),
        (&[2, 5, 4, 10], &s.organizations),
        (&[2, 5, 4, 11], &s.organizational_units),
    ];
    for (oid, values) in groups {
        attrs.extend(values.iter().map(|v| (oid, v.as_str())));
    }
    attrs.extend(common_name.map(|cn| (&[2, 5, 4, 3][..], cn)));
    attrs.extend(s.serial_number.as_deref().map(|sn| (&[2, 5, 4, 5][..], sn)));
    der::name(&attrs)
}

/// Parameters shared by every certificate Portico signs: random serial, validity, AKI.
pub(crate) fn base_params(ca: Option<&CertificateAuthority>, validity: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    let now = SystemTime::now();
    let mut not_after = now + validity;
    if let Some(ca) = ca {
        not_after = not_after.min(ca.not_after);
        params.use_authority_key_identifier_extension = ca.key_id.is_some();
    }
    params.not_before = now.into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial());
    params.distinguished_name = DistinguishedName::new();
    params
}

/// Signs `params` for `public_key` with the CA, then sets the issuer (and the subject, when given) to exact
/// DER names, re-signing the result. Returns the certificate DER, checked against the CA's key.
pub(crate) fn sign_with_ca(
    params: &CertificateParams,
    public_key: &impl rcgen::PublicKeyData,
    ca: &CertificateAuthority,
    subject_der: Option<&[u8]>,
) -> Result<Vec<u8>, IssueError> {
    let signing = ca.key.key_pair()?;
    let mut issuer_params = CertificateParams::default();
    issuer_params.distinguished_name = DistinguishedName::new();
    issuer_params.key_identifier_method = ca.key_id.clone().map_or(KeyIdMethod::Sha256, KeyIdMethod::PreSpecified);
    let issuer = Issuer::new(issuer_params, &signing);
    let cert = params.signed_by(public_key, &issuer).map_err(|e| IssueError::Signing(e.to_string()))?;
    let der = der::replace_names(cert.der(), Some(&ca.subject_raw), subject_der, |tbs| signing.sign(tbs).ok())
        .ok_or_else(|| IssueError::Signing("could not set the issuer name".into()))?;
    let (_, ca_cert) = X509Certificate::from_der(&ca.chain[0]).map_err(|e| IssueError::Signing(e.to_string()))?;
    let (_, leaf) = X509Certificate::from_der(&der).map_err(|e| IssueError::Signing(e.to_string()))?;
    leaf.verify_signature(Some(ca_cert.public_key()))
        .map_err(|e| IssueError::Signing(format!("the new certificate does not verify with the CA key: {e}")))?;
    Ok(der)
}

/// Issues a certificate for `request` from `ca`: a new key (or `request.private_key`), a random serial,
/// validity `request.duration` capped at the CA's notAfter, the requested names and usages, and the
/// issuer's CRL/OCSP/CA-issuer URLs. Names outside the CA's nameConstraints are refused.
pub fn issue(ca: &CertificateAuthority, request: &CertificateRequest) -> Result<Issued, IssueError> {
    request.validate()?;
    request.check_names(ca)?;
    let key = match &request.private_key {
        Some(key) => key.clone(),
        None => PrivateKey::generate(request.key_algorithm)?,
    };
    let key_pair = key.key_pair()?;

    let mut params = base_params(Some(ca), request.duration);
    let subject = subject_der(request.common_name.as_deref(), &request.subject);
    if subject.len() > 2 {
        // Any entry: rcgen only has to know the subject is not empty (SAN criticality); the real one is set below.
        params.distinguished_name.push(DnType::CommonName, "subject");
    }
    for (i, name) in request.dns_names.iter().enumerate() {
        let ia5 = name.clone().try_into().map_err(|_| invalid(format!("spec.dnsNames[{i}]"), "not IA5 text"))?;
        params.subject_alt_names.push(SanType::DnsName(ia5));
    }
    params.subject_alt_names.extend(request.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
    for (i, uri) in request.uris.iter().enumerate() {
        let ia5 = uri.clone().try_into().map_err(|_| invalid(format!("spec.uris[{i}]"), "not IA5 text"))?;
        params.subject_alt_names.push(SanType::URI(ia5));
    }
    for (i, email) in request.email_addresses.iter().enumerate() {
        let ia5 = email.clone().try_into().map_err(|_| invalid(format!("spec.emailAddresses[{i}]"), "not IA5 text"))?;
        params.subject_alt_names.push(SanType::Rfc822Name(ia5));
    }

    let usages: Vec<&str> = if request.usages.is_empty() {
        if key.algorithm().is_rsa() { vec!["digital signature", "key encipherment"] } else { vec!["digital signature"] }
    } else {
        request.usages.iter().map(String::as_str).collect()
    };
    for usage in usages {
        match usage_of(usage) {
            Some(Usage::Key(ku)) if !params.key_usages.contains(&ku) => params.key_usages.push(ku),
            Some(Usage::Extended(eku)) => params.insert_extended_key_usage(eku),
            Some(Usage::Key(_)) => {}
            None => return Err(invalid("spec.usages", format!("unknown usage \"{usage}\""))),
        }
    }
    params.is_ca = if request.is_ca {
        if !params.key_usages.contains(&KeyUsagePurpose::KeyCertSign) {
            params.key_usages.push(KeyUsagePurpose::KeyCertSign);
        }
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    if !request.crl_distribution_points.is_empty() {
        params.crl_distribution_points = vec![CrlDistributionPoint { uris: request.crl_distribution_points.clone() }];
    }
    if !request.ocsp_servers.is_empty() || !request.issuing_certificate_urls.is_empty() {
        let aia = der::authority_info_access(&request.ocsp_servers, &request.issuing_certificate_urls);
        params.custom_extensions.push(CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], aia));
    }

    let leaf = sign_with_ca(&params, &key_pair, ca, Some(&subject))?;
    let (intermediates, root) = ca.output_chain();
    let mut chain_pem = pem_encode("CERTIFICATE", &leaf);
    for der in intermediates {
        chain_pem.push_str(&pem_encode("CERTIFICATE", der));
    }
    let ca_pem = root.map(|der| pem_encode("CERTIFICATE", der));
    Issued::from_pem(&chain_pem, key.to_pem().expose(), ca_pem.as_deref(), request.renew_before)
        .map_err(|e| IssueError::Signing(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_defaults_to_a_third_and_ignores_a_too_long_renew_before() {
        let nb = SystemTime::UNIX_EPOCH;
        let na = nb + Duration::from_secs(90 * 86400);
        assert_eq!(renewal_time(nb, na, None), na - Duration::from_secs(30 * 86400));
        assert_eq!(renewal_time(nb, na, Some(Duration::from_secs(86400))), na - Duration::from_secs(86400));
        assert_eq!(renewal_time(nb, na, Some(Duration::from_secs(91 * 86400))), na - Duration::from_secs(30 * 86400));
        let short = nb + Duration::from_secs(120);
        assert_eq!(renewal_time(nb, short, Some(Duration::from_secs(60))), nb + Duration::from_secs(60));
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let b = Backoff::CERT_MANAGER;
        assert_eq!(b.delay(0), Duration::ZERO);
        assert_eq!(b.delay(1), Duration::from_secs(3600));
        assert_eq!(b.delay(2), Duration::from_secs(7200));
        assert_eq!(b.delay(6), Duration::from_secs(32 * 3600));
        assert_eq!(b.delay(7), Duration::from_secs(32 * 3600));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(32 * 3600));
        let fast = Backoff { initial: Duration::from_secs(5), max: Duration::from_secs(300) };
        assert_eq!(fast.delay(3), Duration::from_secs(20));
        assert_eq!(fast.delay(40), Duration::from_secs(300));
    }

    #[test]
    fn spec_errors_name_the_field() {
        let spec = |f: &dyn Fn(&mut CertificateSpec)| {
            let mut s =
                CertificateSpec { secret_name: "s".into(), dns_names: vec!["a.example".into()], ..Default::default() };
            f(&mut s);
            CertificateRequest::from_spec(&s, None)
        };
        let ok = spec(&|_| {}).expect("valid");
        assert_eq!(ok.duration, Duration::from_secs(90 * 86400));
        assert_eq!(ok.key_algorithm, KeyAlgorithm::Rsa(2048));
        let err = |f: &dyn Fn(&mut CertificateSpec)| spec(f).unwrap_err().to_string();
        assert!(err(&|s| s.duration = Some("90d".into())).starts_with("spec.duration: invalid duration \"90d\""));
        assert!(err(&|s| s.ip_addresses = vec!["10.0.0.1".into(), "ten".into()]).starts_with("spec.ipAddresses[1]"));
        assert!(err(&|s| s.usages = vec!["server auth".into(), "serverauth".into()]).starts_with("spec.usages[1]"));
        assert!(err(&|s| s.renew_before = Some("2160h".into())).starts_with("spec.renewBefore"));
        assert!(err(&|s| s.dns_names.clear()).contains("nothing to certify"));
        let pct = spec(&|s| {
            s.duration = Some("100h".into());
            s.renew_before_percentage = Some(25);
        })
        .expect("valid");
        assert_eq!(pct.renew_before, Some(Duration::from_secs(25 * 3600)));
    }
}
