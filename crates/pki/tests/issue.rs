//! Issuing from a CA issuer, judged by openssl: chains verify, names, key types, extensions and validity are
//! what was asked, and the Secret has cert-manager's layout.

mod common;

use common::{Pki, openssl_ok, pem_blocks, root_and_sub, write, x509_text};
use portico_pki::spec::{CaIssuer, CertificateSpec, IssuerRef};
use portico_pki::{
    CertificateAuthority, CertificateRequest, IssueError, KeyAlgorithm, issue, secret_annotations, secret_data,
};
use std::time::{Duration, SystemTime};

fn verify(dir: &std::path::Path, pki: &Pki, leaf_pem: &str) -> String {
    write(dir, "root.pem", &pki.root_pem);
    write(dir, "sub.pem", &pki.sub_pem);
    write(dir, "leaf.pem", leaf_pem);
    openssl_ok(dir, &["verify", "-CAfile", "root.pem", "-untrusted", "sub.pem", "leaf.pem"])
}

fn request(dns: &[&str]) -> CertificateRequest {
    CertificateRequest { dns_names: dns.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

#[test]
fn the_articles_certificate_from_a_subordinate_ca_verifies_against_the_root_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = root_and_sub(KeyAlgorithm::EcdsaP384);
    // The fixture default-ingress-cert.yaml, via the spec types.
    let spec: CertificateSpec = serde_json::from_value(serde_json::json!({
        "commonName": "*.avi.aclab.uk",
        "dnsNames": ["*.region01.aclab.uk", "*.region02.aclab.uk", "*.aclab.uk"],
        "secretName": "router-certs-default",
        "issuerRef": {"name": "tanzu-sub01-clusterissuer", "kind": "ClusterIssuer"}
    }))
    .expect("spec");
    let req = CertificateRequest::from_spec(&spec, None).expect("request");
    let issued = issue(&pki.sub, &req).expect("issued");

    // tls.crt = leaf + subordinate (no root); ca.crt = root.
    let blocks = pem_blocks(&issued.chain_pem);
    assert_eq!(blocks.len(), 2, "leaf + subordinate");
    assert_eq!(blocks[1].trim(), pki.sub_pem.trim());
    assert_eq!(issued.ca_pem.as_deref().map(str::trim), Some(pki.root_pem.trim()));
    let out = verify(dir.path(), &pki, &blocks[0]);
    assert!(out.contains("leaf.pem: OK"), "{out}");

    let text = x509_text(dir.path(), &blocks[0]);
    assert!(text.contains("Subject: CN = *.avi.aclab.uk"), "{text}");
    assert!(text.contains("DNS:*.region01.aclab.uk, DNS:*.region02.aclab.uk, DNS:*.aclab.uk"), "{text}");
    assert!(text.contains("Issuer: CN = Portico Test Sub01, O = Portico"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("Digital Signature, Key Encipherment"), "RSA default usages: {text}");
    assert!(text.contains("Public-Key: (2048 bit)") && text.contains("rsaEncryption"), "RSA 2048 by default: {text}");
    // Default duration 90 days, renewal at two thirds.
    let validity = issued.not_after.duration_since(issued.not_before).expect("ordered");
    assert_eq!(validity, Duration::from_secs(90 * 86400));
    assert_eq!(issued.renewal_time, issued.not_after - Duration::from_secs(30 * 86400));
    // The serial is what openssl reads.
    let serial = openssl_ok(dir.path(), &["x509", "-in", "leaf.pem", "-noout", "-serial"]);
    assert_eq!(serial.trim(), format!("serial={}", issued.serial));

    // The Secret cert-manager would write.
    let data = secret_data(&issued);
    assert_eq!(data.keys().collect::<Vec<_>>(), ["ca.crt", "tls.crt", "tls.key"]);
    assert_eq!(data["tls.crt"], issued.chain_pem.as_bytes());
    assert_eq!(data["ca.crt"], pki.root_pem.as_bytes());
    let key = String::from_utf8(data["tls.key"].clone()).expect("utf8");
    let leaf_path = write(dir.path(), "tls.crt", &issued.chain_pem);
    let key_path = write(dir.path(), "tls.key", &key);
    let a = openssl_ok(dir.path(), &["x509", "-in", leaf_path.to_str().unwrap_or_default(), "-noout", "-pubkey"]);
    let b = openssl_ok(dir.path(), &["pkey", "-in", key_path.to_str().unwrap_or_default(), "-pubout"]);
    assert_eq!(a, b, "tls.key is the leaf's key");
    let notes = secret_annotations(&issued, "avi-default-ingress-cert", &spec.issuer_ref);
    assert_eq!(notes["cert-manager.io/certificate-name"], "avi-default-ingress-cert");
    assert_eq!(notes["cert-manager.io/issuer-name"], "tanzu-sub01-clusterissuer");
    assert_eq!(notes["cert-manager.io/issuer-kind"], "ClusterIssuer");
    assert_eq!(notes["cert-manager.io/issuer-group"], "cert-manager.io");
    assert_eq!(notes["cert-manager.io/common-name"], "*.avi.aclab.uk");
    assert_eq!(notes["cert-manager.io/alt-names"], "*.region01.aclab.uk,*.region02.aclab.uk,*.aclab.uk");
    assert_eq!(notes["cert-manager.io/ip-sans"], "");
}

#[test]
fn every_key_algorithm_gives_the_asked_key_and_a_verifying_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = root_and_sub(KeyAlgorithm::EcdsaP256);
    let cases = [
        (KeyAlgorithm::Rsa(3072), "Public-Key: (3072 bit)"),
        (KeyAlgorithm::EcdsaP256, "NIST CURVE: P-256"),
        (KeyAlgorithm::EcdsaP384, "NIST CURVE: P-384"),
        (KeyAlgorithm::Ed25519, "ED25519"),
    ];
    for (alg, expect) in cases {
        let req = CertificateRequest { key_algorithm: alg, ..request(&["app.aclab.uk"]) };
        let issued = issue(&pki.sub, &req).unwrap_or_else(|e| panic!("{alg}: {e}"));
        let leaf = &pem_blocks(&issued.chain_pem)[0];
        assert!(verify(dir.path(), &pki, leaf).contains("OK"));
        let text = x509_text(dir.path(), leaf);
        assert!(text.contains(expect), "{alg}: {text}");
        let encipherment = text.contains("Key Encipherment");
        assert_eq!(encipherment, alg.is_rsa(), "{alg}: key encipherment only for RSA keys: {text}");
        assert_eq!(issued.private_key().expect("key").algorithm(), alg);
    }
}

#[test]
fn a_4096_bit_rsa_key_is_generated_when_asked() {
    let pki = root_and_sub(KeyAlgorithm::EcdsaP256);
    let req = CertificateRequest { key_algorithm: KeyAlgorithm::Rsa(4096), ..request(&["big.aclab.uk"]) };
    let issued = issue(&pki.sub, &req).expect("issued");
    assert_eq!(issued.private_key().expect("key").algorithm(), KeyAlgorithm::Rsa(4096));
}

#[test]
fn issuer_urls_usages_ips_and_ca_flag_are_stamped_into_the_leaf() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = root_and_sub(KeyAlgorithm::EcdsaP256);
    let issuer = CaIssuer {
        secret_name: "tanzu-sub01-tls-secret".into(),
        crl_distribution_points: vec!["http://pki.aclab.uk/sub01.crl".into()],
        ocsp_servers: vec!["http://ocsp.aclab.uk".into()],
        issuing_certificate_urls: vec!["http://pki.aclab.uk/sub01.crt".into()],
    };
    let spec: CertificateSpec = serde_json::from_value(serde_json::json!({
        "secretName": "s", "issuerRef": {"name": "i"},
        "commonName": "api.aclab.uk", "dnsNames": ["api.aclab.uk"], "ipAddresses": ["10.0.0.10", "fd00::10"],
        "usages": ["server auth", "client auth", "digital signature"],
        "privateKey": {"algorithm": "ECDSA", "size": 256},
        "duration": "2m", "renewBefore": "1m",
        "subject": {"organizations": ["Aclab"], "countries": ["GB"]}
    }))
    .expect("spec");
    let issued =
        issue(&pki.sub, &CertificateRequest::from_spec(&spec, Some(&issuer)).expect("request")).expect("issued");
    let leaf = &pem_blocks(&issued.chain_pem)[0];
    let text = x509_text(dir.path(), leaf);
    for expect in [
        "X509v3 CRL Distribution Points",
        "URI:http://pki.aclab.uk/sub01.crl",
        "OCSP - URI:http://ocsp.aclab.uk",
        "CA Issuers - URI:http://pki.aclab.uk/sub01.crt",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "IP Address:10.0.0.10",
        "IP Address:FD00:0:0:0:0:0:0:10",
        "Subject: C = GB, O = Aclab, CN = api.aclab.uk",
        "X509v3 Authority Key Identifier",
    ] {
        assert!(text.contains(expect), "missing {expect}:\n{text}");
    }
    assert_eq!(issued.not_after.duration_since(issued.not_before).expect("ordered"), Duration::from_secs(120));
    assert_eq!(issued.renewal_time, issued.not_after - Duration::from_secs(60));
    assert_eq!(issued.ip_addresses.len(), 2);
    assert!(verify(dir.path(), &pki, leaf).contains("OK"));

    let ca_req = CertificateRequest { is_ca: true, ..request(&["ca.aclab.uk"]) };
    let text = x509_text(dir.path(), &pem_blocks(&issue(&pki.sub, &ca_req).expect("issued").chain_pem)[0]);
    assert!(text.contains("CA:TRUE") && text.contains("Certificate Sign"), "{text}");
}

