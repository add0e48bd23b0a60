//! A CA issuer's Secret, validated as cert-manager reports it, with CAs made by openssl as the team made them.

mod common;

use common::openssl_ok;
use portico_pki::ca::{REASON_GET_KEY_PAIR, REASON_INVALID_KEY_PAIR};
use portico_pki::{CaError, CertificateAuthority, IpNet};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

fn read(dir: &std::path::Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).expect("read")
}

#[test]
fn openssl_made_cas_load_with_every_key_encoding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // PKCS#1 RSA (what cert-manager writes by default), SEC1 EC, PKCS#8.
    openssl_ok(d, &["genrsa", "-traditional", "-out", "rsa1.key", "2048"]);
    openssl_ok(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ec.key"]);
    openssl_ok(d, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", "p8.key"]);
    assert!(read(d, "rsa1.key").starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert!(read(d, "ec.key").contains("-----BEGIN EC PRIVATE KEY-----"));
    for key in ["rsa1.key", "ec.key", "p8.key"] {
        openssl_ok(d, &["req", "-x509", "-key", key, "-out", "ca.crt", "-days", "30", "-subj", "/CN=Lab CA"]);
        let ca =
            CertificateAuthority::from_pem(&read(d, "ca.crt"), &read(d, key)).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(ca.subject(), "CN=Lab CA");
        assert!(ca.not_after() > SystemTime::now() + Duration::from_secs(29 * 86400));
    }
}

#[test]
fn a_leaf_certificate_is_not_a_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    openssl_ok(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "leaf.key"]);
    openssl_ok(
        d,
        &[
            "req",
            "-x509",
            "-key",
            "leaf.key",
            "-out",
            "leaf.crt",
            "-days",
            "30",
            "-subj",
            "/CN=www.aclab.uk",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
    let err = CertificateAuthority::from_pem(&read(d, "leaf.crt"), &read(d, "leaf.key")).unwrap_err();
    assert_eq!(err, CaError::NotCa { subject: "CN=www.aclab.uk".into() });
    assert_eq!(err.reason(), REASON_INVALID_KEY_PAIR);
    assert!(err.to_string().contains("is not a CA"), "{err}");
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    openssl_ok(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "a.key"]);
    openssl_ok(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "b.key"]);
    openssl_ok(d, &["req", "-x509", "-key", "a.key", "-out", "a.crt", "-days", "30", "-subj", "/CN=Lab CA"]);
    let err = CertificateAuthority::from_pem(&read(d, "a.crt"), &read(d, "b.key")).unwrap_err();
    assert_eq!(err, CaError::KeyMismatch { subject: "CN=Lab CA".into() });
    assert_eq!(err.reason(), REASON_INVALID_KEY_PAIR);
    // The error message carries no key material.
    let b = read(d, "b.key");
    let key_line = b.lines().nth(1).unwrap_or_default();
    assert!(!format!("{err} {err:?}").contains(key_line));
}

#[test]
fn expired_and_not_yet_valid_cas_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    openssl_ok(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"]);
    openssl_ok(d, &["req", "-x509", "-key", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=Short CA"]);
    let (crt, key) = (read(d, "ca.crt"), read(d, "ca.key"));
    let later = SystemTime::now() + Duration::from_secs(2 * 86400);
    let err = CertificateAuthority::from_pem_at(&crt, &key, None, later).unwrap_err();
    assert!(matches!(err, CaError::Expired { .. }), "{err:?}");
    assert_eq!(err.reason(), REASON_INVALID_KEY_PAIR);
    assert!(err.to_string().contains("expired at"), "{err}");
    let earlier = SystemTime::now() - Duration::from_secs(86400);
    let err = CertificateAuthority::from_pem_at(&crt, &key, None, earlier).unwrap_err();
    assert!(matches!(err, CaError::NotYetValid { .. }), "{err:?}");
}

#[test]
fn a_ca_without_key_cert_sign_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    openssl_ok(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"]);
    openssl_ok(
        d,
        &[
            "req",
            "-x509",
            "-key",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "30",
            "-subj",
            "/CN=Odd CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,digitalSignature",
        ],
    );
    let err = CertificateAuthority::from_pem(&read(d, "ca.crt"), &read(d, "ca.key")).unwrap_err();
    assert!(matches!(err, CaError::NoCertSign { .. }), "{err:?}");
}

#[test]
fn unreadable_secrets_are_err_get_key_pair() {
    let cases: Vec<(BTreeMap<String, Vec<u8>>, &str)> = vec![
        (BTreeMap::new(), "Secret has no tls.crt"),
        ([("tls.crt".to_string(), b"junk".to_vec())].into(), "Secret has no tls.key"),
        (
            [("tls.crt".to_string(), b"junk".to_vec()), ("tls.key".to_string(), b"junk".to_vec())].into(),
            "no PEM certificate",
        ),
    ];
    for (data, message) in cases {
        let err = CertificateAuthority::from_secret_data(&data).unwrap_err();
        assert_eq!(err.reason(), REASON_GET_KEY_PAIR, "{err}");
        assert!(err.to_string().contains(message), "{err} should say {message}");
    }
    let garbled = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let err = CertificateAuthority::from_pem(garbled, "").unwrap_err();
    assert!(matches!(err, CaError::BadCertificate { index: 1, .. }), "{err:?}");
    assert_eq!(err.reason(), REASON_GET_KEY_PAIR);
}

#[test]
fn name_constraints_are_read_from_the_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    openssl_ok(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"]);
    openssl_ok(
        d,
        &[
            "req",
            "-x509",
            "-key",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "30",
            "-subj",
            "/CN=Constrained CA",
            "-addext",
            "nameConstraints=critical,permitted;DNS:aclab.uk,permitted;IP:10.0.0.0/255.0.0.0,excluded;DNS:secret.aclab.uk",
        ],
    );
    let ca = CertificateAuthority::from_pem(&read(d, "ca.crt"), &read(d, "ca.key")).expect("CA");
    let nc = ca.name_constraints();
    assert_eq!(nc.len(), 1);
    assert_eq!(nc[0].permitted_dns, vec!["aclab.uk"]);
    assert_eq!(nc[0].excluded_dns, vec!["secret.aclab.uk"]);
    assert_eq!(nc[0].permitted_ip, vec![IpNet { addr: "10.0.0.0".parse().expect("ip"), prefix: 8 }]);
    assert!(ca.permits_dns("app01-lab.avi.aclab.uk").is_ok());
    let refused = ca.permits_dns("app.example.com").unwrap_err();
    assert!(refused.contains("Constrained CA") && refused.contains("aclab.uk"), "{refused}");
    assert!(ca.permits_ip("10.1.1.1".parse().expect("ip")).is_ok());
    assert!(ca.permits_ip("192.168.1.1".parse().expect("ip")).is_err());
}
