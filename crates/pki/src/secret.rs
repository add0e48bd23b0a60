//! The Secret cert-manager writes for a Certificate, so that tools reading cert-manager's Secrets read
//! Portico's the same way.

use crate::issue::Issued;
use crate::spec::IssuerRef;
use std::collections::BTreeMap;

/// Type of the Secret.
pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";
/// Annotation: name of the Certificate.
pub const ANNOTATION_CERTIFICATE_NAME: &str = "cert-manager.io/certificate-name";
/// Annotation: name of the issuer.
pub const ANNOTATION_ISSUER_NAME: &str = "cert-manager.io/issuer-name";
/// Annotation: kind of the issuer.
pub const ANNOTATION_ISSUER_KIND: &str = "cert-manager.io/issuer-kind";
/// Annotation: group of the issuer.
pub const ANNOTATION_ISSUER_GROUP: &str = "cert-manager.io/issuer-group";
/// Annotation: subject common name of the certificate.
pub const ANNOTATION_COMMON_NAME: &str = "cert-manager.io/common-name";
/// Annotation: DNS names of the certificate, comma-separated.
pub const ANNOTATION_ALT_NAMES: &str = "cert-manager.io/alt-names";
/// Annotation: IP addresses of the certificate, comma-separated.
pub const ANNOTATION_IP_SANS: &str = "cert-manager.io/ip-sans";
/// Annotation: URIs of the certificate, comma-separated.
pub const ANNOTATION_URI_SANS: &str = "cert-manager.io/uri-sans";
/// Annotation: email addresses of the certificate, comma-separated.
pub const ANNOTATION_EMAIL_SANS: &str = "cert-manager.io/email-sans";

/// The Secret's data: `tls.crt` (leaf + intermediates), `tls.key`, and `ca.crt` when the root is known.
pub fn secret_data(issued: &Issued) -> BTreeMap<String, Vec<u8>> {
    let mut data = BTreeMap::new();
    data.insert("tls.crt".to_string(), issued.chain_pem.clone().into_bytes());
    data.insert("tls.key".to_string(), issued.key_pem.expose().as_bytes().to_vec());
    if let Some(ca) = &issued.ca_pem {
        data.insert("ca.crt".to_string(), ca.clone().into_bytes());
    }
    data
}

/// The Secret's `cert-manager.io/*` annotations, from the certificate actually issued (empty values are
/// written, as cert-manager does).
pub fn secret_annotations(issued: &Issued, certificate_name: &str, issuer: &IssuerRef) -> BTreeMap<String, String> {
    let join = |v: Vec<String>| v.join(",");
    [
        (ANNOTATION_CERTIFICATE_NAME, certificate_name.to_string()),
        (ANNOTATION_ISSUER_NAME, issuer.name.clone()),
        (ANNOTATION_ISSUER_KIND, issuer.kind_or_default().to_string()),
        (ANNOTATION_ISSUER_GROUP, issuer.group_or_default().to_string()),
        (ANNOTATION_COMMON_NAME, issued.common_name.clone().unwrap_or_default()),
        (ANNOTATION_ALT_NAMES, join(issued.dns_names.clone())),
        (ANNOTATION_IP_SANS, join(issued.ip_addresses.iter().map(ToString::to_string).collect())),
        (ANNOTATION_URI_SANS, join(issued.uris.clone())),
        (ANNOTATION_EMAIL_SANS, join(issued.email_addresses.clone())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