#[test]
fn names_outside_the_name_constraints_are_refused_with_a_clear_reason() {
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
            "/CN=Aclab Constrained CA",
            "-addext",
            "nameConstraints=critical,permitted;DNS:aclab.uk,permitted;IP:10.0.0.0/255.0.0.0,excluded;DNS:secret.aclab.uk",
        ],
    );
    let read = |n: &str| std::fs::read_to_string(d.join(n)).expect("read");
    let ca = CertificateAuthority::from_pem(&read("ca.crt"), &read("ca.key")).expect("CA");

    let ok =
        issue(&ca, &CertificateRequest { key_algorithm: KeyAlgorithm::EcdsaP256, ..request(&["app01.avi.aclab.uk"]) });
    let ok = ok.expect("inside the constraints");
    write(d, "leaf.pem", &ok.chain_pem);
    assert!(openssl_ok(d, &["verify", "-CAfile", "ca.crt", "leaf.pem"]).contains("OK"));

    for (req, name, why) in [
        (request(&["app01.aclab.uk", "www.example.com"]), "www.example.com", "permitted subtrees"),
        (request(&["secret.aclab.uk"]), "secret.aclab.uk", "excluded subtree"),
        (request(&["*.aclab.uk"]), "*.aclab.uk", "excluded subtree \"secret.aclab.uk\""),
        (
            CertificateRequest { ip_addresses: vec!["192.168.1.1".parse().expect("ip")], ..request(&["a.aclab.uk"]) },
            "192.168.1.1",
            "10.0.0.0/8",
        ),
        (
            CertificateRequest { common_name: Some("cn.example.org".into()), ..Default::default() },
            "cn.example.org",
            "permitted",
        ),
    ] {
        let err = issue(&ca, &req).unwrap_err();
        assert!(matches!(err, IssueError::NameNotPermitted { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("{name} may not be issued by this CA")), "{msg}");
        assert!(msg.contains("Aclab Constrained CA") && msg.contains(why), "{msg}");
        assert_eq!(err.reason(), "SigningError");
    }
}

