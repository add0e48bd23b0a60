//! A CA issuer's key pair (the Secret behind `spec.ca.secretName`), validated the way cert-manager reports
//! it: `KeyPairVerified`, or `ErrGetKeyPair` / `ErrInvalidKeyPair` with the reason.

use crate::key::{KeyError, PrivateKey, pem_encode};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

/// Issuer condition reason when the key pair is usable.
pub const REASON_KEY_PAIR_VERIFIED: &str = "KeyPairVerified";
/// Issuer condition reason when the Secret or its data cannot be read.
pub const REASON_GET_KEY_PAIR: &str = "ErrGetKeyPair";
/// Issuer condition reason when the key pair was read but cannot sign.
pub const REASON_INVALID_KEY_PAIR: &str = "ErrInvalidKeyPair";

/// Why a CA key pair cannot be used. Never contains key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaError {
    /// A Secret key (`tls.crt`, `tls.key`) is missing.
    #[error("Secret has no {0}")]
    MissingData(&'static str),
    /// `tls.crt` holds no PEM certificate.
    #[error("tls.crt: no PEM certificate found")]
    NoCertificate,
    /// A certificate of `tls.crt` or `ca.crt` does not parse.
    #[error("{file}: certificate {index}: {message}")]
    BadCertificate {
        /// `tls.crt` or `ca.crt`.
        file: &'static str,
        /// Position of the certificate in the file, from 1.
        index: usize,
        /// What is wrong with it.
        message: String,
    },
    /// `tls.key` cannot be read.
    #[error("tls.key: {0}")]
    BadKey(#[from] KeyError),
    /// The certificate is not a CA (basicConstraints absent or CA:FALSE).
    #[error("certificate \"{subject}\" is not a CA (basicConstraints CA:TRUE is missing)")]
    NotCa {
        /// Subject of the certificate.
        subject: String,
    },
    /// The CA's keyUsage does not allow signing certificates.
    #[error("certificate \"{subject}\" may not sign certificates (its keyUsage lacks keyCertSign)")]
    NoCertSign {
        /// Subject of the certificate.
        subject: String,
    },
    /// `tls.key` is not the key of the first certificate of `tls.crt`.
    #[error("tls.key does not match the public key of certificate \"{subject}\"")]
    KeyMismatch {
        /// Subject of the certificate.
        subject: String,
    },
    /// The CA certificate has expired.
    #[error("CA certificate \"{subject}\" expired at {not_after}")]
    Expired {
        /// Subject of the certificate.
        subject: String,
        /// Its notAfter (RFC 2822).
        not_after: String,
    },
    /// The CA certificate is not valid yet.
    #[error("CA certificate \"{subject}\" is not valid before {not_before}")]
    NotYetValid {
        /// Subject of the certificate.
        subject: String,
        /// Its notBefore (RFC 2822).
        not_before: String,
    },
}

impl CaError {
    /// cert-manager's issuer condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            CaError::MissingData(_) | CaError::NoCertificate | CaError::BadCertificate { .. } | CaError::BadKey(_) => {
                REASON_GET_KEY_PAIR
            }
            _ => REASON_INVALID_KEY_PAIR,
        }
    }
}

/// An IP network of a name constraint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl IpNet {
    /// Whether `ip` lies in this network (addresses of the other family never do).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, ip, bits): (u128, u128, u32) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (u32::from(n).into(), u32::from(i).into(), 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => (n.into(), i.into(), 128),
            _ => return false,
        };
        let prefix = u32::from(self.prefix).min(bits);
        if prefix == 0 {
            return true;
        }
        let shift = bits - prefix;
        (net >> shift) == (ip >> shift)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The DNS and IP parts of a CA's nameConstraints extension (RFC 5280 4.2.1.10). Other name forms
/// (email, URI, directory names) are not enforced by Portico.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameConstraints {
    /// Subject of the CA the constraints come from.
    pub ca: String,
    /// DNS subtrees names must lie in (when not empty).
    pub permitted_dns: Vec<String>,
    /// DNS subtrees names must not lie in.
    pub excluded_dns: Vec<String>,
    /// Networks IP addresses must lie in (when not empty).
    pub permitted_ip: Vec<IpNet>,
    /// Networks IP addresses must not lie in.
    pub excluded_ip: Vec<IpNet>,
}

