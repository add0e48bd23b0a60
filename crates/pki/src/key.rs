//! Private keys: generation in cert-manager's algorithms and sizes, reading the PEM encodings found in
//! Secrets (PKCS#8, PKCS#1, SEC1), and a wrapper whose `Debug` and `Display` never show the key.

use crate::der;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519};
use std::fmt;
use x509_parser::pem::Pem;

/// A private key algorithm and size, as a Certificate's `spec.privateKey` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// RSA with the given modulus size in bits (2048, 3072 or 4096).
    Rsa(usize),
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
}

impl Default for KeyAlgorithm {
    /// cert-manager's default: RSA 2048.
    fn default() -> Self {
        KeyAlgorithm::Rsa(2048)
    }
}

impl KeyAlgorithm {
    /// The algorithm for `spec.privateKey.algorithm` (`RSA`, `ECDSA`, `Ed25519`; default RSA) and `size`
    /// (RSA: 2048 default, 3072, 4096; ECDSA: 256 default, 384; ignored for Ed25519), with cert-manager's
    /// validation. The error says what is allowed.
    pub fn from_spec(algorithm: Option<&str>, size: Option<i64>) -> Result<Self, String> {
        match (algorithm.unwrap_or("RSA"), size) {
            ("RSA", None | Some(0) | Some(2048)) => Ok(KeyAlgorithm::Rsa(2048)),
            ("RSA", Some(3072)) => Ok(KeyAlgorithm::Rsa(3072)),
            ("RSA", Some(4096)) => Ok(KeyAlgorithm::Rsa(4096)),
            ("RSA", Some(other)) => Err(format!("RSA key size {other} is not supported (2048, 3072 or 4096)")),
            ("ECDSA", None | Some(0) | Some(256)) => Ok(KeyAlgorithm::EcdsaP256),
            ("ECDSA", Some(384)) => Ok(KeyAlgorithm::EcdsaP384),
            ("ECDSA", Some(other)) => Err(format!("ECDSA key size {other} is not supported (256 or 384)")),
            ("Ed25519", _) => Ok(KeyAlgorithm::Ed25519),
            (other, _) => Err(format!("private key algorithm \"{other}\" is not supported (RSA, ECDSA or Ed25519)")),
        }
    }

    /// Whether this is an RSA algorithm (the only one for which key encipherment makes sense).
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyAlgorithm::Rsa(_))
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyAlgorithm::Rsa(bits) => write!(f, "RSA {bits}"),
            KeyAlgorithm::EcdsaP256 => f.write_str("ECDSA P-256"),
            KeyAlgorithm::EcdsaP384 => f.write_str("ECDSA P-384"),
            KeyAlgorithm::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// Why a private key could not be read or made. Never contains key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The input holds no PEM block at all.
    #[error("no PEM private key found")]
    NoPem,
    /// A PEM block with a label that is not a private key.
    #[error("PEM block \"{0}\" is not a private key")]
    NotAKey(String),
    /// An encrypted key: Portico needs it in the clear, as Kubernetes TLS Secrets hold it.
    #[error("encrypted private keys are not supported: decrypt it first (openssl pkey -in KEY -out KEY.plain)")]
    Encrypted,
    /// The bytes are not a key of a supported algorithm (RSA 2048-8192, ECDSA P-256/P-384, Ed25519).
    #[error("unsupported or malformed {0} private key (RSA 2048-8192, ECDSA P-256/P-384 and Ed25519 are supported)")]
    Unsupported(String),
    /// Key generation failed.
    #[error("generating a {algorithm} key failed: {message}")]
    Generate {
        /// The requested algorithm.
        algorithm: KeyAlgorithm,
        /// What the crypto library said.
        message: String,
    },
}

/// A private key (kept as PKCS#8 DER). `Debug` and `Display` print `[redacted]`, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey {
    pkcs8: Vec<u8>,
    algorithm: KeyAlgorithm,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({}, [redacted])", self.algorithm)
    }
}

impl fmt::Display for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} private key [redacted]", self.algorithm)
    }
}

