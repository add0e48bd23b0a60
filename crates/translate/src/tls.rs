//! Certificates from Secrets: found, allowed, parsed and checked before a listener may use them.

use portico_ir::{Certificate, SecretPem};
use portico_resources::ObjectKey;
use portico_resources::Snapshot;
use std::sync::Arc;

/// Why a certificate reference could not be used.
pub enum CertError {
    /// The Secret does not exist.
    NotFound(String),
    /// It exists but is not a usable certificate and key.
    Invalid(String),
}

/// Loads the certificate and key of a `kubernetes.io/tls` Secret and checks that they belong together.
pub fn load_certificate(snapshot: &Snapshot, key: &ObjectKey) -> Result<Certificate, CertError> {
    let Some(secret) = snapshot.secrets.get(key) else {
        return Err(CertError::NotFound(format!("Secret {key} does not exist")));
    };
    let data = secret.data.as_ref();
    let field = |name: &str| data.and_then(|d| d.get(name)).map(|b| b.0.clone());
    let (Some(chain), Some(private_key)) = (field("tls.crt"), field("tls.key")) else {
        return Err(CertError::Invalid(format!("Secret {key} has no tls.crt and tls.key")));
    };
    let chain_text =
        String::from_utf8(chain).map_err(|_| CertError::Invalid(format!("Secret {key}: tls.crt is not PEM text")))?;
    let key_text = String::from_utf8(private_key)
        .map_err(|_| CertError::Invalid(format!("Secret {key}: tls.key is not PEM text")))?;
    check_pair(&chain_text, &key_text).map_err(|why| CertError::Invalid(format!("Secret {key}: {why}")))?;
    Ok(Certificate { chain_pem: chain_text, key_pem: SecretPem::new(key_text) })
}

/// Parses a PEM chain and key and checks that the key is the leaf's. The message never contains key bytes.
pub fn check_pair(chain_pem: &str, key_pem: &str) -> Result<(), String> {
    let chain: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not a valid PEM certificate chain ({e})"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|_| "tls.key is not a valid PEM private key".to_string())?
        .ok_or_else(|| "tls.key holds no private key".to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| "tls.key is not a supported private key (RSA, ECDSA or Ed25519)".to_string())?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|_| "tls.key does not match the certificate in tls.crt".to_string())
}