impl NameConstraints {
    /// Reads the nameConstraints of a certificate, if it has any.
    pub(crate) fn of(cert: &X509Certificate<'_>) -> Option<Self> {
        let ext = cert.name_constraints().ok().flatten()?;
        let mut out = NameConstraints { ca: cert.subject().to_string(), ..Default::default() };
        let mut add = |trees: &Option<Vec<x509_parser::extensions::GeneralSubtree<'_>>>, permitted: bool| {
            for tree in trees.iter().flatten() {
                match &tree.base {
                    GeneralName::DNSName(name) => {
                        let list = if permitted { &mut out.permitted_dns } else { &mut out.excluded_dns };
                        list.push(name.trim_end_matches('.').to_ascii_lowercase());
                    }
                    GeneralName::IPAddress(bytes) => {
                        if let Some(net) = ip_net(bytes) {
                            let list = if permitted { &mut out.permitted_ip } else { &mut out.excluded_ip };
                            list.push(net);
                        }
                    }
                    _ => {}
                }
            }
        };
        add(&ext.value.permitted_subtrees, true);
        add(&ext.value.excluded_subtrees, false);
        Some(out)
    }

    /// Checks a DNS name (wildcards included); the error says which subtree refuses it.
    pub fn check_dns(&self, name: &str) -> Result<(), String> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(excluded) = self.excluded_dns.iter().find(|c| dns_overlaps(&name, c)) {
            return Err(format!("excluded subtree \"{excluded}\""));
        }
        if !self.permitted_dns.is_empty() && !self.permitted_dns.iter().any(|c| dns_within(&name, c)) {
            return Err(format!("outside the permitted subtrees {:?}", self.permitted_dns));
        }
        Ok(())
    }

    /// Checks an IP address; the error says which network refuses it.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if let Some(excluded) = self.excluded_ip.iter().find(|n| n.contains(ip)) {
            return Err(format!("excluded network {excluded}"));
        }
        let same_family: Vec<_> = self.permitted_ip.iter().filter(|n| n.addr.is_ipv4() == ip.is_ipv4()).collect();
        if !self.permitted_ip.is_empty() && !same_family.iter().any(|n| n.contains(ip)) {
            let list: Vec<String> = self.permitted_ip.iter().map(ToString::to_string).collect();
            return Err(format!("outside the permitted networks [{}]", list.join(", ")));
        }
        Ok(())
    }
}

/// RFC 5280: a name satisfies a DNS constraint if it is the constraint with zero or more labels added on the
/// left; a constraint written with a leading dot only admits proper subdomains.
fn dns_within(name: &str, constraint: &str) -> bool {
    if constraint.is_empty() {
        return true;
    }
    if constraint.starts_with('.') {
        return name.ends_with(constraint);
    }
    name == constraint || name.strip_suffix(constraint).is_some_and(|head| head.ends_with('.'))
}

/// Whether a name (possibly a wildcard) could stand for a name in the excluded subtree.
fn dns_overlaps(name: &str, excluded: &str) -> bool {
    if dns_within(name, excluded) {
        return true;
    }
    // `*.example.com` covers `secret.example.com`: refuse it if that host is excluded.
    match name.strip_prefix("*.") {
        Some(base) => excluded.trim_start_matches('.').split_once('.').is_some_and(|(_, parent)| parent == base),
        None => false,
    }
}

fn ip_net(bytes: &[u8]) -> Option<IpNet> {
    let (addr, mask): (IpAddr, &[u8]) = match bytes.len() {
        8 => (IpAddr::from(<[u8; 4]>::try_from(&bytes[..4]).ok()?), &bytes[4..]),
        32 => (IpAddr::from(<[u8; 16]>::try_from(&bytes[..16]).ok()?), &bytes[16..]),
        _ => return None,
    };
    let prefix = mask.iter().map(|b| b.count_ones()).sum::<u32>() as u8;
    Some(IpNet { addr, prefix })
}

/// A CA that can sign: its certificate, its chain up to the root when known, and its key.
#[derive(Clone)]
pub struct CertificateAuthority {
    pub(crate) key: PrivateKey,
    /// DER certificates: the CA itself first, then the rest of `tls.crt`, then `ca.crt` (no duplicates).
    pub(crate) chain: Vec<Vec<u8>>,
    pub(crate) subject: String,
    pub(crate) subject_raw: Vec<u8>,
    pub(crate) key_id: Option<Vec<u8>>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    pub(crate) constraints: Vec<NameConstraints>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .field("chain_len", &self.chain.len())
            .field("not_after", &self.not_after)
            .field("key", &self.key)
            .finish()
    }
}

