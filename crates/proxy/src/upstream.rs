//! Connections to backends: HTTP/1.1 through Portico's keep-alive pool ([`crate::pool`]), HTTP/2 through
//! hyper-util's client; plain or TLS (re-encryption).

use crate::ProxyError;
use crate::h1::LeanBody;
use crate::handler::{BoxError, ProxyBody};
use crate::pool::{DrivenBody, Http1Pool, UpstreamError, error_chain};
use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// hyper-util's client, for HTTP/2 backends: speaks `http://` (h2c) and `https://` URIs.
pub type Http2Client = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// How a pool reaches its backends.
#[derive(Clone)]
pub enum Upstream {
    /// HTTP/1.1, plain or TLS.
    Http1(Arc<Http1Pool>),
    /// HTTP/2 (gRPC, h2c, h2 over TLS): one multiplexed connection per endpoint.
    Http2 { client: Box<Http2Client>, scheme: &'static str },
}

impl Upstream {
    /// Sends a request whose URI is in origin form (`/path?query`) and which carries a Host header.
    pub async fn send(
        &self,
        endpoint: SocketAddr,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match self {
            Upstream::Http1(pool) => pool.send(endpoint, request).await,
            Upstream::Http2 { client, scheme } => {
                // hyper-util's client finds the connection by the URI's scheme and authority.
                let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
                let uri = format!("{scheme}://{endpoint}{path}")
                    .parse::<Uri>()
                    .map_err(|e| UpstreamError::Request(format!("request target: {e}")))?;
                *request.uri_mut() = uri;
                match client.request(request).await {
                    Ok(response) => Ok(response.map(UpstreamBody::Http2)),
                    Err(error) if error.is_connect() => Err(UpstreamError::Connect(error_chain(&error))),
                    Err(error) => Err(UpstreamError::Request(error_chain(&error))),
                }
            }
        }
    }
}

/// A backend's response body, from whichever client read it.
pub enum UpstreamBody {
    /// HTTP/1.1, read by Portico's own client ([`crate::h1`]); read to its end, its connection returns to the
    /// pool.
    Lean(LeanBody),
    /// HTTP/1.1, read by hyper's client connection (a request with a body, an upgrade); likewise.
    Driven(DrivenBody),
    Http2(Incoming),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Lean(body) => Pin::new(body).poll_frame(cx),
            UpstreamBody::Driven(body) => Pin::new(body).poll_frame(cx),
            UpstreamBody::Http2(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Lean(body) => body.is_end_stream(),
            UpstreamBody::Driven(body) => body.is_end_stream(),
            UpstreamBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Lean(body) => body.size_hint(),
            UpstreamBody::Driven(body) => body.size_hint(),
            UpstreamBody::Http2(body) => body.size_hint(),
        }
    }
}

fn connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http
}

fn http2_client(https: HttpsConnector<HttpConnector>) -> Http2Client {
    Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).http2_only(true).build(https)
}

/// The client of plain-text HTTP/2 pools (h2c, prior knowledge).
pub fn h2c() -> Result<Upstream, ProxyError> {
    // The TLS side is never used for http:// URIs; it still needs settings.
    let tls = client_config(None, &[])?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http2()
        .wrap_connector(connector());
    Ok(Upstream::Http2 { client: Box::new(http2_client(https)), scheme: "http" })
}

/// The client of a TLS pool; `server_name` fixes the SNI and verified name (else the endpoint's IP). With
/// `http2` it offers only h2 by ALPN, for gRPC over TLS; else only http/1.1.
pub fn tls(config: rustls::ClientConfig, server_name: Option<&str>, http2: bool) -> Result<Upstream, ProxyError> {
    let name = server_name
        .map(|name| {
            rustls::pki_types::ServerName::try_from(name.to_string())
                .map_err(|_| ProxyError::Config(format!("{name:?} is not a valid TLS server name")))
        })
        .transpose()?;
    if !http2 {
        return Ok(Upstream::Http1(Http1Pool::tls(config, name)));
    }
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_or_http();
    let builder = match name {
        Some(name) => builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name)),
        None => builder,
    };
    let https = builder.enable_http2().wrap_connector(connector());
    Ok(Upstream::Http2 { client: Box::new(http2_client(https)), scheme: "https" })
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
