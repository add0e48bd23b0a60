//! The state-dir store: what a restart finds, and what it refuses to use.

mod common;

use common::root_and_sub;
use portico_pki::{CertStore, CertificateRequest, KeyAlgorithm, StoreError, issue};
use std::os::unix::fs::PermissionsExt;

fn request(dns: &[&str]) -> CertificateRequest {
    CertificateRequest {
        dns_names: dns.iter().map(|s| s.to_string()).collect(),
        key_algorithm: KeyAlgorithm::EcdsaP256,
        ..Default::default()
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn a_restart_reuses_the_stored_certificate_with_the_same_serial() {
    let state = tempfile::tempdir().expect("tempdir");
    let pki = root_and_sub(KeyAlgorithm::EcdsaP256);
    let req = request(&["app01-lab.avi.aclab.uk"]);
    let issued = issue(&pki.sub, &req).expect("issued");

    let store = CertStore::new(state.path()).expect("store");
    assert!(store.load("avi-system", "router-certs", &req).expect("load").is_none(), "nothing stored yet");
    store.save("avi-system", "router-certs", &issued).expect("save");

    // A new process: a new store on the same dir.
    let store = CertStore::new(state.path()).expect("store");
    let loaded = store.load("avi-system", "router-certs", &req).expect("load").expect("stored");
    assert_eq!(loaded.serial, issued.serial);
    assert_eq!(loaded.chain_pem, issued.chain_pem);
    assert_eq!(loaded.key_pem, issued.key_pem);
    assert_eq!(loaded.ca_pem, issued.ca_pem);
    assert_eq!(loaded.renewal_time, issued.renewal_time);

    let path = store.path("avi-system", "router-certs").expect("path");
    assert_eq!(mode(&path), 0o600, "the file holds a private key");
    assert_eq!(mode(path.parent().expect("dir")), 0o700);
    assert_eq!(mode(&state.path().join("certificates")), 0o700);
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["router-certs.json"], "no temporary file is left behind");

    // Renewal replaces it.
    let renewed = issue(&pki.sub, &req).expect("issued");
    store.save("avi-system", "router-certs", &renewed).expect("save");
    let loaded = store.load("avi-system", "router-certs", &req).expect("load").expect("stored");
    assert_eq!(loaded.serial, renewed.serial);
    assert_eq!(mode(&path), 0o600);

    store.remove("avi-system", "router-certs").expect("remove");
    assert!(store.load("avi-system", "router-certs", &req).expect("load").is_none());
}

#[test]
fn corrupt_foreign_or_outdated_files_are_reported_not_used() {
    let state = tempfile::tempdir().expect("tempdir");
    let pki = root_and_sub(KeyAlgorithm::EcdsaP256);
    let req = request(&["a.aclab.uk"]);
    let store = CertStore::new(state.path()).expect("store");
    let a = issue(&pki.sub, &req).expect("issued");
    let b = issue(&pki.sub, &req).expect("issued");
    store.save("ns", "a", &a).expect("save");
    let path = store.path("ns", "a").expect("path");

    // Truncated file.
    let full = std::fs::read(&path).expect("read");
    std::fs::write(&path, &full[..full.len() / 2]).expect("write");
    let err = store.load("ns", "a", &req).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("a.json: corrupt certificate file"), "{err}");

    // Another certificate's key (a foreign or half-replaced file).
    let mut json: serde_json::Value = serde_json::from_slice(&full).expect("json");
    json["tls.key"] = b.key_pem.expose().into();
    std::fs::write(&path, serde_json::to_vec(&json).expect("json")).expect("write");
    let err = store.load("ns", "a", &req).unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
    assert!(err.to_string().contains("does not match the certificate"), "{err}");
    assert!(!format!("{err} {err:?}").contains(b.key_pem.expose().lines().nth(1).unwrap_or("-")), "no key in errors");

    // A garbled certificate.
    json["tls.key"] = a.key_pem.expose().into();
    json["tls.crt"] = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into();
    std::fs::write(&path, serde_json::to_vec(&json).expect("json")).expect("write");
    assert!(matches!(store.load("ns", "a", &req).unwrap_err(), StoreError::Invalid { .. }));

    // A valid pair for other names: the Certificate changed since.
    store.save("ns", "a", &a).expect("save");
    let err = store.load("ns", "a", &request(&["a.aclab.uk", "b.aclab.uk"])).unwrap_err();
    assert!(matches!(err, StoreError::RequestChanged { .. }), "{err:?}");
    assert!(err.to_string().contains("dnsNames differ"), "{err}");
}

#[test]
fn names_that_would_escape_the_store_are_refused() {
    let state = tempfile::tempdir().expect("tempdir");
    let store = CertStore::new(state.path()).expect("store");
    for (ns, name) in [("..", "x"), ("ns", "../../etc/passwd"), ("ns", ""), ("a/b", "c"), ("ns", ".hidden")] {
        assert!(matches!(store.path(ns, name), Err(StoreError::BadName(_))), "{ns}/{name}");
    }
    assert!(store.path("", "cluster-scoped").expect("path").ends_with("_cluster/cluster-scoped.json"));
}

#[test]
fn issued_certificates_never_print_their_key() {
    let pki = root_and_sub(KeyAlgorithm::EcdsaP256);
    let issued = issue(&pki.sub, &request(&["a.aclab.uk"])).expect("issued");
    let key_line = issued.key_pem.expose().lines().nth(1).expect("a base64 line").to_string();
    for shown in [format!("{issued:?}"), format!("{:?}", pki.sub), format!("{}", issued.key_pem)] {
        assert!(!shown.contains(&key_line), "key material printed: {shown}");
    }
    assert!(format!("{issued:?}").contains("redacted"));
}
