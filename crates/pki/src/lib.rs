//! Portico's certificates: what cert-manager does for a load balancer, in a library.
//!
//! - [`spec`]: the `cert-manager.io/v1` resources (Certificate, Issuer, ClusterIssuer).
//! - [`ca`]: a CA issuer's key pair, validated with cert-manager's reasons (`KeyPairVerified`,
//!   `ErrGetKeyPair`, `ErrInvalidKeyPair`), and its name constraints.
//! - [`mod@issue`]: issuing from a CA, renewal time and backoff.
//! - [`secret`]: the Secret cert-manager would write (`tls.crt`, `tls.key`, `ca.crt`, annotations).
//! - [`store`]: issued certificates persisted in the state dir (atomic writes, 0600), verified on load.
//! - [`tool`]: the building blocks of `portico ca` (offline root, subordinate CSR, signing, issuer Secret).
//! - [`acme`]: ACME orders (instant-acme), challenges published through a [`acme::ChallengeSink`].
//!
//! Private keys are [`PrivateKey`] and [`SecretPem`], whose `Debug` and `Display` never show key bytes.

pub mod acme;
pub mod ca;
mod der;
pub mod issue;
mod key;
pub mod secret;
/// The cert-manager resource types, which live with the other resource types.
pub use portico_resources::certmanager as spec;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tool;

pub use ca::{CaError, CertificateAuthority, IpNet, NameConstraints};
pub use issue::{Backoff, CertificateRequest, IssueError, Issued, VerifyError, issue, renewal_time};
pub use key::{KeyAlgorithm, KeyError, PrivateKey, SecretPem};
pub use secret::{secret_annotations, secret_data};
pub use store::{CertStore, StoreError};