impl CertificateAuthority {
    /// Reads and validates a CA key pair: `cert_chain_pem` is the CA certificate optionally followed by its
    /// chain (a Secret's `tls.crt`), `key_pem` its key (`tls.key`: PKCS#8, PKCS#1 or SEC1). The certificate
    /// must be a CA allowed to sign certificates, match the key, and be valid now.
    pub fn from_pem(cert_chain_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        Self::from_pem_at(cert_chain_pem, key_pem, None, SystemTime::now())
    }

    /// Like [`CertificateAuthority::from_pem`], with the Secret's `ca.crt` (the root) added to the chain, and
    /// validity checked at `now`.
    pub fn from_pem_at(
        cert_chain_pem: &str,
        key_pem: &str,
        ca_pem: Option<&str>,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        let mut chain = parse_certificates(cert_chain_pem, "tls.crt")?;
        if chain.is_empty() {
            return Err(CaError::NoCertificate);
        }
        for extra in parse_certificates(ca_pem.unwrap_or_default(), "ca.crt")? {
            if !chain.contains(&extra) {
                chain.push(extra);
            }
        }
        let key = PrivateKey::from_pem(key_pem)?;
        let (_, cert) = X509Certificate::from_der(&chain[0]).map_err(|e| CaError::BadCertificate {
            file: "tls.crt",
            index: 1,
            message: e.to_string(),
        })?;
        let subject = cert.subject().to_string();
        if !cert.is_ca() {
            return Err(CaError::NotCa { subject });
        }
        if let Ok(Some(usage)) = cert.key_usage()
            && !usage.value.key_cert_sign()
        {
            return Err(CaError::NoCertSign { subject });
        }
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::KeyMismatch { subject });
        }
        let not_before = to_system_time(cert.validity().not_before);
        let not_after = to_system_time(cert.validity().not_after);
        if not_after <= now {
            return Err(CaError::Expired { subject, not_after: rfc2822(cert.validity().not_after) });
        }
        if not_before > now {
            return Err(CaError::NotYetValid { subject, not_before: rfc2822(cert.validity().not_before) });
        }
        let key_id = cert.iter_extensions().find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        });
        let constraints = chain
            .iter()
            .filter_map(|der| X509Certificate::from_der(der).ok().and_then(|(_, c)| NameConstraints::of(&c)))
            .collect();
        let subject_raw = cert.subject().as_raw().to_vec();
        Ok(CertificateAuthority { key, chain, subject, subject_raw, key_id, not_before, not_after, constraints })
    }

    /// Reads a CA from a Secret's data (`tls.crt`, `tls.key`, optional `ca.crt`).
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, CaError> {
        let text = |key: &'static str| -> Result<Option<&str>, CaError> {
            match data.get(key) {
                None => Ok(None),
                Some(bytes) => std::str::from_utf8(bytes).map(Some).map_err(|_| CaError::BadCertificate {
                    file: key,
                    index: 1,
                    message: "not PEM text".into(),
                }),
            }
        };
        let crt = text("tls.crt")?.ok_or(CaError::MissingData("tls.crt"))?;
        let key = match data.get("tls.key") {
            Some(bytes) => std::str::from_utf8(bytes).map_err(|_| CaError::BadKey(KeyError::NoPem))?,
            None => return Err(CaError::MissingData("tls.key")),
        };
        Self::from_pem_at(crt, key, text("ca.crt")?.filter(|s| !s.trim().is_empty()), SystemTime::now())
    }

    /// The CA's subject, as `CN=..., O=...`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// When the CA certificate expires (certificates it issues never outlive it).
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When the CA certificate became valid.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The CA certificate as PEM.
    pub fn certificate_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.chain[0])
    }

    /// The name constraints of every CA in the chain (all must be satisfied).
    pub fn name_constraints(&self) -> &[NameConstraints] {
        &self.constraints
    }

    /// What goes after the leaf in `tls.crt` (every certificate of the chain but a self-signed root), and
    /// what goes in `ca.crt` (the self-signed root if known, else the highest certificate), as cert-manager
    /// lays them out.
    pub fn output_chain(&self) -> (Vec<&[u8]>, Option<&[u8]>) {
        let root = self.chain.iter().find(|der| is_self_signed(der));
        let intermediates = self.chain.iter().filter(|der| !is_self_signed(der)).map(Vec::as_slice).collect();
        (intermediates, root.or(self.chain.last()).map(Vec::as_slice))
    }

    /// Checks a DNS name against every name constraint of the chain.
    pub fn permits_dns(&self, name: &str) -> Result<(), String> {
        for c in &self.constraints {
            c.check_dns(name).map_err(|e| format!("CA \"{}\": {e}", c.ca))?;
        }
        Ok(())
    }

    /// Checks an IP address against every name constraint of the chain.
    pub fn permits_ip(&self, ip: IpAddr) -> Result<(), String> {
        for c in &self.constraints {
            c.check_ip(ip).map_err(|e| format!("CA \"{}\": {e}", c.ca))?;
        }
        Ok(())
    }
}