#[test]
fn validity_never_outlives_the_ca_and_serials_are_unique() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    openssl_ok(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"]);
    openssl_ok(d, &["req", "-x509", "-key", "ca.key", "-out", "ca.crt", "-days", "10", "-subj", "/CN=Short CA"]);
    let read = |n: &str| std::fs::read_to_string(d.join(n)).expect("read");
    let ca = CertificateAuthority::from_pem(&read("ca.crt"), &read("ca.key")).expect("CA");
    let req = CertificateRequest { key_algorithm: KeyAlgorithm::EcdsaP256, ..request(&["a.example"]) };
    let first = issue(&ca, &req).expect("issued");
    assert_eq!(first.not_after, ca.not_after(), "capped at the CA's notAfter");
    assert!(first.not_after < SystemTime::now() + Duration::from_secs(11 * 86400));
    // Renewal with the same key (rotationPolicy: Never) still gets a new serial.
    let again = issue(&ca, &CertificateRequest { private_key: Some(first.private_key().expect("key")), ..req })
        .expect("issued");
    assert_ne!(first.serial, again.serial);
    assert_eq!(first.key_pem, again.key_pem);
    assert_eq!(first.ca_pem.as_deref(), Some(read("ca.crt").as_str()), "a self-signed CA is ca.crt");
    assert_eq!(pem_blocks(&first.chain_pem).len(), 1, "no root in tls.crt");
}

#[test]
fn the_issuer_name_is_the_cas_exact_subject_even_with_repeated_attributes() {
    // Active Directory names repeat DC; chain building (rustls/webpki) compares the bytes.
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    openssl_ok(d, &["genrsa", "-traditional", "-out", "ca.key", "2048"]);
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
            "/DC=uk/DC=aclab/O=Aclab Ltd/OU=PKI/OU=Lab/CN=aclab-SUB01-CA",
        ],
    );
    let read = |n: &str| std::fs::read_to_string(d.join(n)).expect("read");
    let ca = CertificateAuthority::from_pem(&read("ca.crt"), &read("ca.key")).expect("CA");
    let issued = issue(&ca, &CertificateRequest { key_algorithm: KeyAlgorithm::EcdsaP256, ..request(&["a.aclab.uk"]) })
        .expect("issued");
    write(d, "leaf.pem", &issued.chain_pem);
    let issuer = openssl_ok(d, &["x509", "-in", "leaf.pem", "-noout", "-issuer", "-nameopt", "RFC2253"]);
    let subject = openssl_ok(d, &["x509", "-in", "ca.crt", "-noout", "-subject", "-nameopt", "RFC2253"]);
    assert_eq!(issuer.trim_start_matches("issuer="), subject.trim_start_matches("subject="));
    assert!(issuer.contains("OU=Lab,OU=PKI") && issuer.contains("DC=aclab,DC=uk"), "{issuer}");
    assert!(openssl_ok(d, &["verify", "-CAfile", "ca.crt", "leaf.pem"]).contains("OK"));
    assert!(issued.issued_by(&ca));
}

#[test]
fn a_request_without_any_name_is_refused() {
    let pki = root_and_sub(KeyAlgorithm::EcdsaP256);
    let err = issue(&pki.sub, &CertificateRequest::default()).unwrap_err();
    assert_eq!(err.reason(), "InvalidRequest");
    assert!(err.to_string().contains("nothing to certify"), "{err}");
    let issuer = IssuerRef { name: "x".into(), ..Default::default() };
    assert_eq!(issuer.kind_or_default(), "Issuer");
}
