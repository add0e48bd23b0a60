//! cert-manager resources (`cert-manager.io/v1`): Certificate, Issuer and ClusterIssuer, the subset Portico
//! reads.
//!
//! Like the Gateway API types, these mirror the wire format and keep enumerations as strings, so that a value
//! Portico does not support becomes a status condition naming it rather than a parse failure hiding the
//! object. Unknown fields are ignored. Durations stay as written (Go syntax, `2160h`); [`parse_duration`]
//! reads them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// `Certificate`: a desired X.509 certificate, written to `spec.secretName`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: CertificateSpec,
}

/// Spec of a [`Certificate`].
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    /// The Secret the certificate and key are written to (same namespace).
    pub secret_name: String,
    pub issuer_ref: IssuerRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uris: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email_addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<X509Subject>,
    /// Go duration, default `2160h` (90 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Go duration, default one third of the duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
    /// Renew when this percentage of the duration remains (alternative to `renewBefore`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before_percentage: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<CertificatePrivateKey>,
    /// Key usages as cert-manager spells them (`digital signature`, `server auth`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usages: Vec<String>,
    #[serde(default, rename = "isCA", skip_serializing_if = "Option::is_none")]
    pub is_ca: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<i32>,
}

/// A reference to the Issuer or ClusterIssuer that signs a Certificate.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    pub name: String,
    /// `Issuer` (the default) or `ClusterIssuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `cert-manager.io` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl IssuerRef {
    /// The kind, defaulted to `Issuer`.
    pub fn kind_or_default(&self) -> &str {
        self.kind.as_deref().filter(|k| !k.is_empty()).unwrap_or("Issuer")
    }

    /// The group, defaulted to `cert-manager.io`.
    pub fn group_or_default(&self) -> &str {
        self.group.as_deref().filter(|g| !g.is_empty()).unwrap_or("cert-manager.io")
    }
}

/// `spec.subject`: distinguished name fields other than the common name.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct X509Subject {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organizations: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organizational_units: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub localities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provinces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub street_addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub postal_codes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
}

/// `spec.privateKey`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificatePrivateKey {
    /// `RSA` (the default), `ECDSA` or `Ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// RSA: 2048 (default), 3072, 4096; ECDSA: 256 (default), 384.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// `PKCS1` (the default) or `PKCS8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// `Always` (the default since cert-manager 1.18) or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_policy: Option<String>,
}

/// `spec.secretTemplate`: labels and annotations copied onto the Secret.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `Issuer`: signs Certificates of its own namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Issuer {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: IssuerSpec,
}

/// `ClusterIssuer`: signs Certificates of any namespace; its Secrets live in the cluster resource namespace
/// (normally `cert-manager`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterIssuer {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: IssuerSpec,
}

/// Spec of an [`Issuer`] or [`ClusterIssuer`]: exactly one issuer type.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaIssuer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeIssuer>,
    /// Every other issuer type (`selfSigned`, `vault`, `venafi`, ...), kept so it can be reported by name.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `spec.ca`: sign with the key pair in a Secret.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaIssuer {
    /// Secret with `tls.crt` (the CA, optionally followed by its chain), `tls.key` and optionally `ca.crt`.
    pub secret_name: String,
    /// CRL distribution point URLs stamped into every certificate issued.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crl_distribution_points: Vec<String>,
    /// OCSP responder URLs stamped into every certificate issued (Authority Information Access).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ocsp_servers: Vec<String>,
    /// CA issuer URLs stamped into every certificate issued (Authority Information Access).
    #[serde(default, rename = "issuingCertificateURLs", skip_serializing_if = "Vec::is_empty")]
    pub issuing_certificate_urls: Vec<String>,
}

/// `spec.acme`: obtain certificates from an ACME server.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AcmeIssuer {
    /// Directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Secret holding the account key (`tls.key` unless `key` says otherwise).
    pub private_key_secret_ref: SecretKeySelector,
    /// Base64 PEM bundle of CAs trusted for the ACME server's TLS.
    #[serde(default, rename = "caBundle", skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    #[serde(default, rename = "skipTLSVerify", skip_serializing_if = "Option::is_none")]
    pub skip_tls_verify: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub solvers: Vec<AcmeSolver>,
}

/// A reference to one key of a Secret.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// One ACME challenge solver, with the names it applies to.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AcmeSolver {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<SolverSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http01: Option<AcmeHttp01>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns01: Option<AcmeDns01>,
}

/// Which Certificates a solver applies to (an absent selector matches all).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SolverSelector {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_zones: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// `http01`: Portico answers the challenge on its own listeners, so the solver's `ingress` or
/// `gatewayHTTPRoute` settings (which tell cert-manager how to route to its solver pod) are kept raw.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AcmeHttp01 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<serde_json::Value>,
    #[serde(default, rename = "gatewayHTTPRoute", skip_serializing_if = "Option::is_none")]
    pub gateway_http_route: Option<serde_json::Value>,
}

/// `dns01`: the provider that publishes the TXT record.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AcmeDns01 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rfc2136: Option<AcmeRfc2136>,
    /// Every other provider (`route53`, `cloudflare`, `webhook`, ...), kept so it can be reported by name.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `dns01.rfc2136`: dynamic DNS updates, signed with TSIG.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AcmeRfc2136 {
    pub nameserver: String,
    #[serde(default, rename = "tsigKeyName", skip_serializing_if = "Option::is_none")]
    pub tsig_key_name: Option<String>,
    #[serde(default, rename = "tsigAlgorithm", skip_serializing_if = "Option::is_none")]
    pub tsig_algorithm: Option<String>,
    #[serde(default, rename = "tsigSecretSecretRef", skip_serializing_if = "Option::is_none")]
    pub tsig_secret_secret_ref: Option<SecretKeySelector>,
}

/// cert-manager's default certificate duration: 90 days.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(90 * 24 * 3600);

/// Reads a Go duration (`2160h`, `1h30m`, `90s`, `1.5h`, `300ms`): a sequence of decimal numbers, each with a
/// unit among `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`. Negative durations are refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration \"{text}\" (expected Go syntax such as 2160h or 1h30m)");
    let s = text.trim().strip_prefix('+').unwrap_or(text.trim());
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let number: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let nanos = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += number * nanos;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_go() {
        assert_eq!(parse_duration("2160h"), Ok(DEFAULT_DURATION));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h0m0s"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "90d", "-1h", "h", "10", "1h-5m"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
    }
}
