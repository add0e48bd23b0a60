//! Request signing for RFC 2136 updates and zone transfers, pluggable so that GSS-TSIG (Kerberos, the Active
//! Directory case) can be added beside TSIG.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hickory_proto::op::Message;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{Name, TSigVerifier, TSigner};

use crate::error::explain_tsig_verify_error;

/// A boxed future, as returned by [`MessageSigner::sign`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A request ready to send, and how to check the answers to it.
pub struct SignedRequest {
    /// The request in wire format, signature included.
    pub bytes: Vec<u8>,
    /// Checks each response message; `None` when the request is unsigned.
    pub verifier: Option<Box<dyn ResponseVerifier>>,
}

/// Checks the signature of each response message to one request, in order (a zone transfer has several).
pub trait ResponseVerifier: Send {
    /// `Ok` when `response` (wire format) is correctly signed; the error says why not.
    fn verify(&mut self, response: &[u8]) -> Result<(), String>;
}

/// Signs DNS requests. [`TsigSigner`] implements TSIG (RFC 8945) with HMAC-SHA256/384/512 and [`Unsigned`] sends
/// requests as they are; a GSS-TSIG signer (RFC 3645) negotiates a context per request with TKEY, which is why
/// signing is asynchronous and is told the server.
pub trait MessageSigner: Send + Sync + fmt::Debug {
    /// What signs, for logs and errors (e.g. `TSIG key portico-key. (hmac-sha256)`); never the secret.
    fn describe(&self) -> String;

    /// Signs `message`, to be sent to `server`, and returns its wire form and a verifier for the responses.
    fn sign<'a>(&'a self, server: SocketAddr, message: Message) -> BoxFuture<'a, Result<SignedRequest, String>>;
}

/// Sends requests unsigned (a server that allows updates by address; not recommended).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unsigned;

impl MessageSigner for Unsigned {
    fn describe(&self) -> String {
        "no TSIG key (unsigned)".to_string()
    }

    fn sign<'a>(&'a self, _server: SocketAddr, message: Message) -> BoxFuture<'a, Result<SignedRequest, String>> {
        Box::pin(async move {
            let bytes = message.to_vec().map_err(|e| e.to_string())?;
            Ok(SignedRequest { bytes, verifier: None })
        })
    }
}

/// The HMAC algorithms of TSIG that Portico supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlg {
    /// `hmac-sha256`.
    HmacSha256,
    /// `hmac-sha384`.
    HmacSha384,
    /// `hmac-sha512`.
    HmacSha512,
}

impl TsigAlg {
    /// The name BIND and external-dns use (`hmac-sha256`).
    pub fn as_str(self) -> &'static str {
        match self {
            TsigAlg::HmacSha256 => "hmac-sha256",
            TsigAlg::HmacSha384 => "hmac-sha384",
            TsigAlg::HmacSha512 => "hmac-sha512",
        }
    }

    fn hickory(self) -> TsigAlgorithm {
        match self {
            TsigAlg::HmacSha256 => TsigAlgorithm::HmacSha256,
            TsigAlg::HmacSha384 => TsigAlgorithm::HmacSha384,
            TsigAlg::HmacSha512 => TsigAlgorithm::HmacSha512,
        }
    }
}

impl fmt::Display for TsigAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TsigAlg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Ok(TsigAlg::HmacSha256),
            "hmac-sha384" => Ok(TsigAlg::HmacSha384),
            "hmac-sha512" => Ok(TsigAlg::HmacSha512),
            other => Err(format!("unsupported TSIG algorithm {other:?}: use hmac-sha256, hmac-sha384 or hmac-sha512")),
        }
    }
}

/// A TSIG key: name, algorithm and shared secret.
#[derive(Clone)]
pub struct TsigKey {
    /// Key name as the server knows it (e.g. `portico-key`).
    pub name: String,
    /// HMAC algorithm.
    pub algorithm: TsigAlg,
    secret: Vec<u8>,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TsigKey {
    /// A key from its name, algorithm and raw secret.
    pub fn new(name: impl Into<String>, algorithm: TsigAlg, secret: Vec<u8>) -> Self {
        TsigKey { name: name.into(), algorithm, secret }
    }

    /// A key from the base64 secret found in a BIND `key` statement or `tsig-keygen` output.
    pub fn from_base64(name: impl Into<String>, algorithm: TsigAlg, secret_b64: &str) -> Result<Self, String> {
        let name = name.into();
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret_b64.trim())
            .map_err(|e| format!("TSIG key {name}: the secret is not valid base64: {e}"))?;
        if secret.is_empty() {
            return Err(format!("TSIG key {name}: empty secret"));
        }
        Ok(TsigKey { name, algorithm, secret })
    }