/// Whether a DER certificate is self-signed (same subject and issuer, and its own key verifies it).
pub(crate) fn is_self_signed(der: &[u8]) -> bool {
    X509Certificate::from_der(der)
        .is_ok_and(|(_, c)| c.subject().as_raw() == c.issuer().as_raw() && c.verify_signature(None).is_ok())
}

/// Every `CERTIFICATE` block of a PEM text, as DER, each checked to parse.
pub(crate) fn parse_certificates(pem: &str, file: &'static str) -> Result<Vec<Vec<u8>>, CaError> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block =
            block.map_err(|e| CaError::BadCertificate { file, index: out.len() + 1, message: e.to_string() })?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        if let Err(e) = X509Certificate::from_der(&block.contents) {
            return Err(CaError::BadCertificate { file, index: out.len() + 1, message: e.to_string() });
        }
        out.push(block.contents);
    }
    Ok(out)
}

pub(crate) fn to_system_time(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fn rfc2822(t: ASN1Time) -> String {
    t.to_rfc2822().unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_constraints_follow_rfc5280() {
        let c = NameConstraints {
            ca: "CN=Sub".into(),
            permitted_dns: vec!["aclab.uk".into(), ".example.com".into()],
            excluded_dns: vec!["secret.aclab.uk".into()],
            ..Default::default()
        };
        assert!(c.check_dns("aclab.uk").is_ok());
        assert!(c.check_dns("App01-Lab.avi.aclab.uk.").is_ok(), "case and trailing dot do not matter");
        assert!(c.check_dns("*.avi.aclab.uk").is_ok());
        assert!(c.check_dns("www.example.com").is_ok());
        assert!(c.check_dns("example.com").is_err(), "leading dot admits only subdomains");
        assert!(c.check_dns("evilaclab.uk").is_err(), "label boundary");
        assert!(c.check_dns("other.org").unwrap_err().contains("permitted"));
        assert!(c.check_dns("secret.aclab.uk").unwrap_err().contains("secret.aclab.uk"));
        assert!(c.check_dns("x.secret.aclab.uk").is_err());
        assert!(c.check_dns("*.aclab.uk").unwrap_err().contains("excluded"), "the wildcard would cover it");
    }

    #[test]
    fn ip_constraints_match_by_prefix_and_family() {
        let c = NameConstraints {
            permitted_ip: vec![IpNet { addr: "10.0.0.0".parse().unwrap(), prefix: 8 }],
            excluded_ip: vec![IpNet { addr: "10.9.0.0".parse().unwrap(), prefix: 16 }],
            ..Default::default()
        };
        assert!(c.check_ip("10.1.2.3".parse().unwrap()).is_ok());
        assert!(c.check_ip("10.9.1.1".parse().unwrap()).unwrap_err().contains("10.9.0.0/16"));
        assert!(c.check_ip("192.168.0.1".parse().unwrap()).unwrap_err().contains("10.0.0.0/8"));
        assert!(c.check_ip("::1".parse().unwrap()).is_err(), "no IPv6 network is permitted");
        assert_eq!(
            ip_net(&[192, 168, 0, 0, 255, 255, 0, 0]),
            Some(IpNet { addr: "192.168.0.0".parse().unwrap(), prefix: 16 })
        );
    }

    #[test]
    fn reasons_are_cert_managers() {
        assert_eq!(CaError::MissingData("tls.crt").reason(), "ErrGetKeyPair");
        assert_eq!(CaError::NotCa { subject: "CN=x".into() }.reason(), "ErrInvalidKeyPair");
        assert_eq!(CaError::KeyMismatch { subject: "CN=x".into() }.reason(), "ErrInvalidKeyPair");
    }
}
