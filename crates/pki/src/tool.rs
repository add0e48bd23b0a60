//! The building blocks of `portico ca`: the steps a team otherwise does by hand with openssl to run a CA
//! issuer from a subordinate CA signed by an offline root.
//!
//! 1. [`init_root`]: an offline root CA (certificate + key).
//! 2. [`csr`]: a subordinate CA key's PKCS#10 request, optionally with Microsoft's certificate-template
//!    extension (`SubCA`) so that an AD CS root signs it with the subordinate CA template.
//! 3. [`sign_subordinate`]: sign such a request with a root you hold.
//! 4. [`issuer_secret_manifest`]: the `kubernetes.io/tls` Secret a ClusterIssuer's `spec.ca.secretName`
//!    names.
//!
//! Subjects are written as `CN=Example Root CA,O=Example,C=GB` or `/C=GB/O=Example/CN=Example Root CA`, with
//! the attributes in the order they appear in the certificate (as `openssl x509 -noout -subject` prints
//! them). Repeated attributes (`DC=aclab,DC=uk`) are kept.

use crate::ca::{CaError, CertificateAuthority};
use crate::der;
use crate::issue::{IssueError, base_params, sign_with_ca};
use crate::key::{KeyAlgorithm, KeyError, PrivateKey, SecretPem, pem_encode};
use base64::Engine;
use rcgen::{
    BasicConstraints, CustomExtension, DnType, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, PublicKeyData,
    SignatureAlgorithm, SigningKey,
};
use std::time::Duration;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;

/// OID of Microsoft's certificate template name extension (`szOID_ENROLL_CERTTYPE_EXTENSION`).
pub const MS_CERTIFICATE_TEMPLATE_NAME_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 311, 20, 2];