    /// The secret in base64, as a BIND `key` statement writes it.
    pub fn secret_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.secret)
    }
}

/// Signs with a TSIG key (RFC 8945) and verifies the server's signed responses, including every message of a
/// zone transfer.
#[derive(Clone)]
pub struct TsigSigner {
    key: TsigKey,
    signer: TSigner,
}

impl fmt::Debug for TsigSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigSigner").field("key", &self.key).finish()
    }
}

/// Allowed clock difference between this machine and the server, seconds (BIND's and external-dns's value).
const TSIG_FUDGE: u16 = 300;

impl TsigSigner {
    /// A signer for `key`.
    pub fn new(key: TsigKey) -> Result<Self, String> {
        let name = Name::from_ascii(format!("{}.", key.name.trim_end_matches('.')))
            .map_err(|e| format!("TSIG key name {:?} is not a DNS name: {e}", key.name))?;
        let signer = TSigner::new(key.secret.clone(), key.algorithm.hickory(), name, TSIG_FUDGE)
            .map_err(|e| format!("TSIG key {}: {e}", key.name))?;
        Ok(TsigSigner { key, signer })
    }
}

struct TsigResponseVerifier(TSigVerifier);

impl ResponseVerifier for TsigResponseVerifier {
    fn verify(&mut self, response: &[u8]) -> Result<(), String> {
        self.0.verify(response).map(|_| ()).map_err(|e| explain_tsig_verify_error(&e.to_string()))
    }
}

impl MessageSigner for TsigSigner {
    fn describe(&self) -> String {
        format!("TSIG key {} ({})", self.key.name.trim_end_matches('.'), self.key.algorithm)
    }

    fn sign<'a>(&'a self, _server: SocketAddr, mut message: Message) -> BoxFuture<'a, Result<SignedRequest, String>> {
        Box::pin(async move {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let verifier = message.finalize(&self.signer, now).map_err(|e| e.to_string())?;
            let bytes = message.to_vec().map_err(|e| e.to_string())?;
            Ok(SignedRequest {
                bytes,
                verifier: verifier.map(|v| Box::new(TsigResponseVerifier(v)) as Box<dyn ResponseVerifier>),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_never_print_the_secret() {
        let key = TsigKey::from_base64("portico-key", "hmac-sha256".parse().unwrap(), "c2VjcmV0c2VjcmV0").unwrap();
        assert_eq!(key.secret_base64(), "c2VjcmV0c2VjcmV0");
        let debug = format!("{:?}", TsigSigner::new(key).unwrap());
        assert!(!debug.contains("c2VjcmV0") && !debug.contains("secret\""), "{debug}");
        assert!(TsigKey::from_base64("k", TsigAlg::HmacSha512, "not base64!").unwrap_err().contains("base64"));
        assert!("hmac-md5".parse::<TsigAlg>().unwrap_err().contains("unsupported"));
        assert_eq!("HMAC-SHA384.".parse::<TsigAlg>().unwrap(), TsigAlg::HmacSha384);
    }

    /// What BIND sends for a wrong key: an unsigned error response whose TSIG has an empty MAC. hickory's
    /// verifier calls that a "truncated HMAC"; the verifier says what it means instead.
    #[tokio::test]
    async fn an_unsigned_badsig_answer_is_explained() {
        use hickory_proto::op::{MessageType, OpCode, ResponseCode};
        use hickory_proto::rr::rdata::tsig::{TSIG, TsigError, make_tsig_record};

        let key = TsigKey::from_base64("portico-key", TsigAlg::HmacSha256, "c2VjcmV0c2VjcmV0").unwrap();
        let signer = TsigSigner::new(key).unwrap();
        let request = Message::query();
        let id = request.metadata.id;
        let server: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let mut verifier = signer.sign(server, request).await.unwrap().verifier.expect("a verifier");

        let mut response = Message::new(id, MessageType::Response, OpCode::Query);
        response.metadata.response_code = ResponseCode::NotAuth;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let tsig = TSIG::new(TsigAlgorithm::HmacSha256, now, 300, vec![], id, Some(TsigError::BadSig), vec![]);
        response.set_signature(Box::new(make_tsig_record(Name::from_ascii("portico-key.").unwrap(), tsig)));
        let err = verifier.verify(&response.to_vec().unwrap()).unwrap_err();
        assert!(err.contains("wrong TSIG key"), "{err}");
        assert!(!err.contains("file an issue"), "{err}");
    }
}
