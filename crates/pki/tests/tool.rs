//! `portico ca`: offline root, subordinate CSR (with the Microsoft SubCA template), signing, issuer Secret;
//! the whole chain judged by `openssl verify`.

mod common;

use common::{openssl_ok, pem_blocks, root_and_sub, write};
use k8s_openapi::api::core::v1::Secret;
use portico_pki::tool::{self, ToolError};
use portico_pki::{CertificateAuthority, CertificateRequest, KeyAlgorithm, PrivateKey, issue};
use std::collections::BTreeMap;

#[test]
fn root_to_subordinate_to_leaf_verifies_with_openssl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    for root_alg in [KeyAlgorithm::Rsa(2048), KeyAlgorithm::EcdsaP384, KeyAlgorithm::Ed25519] {
        let pki = root_and_sub(root_alg);
        let issued = issue(
            &pki.sub,
            &CertificateRequest {
                dns_names: vec!["app01-lab.avi.aclab.uk".into()],
                key_algorithm: KeyAlgorithm::EcdsaP256,
                ..Default::default()
            },
        )
        .expect("issued");
        write(d, "root.pem", &pki.root_pem);
        write(d, "sub.pem", &pki.sub_pem);
        write(d, "leaf.pem", &pem_blocks(&issued.chain_pem)[0]);
        let out = openssl_ok(d, &["verify", "-CAfile", "root.pem", "-untrusted", "sub.pem", "leaf.pem"]);
        assert_eq!(out.trim(), "leaf.pem: OK", "{root_alg}");
        // The chain as the listener serves it (tls.crt) verifies too.
        write(d, "chain.pem", &issued.chain_pem);
        assert!(
            openssl_ok(d, &["verify", "-CAfile", "root.pem", "-untrusted", "chain.pem", "leaf.pem"]).contains("OK")
        );

        let root_text = openssl_ok(d, &["x509", "-in", "root.pem", "-noout", "-text"]);
        assert!(root_text.contains("Issuer: CN = Portico Test Root, O = Portico"), "{root_text}");
        assert!(root_text.contains("Subject: CN = Portico Test Root, O = Portico"), "{root_text}");
        assert!(root_text.contains("CA:TRUE") && root_text.contains("Certificate Sign, CRL Sign"), "{root_text}");
        let sub_text = openssl_ok(d, &["x509", "-in", "sub.pem", "-noout", "-text"]);
        assert!(sub_text.contains("CA:TRUE, pathlen:0"), "{sub_text}");
        assert!(sub_text.contains("Subject: CN = Portico Test Sub01, O = Portico"), "{sub_text}");
        // The request's template extension is the root's business, not copied into the certificate.
        assert!(!sub_text.contains("1.3.6.1.4.1.311.20.2"), "{sub_text}");
    }
}

#[test]
fn the_subordinate_request_carries_the_subca_template_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let key = PrivateKey::generate(KeyAlgorithm::Rsa(2048)).expect("key");
    let with = tool::csr("/C=GB/O=Aclab/CN=tanzu-sub01", &key, true).expect("csr");
    let without = tool::csr("CN=tanzu-sub01", &key, false).expect("csr");
    assert!(with.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    write(d, "with.csr", &with);
    write(d, "without.csr", &without);
    let text = openssl_ok(d, &["req", "-in", "with.csr", "-noout", "-text", "-verify"]);
    assert!(text.contains("verify OK") || text.contains("Certificate request self-signature verify OK"), "{text}");
    assert!(text.contains("Subject: C = GB, O = Aclab, CN = tanzu-sub01"), "{text}");
    assert!(text.contains("1.3.6.1.4.1.311.20.2"), "template extension: {text}");
    assert!(text.contains("CA:TRUE"), "{text}");
    // The extension's value is the BMPString "SubCA".
    openssl_ok(d, &["req", "-in", "with.csr", "-outform", "DER", "-out", "with.der"]);
    let bytes = std::fs::read(d.join("with.der")).expect("der");
    let bmp: &[u8] = &[0x1e, 0x0a, 0, b'S', 0, b'u', 0, b'b', 0, b'C', 0, b'A'];
    assert!(bytes.windows(bmp.len()).any(|w| w == bmp), "BMPString SubCA in the request");
    let text = openssl_ok(d, &["req", "-in", "without.csr", "-noout", "-text"]);
    assert!(!text.contains("1.3.6.1.4.1.311.20.2"), "{text}");

    // openssl as the root signs it too (what an offline root run with openssl would do).
    let (root_pem, root_key) = tool::init_root("CN=Offline Root", 30, KeyAlgorithm::EcdsaP256).expect("root");
    write(d, "root.pem", &root_pem);
    write(d, "root.key", root_key.expose());
    write(d, "ext.cnf", "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n");
    openssl_ok(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "with.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "10",
            "-extfile",
            "ext.cnf",
            "-out",
            "sub.pem",
        ],
    );
    let sub = std::fs::read_to_string(d.join("sub.pem")).expect("sub");
    CertificateAuthority::from_pem_at(&sub, key.to_pem().expose(), Some(&root_pem), std::time::SystemTime::now())
        .expect("an openssl-signed subordinate is a usable issuer");
}