/// Why a `portico ca` step failed. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The subject text is not understood.
    #[error("subject \"{subject}\": {message}")]
    BadSubject {
        /// The subject as given.
        subject: String,
        /// What is wrong.
        message: String,
    },
    /// The validity is zero.
    #[error("validity must be at least one day")]
    BadDays,
    /// The signing request is unusable.
    #[error("certificate request: {0}")]
    BadRequest(String),
    /// A key problem.
    #[error("private key: {0}")]
    Key(#[from] KeyError),
    /// The CA key pair is unusable.
    #[error("CA: {0}")]
    Ca(#[from] CaError),
    /// Signing failed.
    #[error("{0}")]
    Issue(#[from] IssueError),
    /// A Kubernetes name that is not a DNS-1123 name.
    #[error("\"{0}\" is not a valid Kubernetes object name")]
    BadName(String),
}

const ATTRIBUTES: &[(&str, &[u64])] = &[
    ("CN", &[2, 5, 4, 3]),
    ("C", &[2, 5, 4, 6]),
    ("L", &[2, 5, 4, 7]),
    ("ST", &[2, 5, 4, 8]),
    ("STREET", &[2, 5, 4, 9]),
    ("O", &[2, 5, 4, 10]),
    ("OU", &[2, 5, 4, 11]),
    ("SERIALNUMBER", &[2, 5, 4, 5]),
    ("POSTALCODE", &[2, 5, 4, 17]),
    ("DC", &[0, 9, 2342, 19200300, 100, 1, 25]),
    ("EMAILADDRESS", &[1, 2, 840, 113549, 1, 9, 1]),
    ("UID", &[0, 9, 2342, 19200300, 100, 1, 1]),
];

/// Parses a subject into a DER Name.
pub(crate) fn subject_der(subject: &str) -> Result<Vec<u8>, ToolError> {
    let bad = |message: String| ToolError::BadSubject { subject: subject.to_string(), message };
    let text = subject.trim();
    let parts: Vec<&str> = match text.strip_prefix('/') {
        Some(rest) => rest.split('/').collect(),
        None => text.split(',').collect(),
    };
    let mut attrs: Vec<(&[u64], &str)> = Vec::new();
    for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').ok_or_else(|| bad(format!("\"{part}\" is not KEY=value")))?;
        let key = key.trim().to_ascii_uppercase();
        let oid = ATTRIBUTES.iter().find(|(k, _)| *k == key).map(|(_, oid)| *oid).ok_or_else(|| {
            let known: Vec<&str> = ATTRIBUTES.iter().map(|(k, _)| *k).collect();
            bad(format!("unknown attribute \"{key}\" (known: {})", known.join(", ")))
        })?;
        let value = value.trim();
        if value.is_empty() {
            return Err(bad(format!("{key} is empty")));
        }
        if key == "C" && value.len() != 2 {
            return Err(bad(format!("C must be a two-letter country code, not \"{value}\"")));
        }
        attrs.push((oid, value));
    }
    if !attrs.iter().any(|(oid, _)| *oid == [2, 5, 4, 3]) {
        return Err(bad(
            "a CN is required (certificates with the same name as their issuer are taken as self-signed)".into()
        ));
    }
    Ok(der::name(&attrs))
}

/// A new self-signed root CA valid for `days`: basicConstraints CA:TRUE, keyUsage keyCertSign + cRLSign +
/// digitalSignature, a subject key identifier. Returns the certificate PEM and the key PEM.
pub fn init_root(subject: &str, days: u32, algorithm: KeyAlgorithm) -> Result<(String, SecretPem), ToolError> {
    if days == 0 {
        return Err(ToolError::BadDays);
    }
    let name = subject_der(subject)?;
    let key = PrivateKey::generate(algorithm)?;
    let pair = key.key_pair()?;
    let mut params = base_params(None, Duration::from_secs(u64::from(days) * 86400));
    params.distinguished_name.push(DnType::CommonName, "root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let issuer = Issuer::new(params.clone(), &pair);
    let cert = params.signed_by(&pair, &issuer).map_err(|e| IssueError::Signing(e.to_string()))?;
    let der = der::replace_names(cert.der(), Some(&name), Some(&name), |tbs| pair.sign(tbs).ok())
        .ok_or_else(|| IssueError::Signing("could not set the subject".into()))?;
    Ok((pem_encode("CERTIFICATE", &der), key.to_pem()))
}

/// A PKCS#10 request for a subordinate CA with `key`: asks for basicConstraints CA:TRUE and keyUsage
/// keyCertSign + cRLSign + digitalSignature, and, with `subca_template`, carries Microsoft's certificate
/// template name extension with the BMPString `SubCA`.
pub fn csr(subject: &str, key: &PrivateKey, subca_template: bool) -> Result<String, ToolError> {
    let name = subject_der(subject)?;
    let pair = key.key_pair()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    if subca_template {
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(MS_CERTIFICATE_TEMPLATE_NAME_OID, der::bmp_string("SubCA")));
    }
    let request = params.serialize_request(&pair).map_err(|e| ToolError::BadRequest(e.to_string()))?;
    let der = replace_request_subject(request.der(), &name, &pair)
        .ok_or_else(|| ToolError::BadRequest("could not set the subject".into()))?;
    Ok(pem_encode("CERTIFICATE REQUEST", &der))
}

/// Sets the subject of a DER CertificationRequest and re-signs it.
fn replace_request_subject(request: &[u8], subject: &[u8], key: &impl SigningKey) -> Option<Vec<u8>> {
    let (outer, _) = der::read(request)?;
    let parts = der::children(outer.content)?;
    let (info, alg) = (parts.first()?, parts.get(1)?);
    let fields = der::children(info.content)?;
    // CertificationRequestInfo: version, subject, subjectPKInfo, [0] attributes
    let mut new_info = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        new_info.extend_from_slice(if i == 1 { subject } else { field.raw });
    }
    let new_info = der::tlv(0x30, &new_info);
    let mut bits = vec![0u8];
    bits.extend(key.sign(&new_info).ok()?);
    Some(der::tlv(0x30, &[new_info, alg.raw.to_vec(), der::tlv(0x03, &bits)].concat()))
}

/// The public key of a signing request, in the form rcgen signs for.
struct RequestKey {
    raw: Vec<u8>,
    algorithm: &'static SignatureAlgorithm,
}

impl PublicKeyData for RequestKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