impl PrivateKey {
    /// A new random key.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, KeyError> {
        let fail = |message: String| KeyError::Generate { algorithm, message };
        let pkcs8 = match algorithm {
            KeyAlgorithm::Rsa(bits) => {
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).map_err(|e| fail(e.to_string()))?;
                key.to_pkcs8_der().map_err(|e| fail(e.to_string()))?.as_bytes().to_vec()
            }
            KeyAlgorithm::EcdsaP256 => {
                KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| fail(e.to_string()))?.serialize_der()
            }
            KeyAlgorithm::EcdsaP384 => {
                KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(|e| fail(e.to_string()))?.serialize_der()
            }
            KeyAlgorithm::Ed25519 => {
                KeyPair::generate_for(&PKCS_ED25519).map_err(|e| fail(e.to_string()))?.serialize_der()
            }
        };
        Ok(PrivateKey { pkcs8, algorithm })
    }

    /// Reads the first private key of a PEM text: `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` (PKCS#1, what
    /// cert-manager writes by default) or `EC PRIVATE KEY` (SEC1). Other PEM blocks before it are skipped.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let mut seen = None;
        for block in Pem::iter_from_buffer(pem.as_bytes()) {
            let Ok(block) = block else { break };
            let candidates = match block.label.as_str() {
                "PRIVATE KEY" => vec![block.contents.clone()],
                "RSA PRIVATE KEY" => vec![der::pkcs8_from_pkcs1(&block.contents)],
                "EC PRIVATE KEY" => {
                    vec![
                        der::pkcs8_from_sec1(&block.contents, der::P256),
                        der::pkcs8_from_sec1(&block.contents, der::P384),
                    ]
                }
                "ENCRYPTED PRIVATE KEY" => return Err(KeyError::Encrypted),
                other => {
                    seen.get_or_insert_with(|| other.to_string());
                    continue;
                }
            };
            for pkcs8 in candidates {
                if let Ok(key) = Self::from_pkcs8_der(pkcs8) {
                    return Ok(key);
                }
            }
            return Err(KeyError::Unsupported(block.label));
        }
        Err(seen.map_or(KeyError::NoPem, KeyError::NotAKey))
    }

    /// A key from PKCS#8 DER.
    pub fn from_pkcs8_der(pkcs8: Vec<u8>) -> Result<Self, KeyError> {
        let pair = KeyPair::try_from(pkcs8.as_slice()).map_err(|_| KeyError::Unsupported("PKCS#8".into()))?;
        let algorithm = if pair.algorithm() == &PKCS_ECDSA_P256_SHA256 {
            KeyAlgorithm::EcdsaP256
        } else if pair.algorithm() == &PKCS_ECDSA_P384_SHA384 {
            KeyAlgorithm::EcdsaP384
        } else if pair.algorithm() == &PKCS_ED25519 {
            KeyAlgorithm::Ed25519
        } else {
            KeyAlgorithm::Rsa(rsa_bits(pair.public_key_raw()))
        };
        Ok(PrivateKey { pkcs8, algorithm })
    }

    /// The key's algorithm (for RSA, with its actual modulus size).
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), wrapped so it is not printed by accident.
    pub fn to_pem(&self) -> SecretPem {
        SecretPem::new(pem_encode("PRIVATE KEY", &self.pkcs8))
    }

    /// The raw public key (the bits of the SubjectPublicKeyInfo), to compare with a certificate's.
    pub fn public_key_raw(&self) -> Vec<u8> {
        self.key_pair().map(|k| k.public_key_raw().to_vec()).unwrap_or_default()
    }

    pub(crate) fn key_pair(&self) -> Result<KeyPair, KeyError> {
        KeyPair::try_from(self.pkcs8.as_slice()).map_err(|_| KeyError::Unsupported("PKCS#8".into()))
    }
}

/// The modulus size of an RSA public key given as DER `RSAPublicKey`.
fn rsa_bits(rsa_public_key: &[u8]) -> usize {
    der::read(rsa_public_key)
        .and_then(|(seq, _)| der::children(seq.content))
        .and_then(|fields| {
            let modulus = fields.first()?.content;
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            Some(significant * 8)
        })
        .unwrap_or(0)
}

/// PEM text holding a private key: the one type for keys in every crate, whose `Debug`, `Display` and
/// `Serialize` never show it.
pub use portico_ir::SecretPem;

/// Encodes DER as PEM with 64-character lines.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_values_map_to_algorithms_and_refuse_the_rest() {
        assert_eq!(KeyAlgorithm::from_spec(None, None), Ok(KeyAlgorithm::Rsa(2048)));
        assert_eq!(KeyAlgorithm::from_spec(Some("RSA"), Some(4096)), Ok(KeyAlgorithm::Rsa(4096)));
        assert_eq!(KeyAlgorithm::from_spec(Some("ECDSA"), None), Ok(KeyAlgorithm::EcdsaP256));
        assert_eq!(KeyAlgorithm::from_spec(Some("ECDSA"), Some(384)), Ok(KeyAlgorithm::EcdsaP384));
        assert_eq!(KeyAlgorithm::from_spec(Some("Ed25519"), Some(256)), Ok(KeyAlgorithm::Ed25519));
        let err = KeyAlgorithm::from_spec(Some("ECDSA"), Some(521)).unwrap_err();
        assert!(err.contains("521") && err.contains("256 or 384"), "{err}");
        assert!(KeyAlgorithm::from_spec(Some("RSA"), Some(1024)).is_err());
        assert!(KeyAlgorithm::from_spec(Some("rsa"), None).is_err(), "cert-manager's enum is case-sensitive");
    }

    #[test]
    fn keys_round_trip_through_pem_and_never_print() {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384, KeyAlgorithm::Ed25519] {
            let key = PrivateKey::generate(alg).expect("generate");
            let pem = key.to_pem();
            assert!(pem.expose().starts_with("-----BEGIN PRIVATE KEY-----\n"));
            let again = PrivateKey::from_pem(pem.expose()).expect("parse");
            assert_eq!(again, key);
            assert_eq!(again.algorithm(), alg);
            let body: String = pem.expose().lines().nth(1).unwrap_or_default().chars().take(20).collect();
            for shown in [format!("{key:?}"), format!("{key}"), format!("{pem:?}"), format!("{pem}")] {
                assert!(!shown.contains(&body), "key material printed: {shown}");
                assert!(shown.contains("redacted"), "{shown}");
            }
        }
    }

    #[test]
    fn non_keys_are_refused_with_a_reason() {
        assert_eq!(PrivateKey::from_pem("hello"), Err(KeyError::NoPem));
        let cert = pem_encode("CERTIFICATE", &[0x30, 0x00]);
        assert_eq!(PrivateKey::from_pem(&cert), Err(KeyError::NotAKey("CERTIFICATE".into())));
        let enc = pem_encode("ENCRYPTED PRIVATE KEY", &[0x30, 0x00]);
        assert_eq!(PrivateKey::from_pem(&enc), Err(KeyError::Encrypted));
        let junk = pem_encode("PRIVATE KEY", &[0x30, 0x03, 1, 2, 3]);
        assert_eq!(PrivateKey::from_pem(&junk), Err(KeyError::Unsupported("PRIVATE KEY".into())));
    }
}
