//! Connections to backends: pooled keep-alive clients, HTTP/1.1 or HTTP/2, plain or TLS (re-encryption).

use crate::ProxyError;
use crate::handler::ProxyBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;

/// The client type used for every pool: speaks `http://` and `https://` URIs.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

fn connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http
}

fn build(https: HttpsConnector<HttpConnector>, http2: bool) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .http2_only(http2)
        .build(https)
}

/// A client for plain-text pools: HTTP/1.1, or HTTP/2 with prior knowledge (h2c) when `http2`.
pub fn plain_client(http2: bool) -> Result<HttpClient, ProxyError> {
    // The TLS side is never used for http:// URIs; it still needs settings.
    let tls = client_config(None, &[])?;
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
    let https = if http2 {
        builder.enable_http2().wrap_connector(connector())
    } else {
        builder.enable_http1().wrap_connector(connector())
    };
    Ok(build(https, http2))
}

/// A client for a TLS pool; `server_name` fixes the SNI and verified name (else the endpoint's IP). With
/// `http2` it offers only h2 by ALPN, for gRPC over TLS.
pub fn tls_client(
    config: rustls::ClientConfig,
    server_name: Option<&str>,
    http2: bool,
) -> Result<HttpClient, ProxyError> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_or_http();
    let builder = match server_name {
        Some(name) => {
            let name = rustls::pki_types::ServerName::try_from(name.to_string())
                .map_err(|_| ProxyError::Config(format!("{name:?} is not a valid TLS server name")))?;
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let https = if http2 {
        builder.enable_http2().wrap_connector(connector())
    } else {
        builder.enable_http1().wrap_connector(connector())
    };
    Ok(build(https, http2))
}

/// TLS 1.2+ client settings trusting `ca_pem`, or the web PKI's roots when `None`. With `subject_alt_names`
/// the backend's certificate must carry one of those names (BackendTLSPolicy `subjectAltNames`) instead of
/// the server name sent by SNI.
pub fn client_config(ca_pem: Option<&str>, subject_alt_names: &[String]) -> Result<rustls::ClientConfig, ProxyError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
                let cert = cert.map_err(|e| ProxyError::Config(format!("CA bundle: {e}")))?;
                roots.add(cert).map_err(|e| ProxyError::Config(format!("CA bundle: {e}")))?;
            }
            if roots.is_empty() {
                return Err(ProxyError::Config("CA bundle holds no certificate".into()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ProxyError::Config(format!("TLS versions: {e}")))?;
    if subject_alt_names.is_empty() {
        return Ok(builder.with_root_certificates(roots).with_no_client_auth());
    }
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| ProxyError::Config(format!("CA bundle: {e}")))?;
    let names = subject_alt_names
        .iter()
        .map(|n| {
            rustls::pki_types::ServerName::try_from(n.clone())
                .map_err(|_| ProxyError::Config(format!("{n:?} is not a valid subject alternative name")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SanVerifier { inner, names }))
        .with_no_client_auth())
}

/// Verifies the chain as usual, but accepts the certificate when it is valid for any of `names` (rather
/// than for the SNI name): the Gateway API's BackendTLSPolicy `subjectAltNames`.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    names: Vec<rustls::pki_types::ServerName<'static>>,
}

impl rustls::client::danger::ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let mut last = rustls::Error::General("no subject alternative name to verify".into());
        for name in &self.names {
            match self.inner.verify_server_cert(end_entity, intermediates, name, ocsp_response, now) {
                Ok(verified) => return Ok(verified),
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