/// Signs a subordinate CA request with `root`: the request's subject and key (its signature checked), valid
/// for `days` but never past the root, basicConstraints CA:TRUE with `path_len` when given, keyUsage
/// keyCertSign + cRLSign + digitalSignature. Extensions the request asks for are not copied: the signer
/// decides them. Returns the certificate PEM.
pub fn sign_subordinate(
    root: &CertificateAuthority,
    csr_pem: &str,
    days: u32,
    path_len: Option<u8>,
) -> Result<String, ToolError> {
    if days == 0 {
        return Err(ToolError::BadDays);
    }
    let block = Pem::iter_from_buffer(csr_pem.as_bytes())
        .filter_map(Result::ok)
        .find(|p| p.label == "CERTIFICATE REQUEST" || p.label == "NEW CERTIFICATE REQUEST")
        .ok_or_else(|| ToolError::BadRequest("no PEM CERTIFICATE REQUEST found".into()))?;
    let (_, request) =
        X509CertificationRequest::from_der(&block.contents).map_err(|e| ToolError::BadRequest(e.to_string()))?;
    request.verify_signature().map_err(|_| ToolError::BadRequest("its signature does not verify".into()))?;
    let info = &request.certification_request_info;
    let spki = &info.subject_pki;
    let algorithm = match spki.algorithm.algorithm.to_id_string().as_str() {
        "1.2.840.113549.1.1.1" => &rcgen::PKCS_RSA_SHA256,
        "1.3.101.112" => &rcgen::PKCS_ED25519,
        "1.2.840.10045.2.1" => match spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()) {
            Some(curve) if curve.to_id_string() == "1.2.840.10045.3.1.7" => &rcgen::PKCS_ECDSA_P256_SHA256,
            Some(curve) if curve.to_id_string() == "1.3.132.0.34" => &rcgen::PKCS_ECDSA_P384_SHA384,
            _ => return Err(ToolError::BadRequest("unsupported elliptic curve (P-256 and P-384 are)".into())),
        },
        other => return Err(ToolError::BadRequest(format!("unsupported public key algorithm {other}"))),
    };
    let public_key = RequestKey { raw: spki.subject_public_key.data.to_vec(), algorithm };
    if info.subject.as_raw() == root.subject_raw.as_slice() {
        return Err(ToolError::BadRequest("the subordinate's subject is the root's: give it its own CN".into()));
    }
    let mut params = base_params(Some(root), Duration::from_secs(u64::from(days) * 86400));
    params.distinguished_name.push(DnType::CommonName, "subordinate");
    params.is_ca = IsCa::Ca(path_len.map_or(BasicConstraints::Unconstrained, BasicConstraints::Constrained));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.key_identifier_method = KeyIdMethod::Sha256;
    let der = sign_with_ca(&params, &public_key, root, Some(info.subject.as_raw()))?;
    Ok(pem_encode("CERTIFICATE", &der))
}

/// A `kubernetes.io/tls` Secret manifest holding a CA issuer's key pair, for a ClusterIssuer's (or Issuer's)
/// `spec.ca.secretName`: `tls.crt` (`cert_pem`: the CA, optionally followed by its chain), `tls.key`, and
/// `ca.crt` (the root) when given. The pair is validated first, so a manifest that comes out is usable.
pub fn issuer_secret_manifest(
    name: &str,
    namespace: &str,
    cert_pem: &str,
    key_pem: &str,
    ca_pem: Option<&str>,
) -> Result<String, ToolError> {
    for n in [name, namespace] {
        let ok = !n.is_empty()
            && n.len() <= 253
            && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && n.starts_with(|c: char| c.is_ascii_alphanumeric())
            && n.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(ToolError::BadName(n.to_string()));
        }
    }
    let ca = CertificateAuthority::from_pem_at(cert_pem, key_pem, ca_pem, std::time::SystemTime::now())?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let mut out = format!(
        "# CA issuer key pair for \"{subject}\", written by `portico ca secret`.\n\
         # Reference it from a ClusterIssuer (spec.ca.secretName: {name}); keep this file private (mode 0600).\n\
         apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         data:\n  tls.crt: {crt}\n  tls.key: {key}\n",
        subject = ca.subject().replace('"', "'"),
        crt = b64(cert_pem),
        key = b64(key_pem),
    );
    if let Some(ca_pem) = ca_pem.filter(|s| !s.trim().is_empty()) {
        out.push_str(&format!("  ca.crt: {}\n", b64(ca_pem)));
    }
    Ok(out)
}