#[test]
fn signing_refuses_bad_requests_and_clamps_to_the_root() {
    let (root_pem, root_key) = tool::init_root("CN=Short Root", 5, KeyAlgorithm::EcdsaP256).expect("root");
    let root = CertificateAuthority::from_pem(&root_pem, root_key.expose()).expect("root");
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let csr = tool::csr("CN=Sub", &key, false).expect("csr");
    let sub = tool::sign_subordinate(&root, &csr, 3650, None).expect("signed");
    let sub = CertificateAuthority::from_pem(&sub, key.to_pem().expose()).expect("sub");
    assert_eq!(sub.not_after(), root.not_after(), "a subordinate never outlives its root");

    let tampered = csr.replace("-----BEGIN CERTIFICATE REQUEST-----\n", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA");
    assert!(matches!(tool::sign_subordinate(&root, &tampered, 10, None), Err(ToolError::BadRequest(_))));
    assert!(matches!(tool::sign_subordinate(&root, "nothing", 10, None), Err(ToolError::BadRequest(_))));
    let same_name = tool::csr("CN=Short Root", &key, false).expect("csr");
    let err = tool::sign_subordinate(&root, &same_name, 10, None).unwrap_err();
    assert!(err.to_string().contains("own CN"), "{err}");
    assert!(matches!(
        tool::init_root("O=No Common Name", 10, KeyAlgorithm::EcdsaP256),
        Err(ToolError::BadSubject { .. })
    ));
    let err = tool::init_root("CN=x,XX=y", 10, KeyAlgorithm::EcdsaP256).unwrap_err();
    assert!(err.to_string().contains("unknown attribute \"XX\""), "{err}");
    assert!(matches!(tool::init_root("CN=x", 0, KeyAlgorithm::EcdsaP256), Err(ToolError::BadDays)));
}

#[test]
fn repeated_subject_attributes_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (root_pem, _) = tool::init_root("DC=uk,DC=aclab,CN=aclab-ROOT-CA", 10, KeyAlgorithm::EcdsaP256).expect("root");
    write(dir.path(), "root.pem", &root_pem);
    let subject = openssl_ok(dir.path(), &["x509", "-in", "root.pem", "-noout", "-subject"]);
    assert_eq!(subject.trim(), "subject=DC = uk, DC = aclab, CN = aclab-ROOT-CA");
}

#[test]
fn the_issuer_secret_manifest_is_a_tls_secret_the_ca_issuer_can_use() {
    let pki = root_and_sub(KeyAlgorithm::EcdsaP256);
    let yaml = tool::issuer_secret_manifest(
        "tanzu-sub01-tls-secret",
        "cert-manager",
        &pki.sub_pem,
        &pki.sub_key_pem,
        Some(&pki.root_pem),
    )
    .expect("manifest");
    let secret: Secret = serde_saphyr::from_str(&yaml).expect("a Secret manifest");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(secret.metadata.name.as_deref(), Some("tanzu-sub01-tls-secret"));
    assert_eq!(secret.metadata.namespace.as_deref(), Some("cert-manager"));
    let data: BTreeMap<String, Vec<u8>> = secret.data.expect("data").into_iter().map(|(k, v)| (k, v.0)).collect();
    assert_eq!(data["tls.crt"], pki.sub_pem.as_bytes());
    assert_eq!(data["tls.key"], pki.sub_key_pem.as_bytes());
    assert_eq!(data["ca.crt"], pki.root_pem.as_bytes());
    let ca = CertificateAuthority::from_secret_data(&data).expect("usable by the CA issuer");
    let issued = issue(
        &ca,
        &CertificateRequest {
            dns_names: vec!["x.aclab.uk".into()],
            key_algorithm: KeyAlgorithm::EcdsaP256,
            ..Default::default()
        },
    )
    .expect("issued");
    assert_eq!(issued.ca_pem.as_deref(), Some(pki.root_pem.as_str()));

    // A mismatched pair never becomes a manifest.
    let other = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let err =
        tool::issuer_secret_manifest("s", "cert-manager", &pki.sub_pem, other.to_pem().expose(), None).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(matches!(
        tool::issuer_secret_manifest("Bad_Name", "cert-manager", &pki.sub_pem, &pki.sub_key_pem, None),
        Err(ToolError::BadName(_))
    ));
}
