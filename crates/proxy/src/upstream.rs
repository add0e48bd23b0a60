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
        .pool_max_idle_per_host(256)
        .http2_only(http2)
        .build(https)
}

/// A client for plain-text pools: HTTP/1.1, or HTTP/2 with prior knowledge (h2c) when `http2`.
pub fn plain_client(http2: bool) -> Result<HttpClient, ProxyError> {
    // The TLS side is never used for http:// URIs; it still needs settings.
    let tls = client_config(None)?;
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

/// TLS 1.2+ client settings trusting `ca_pem`, or the web PKI's roots when `None`.
pub fn client_config(ca_pem: Option<&str>) -> Result<rustls::ClientConfig, ProxyError> {
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
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ProxyError::Config(format!("TLS versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
