//! Helpers shared by the integration tests: files in a temp dir and the openssl CLI as the independent judge.
#![allow(dead_code)]

use portico_pki::tool;
use portico_pki::{CertificateAuthority, KeyAlgorithm, PrivateKey};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

/// Runs openssl with `args` in `dir`; returns (success, stdout + stderr).
pub fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("the openssl CLI must be installed");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs openssl and fails the test with its output if it fails.
pub fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, text) = openssl(dir, args);
    assert!(ok, "openssl {args:?} failed:\n{text}");
    text
}

/// `openssl x509 -text` of a PEM certificate.
pub fn x509_text(dir: &Path, pem: &str) -> String {
    let path = write(dir, "inspect.pem", pem);
    openssl_ok(dir, &["x509", "-in", path.to_str().unwrap_or_default(), "-noout", "-text"])
}

/// The PEM blocks of a text, in order.
pub fn pem_blocks(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in pem.lines() {
        if line.starts_with("-----BEGIN") {
            current.clear();
        }
        current.push_str(line);
        current.push('\n');
        if line.starts_with("-----END") {
            out.push(current.clone());
        }
    }
    out
}

/// A root made by `portico ca init-root` and a subordinate signed by it, loaded as a CA issuer whose
/// Secret has the root in `ca.crt`: the article's setup.
pub struct Pki {
    pub root_pem: String,
    pub sub_pem: String,
    pub sub_key_pem: String,
    pub sub: CertificateAuthority,
}

pub fn root_and_sub(algorithm: KeyAlgorithm) -> Pki {
    let (root_pem, root_key) = tool::init_root("CN=Portico Test Root,O=Portico", 3650, algorithm).expect("init_root");
    let root = CertificateAuthority::from_pem(&root_pem, root_key.expose()).expect("root is a CA");
    let sub_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let csr = tool::csr("CN=Portico Test Sub01,O=Portico", &sub_key, true).expect("csr");
    let sub_pem = tool::sign_subordinate(&root, &csr, 1825, Some(0)).expect("sign");
    let sub_key_pem = sub_key.to_pem().expose().to_string();
    let sub = CertificateAuthority::from_pem_at(&sub_pem, &sub_key_pem, Some(&root_pem), std::time::SystemTime::now())
        .expect("sub is a CA");
    Pki { root_pem, sub_pem, sub_key_pem, sub }
}
