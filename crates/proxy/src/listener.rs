//! Listening sockets: accept, terminate TLS with the certificate chosen by SNI from the current
//! configuration, and serve HTTP/1.1 and HTTP/2 on each connection.

use crate::compile::Compiled;
use crate::{Shared, handler};
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use portico_ir::Protocol;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses a PEM chain and key into what rustls serves.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain: Vec<_> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate chain: {e}"))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|_| "private key is not valid PEM".to_string())?
        .ok_or_else(|| "no private key".to_string())?;
    let key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|_| "unsupported private key type".to_string())?;
    Ok(CertifiedKey::new(chain, key))
}

/// Picks the certificate for a ClientHello from the configuration in force *now*, so a certificate added or
/// renewed by a configuration swap is served on the next handshake.
struct SniResolver {
    state: Arc<ArcSwap<Compiled>>,
    address: SocketAddr,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver").field("address", &self.address).finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let compiled = self.state.load();
        let listener = compiled.listeners.get(&self.address)?;
        let name = hello.server_name().map(|n| n.to_ascii_lowercase());
        let certificates = &listener.certificates;
        if let Some(name) = &name {
            let exact = certificates.iter().find(|(h, _)| h.as_deref() == Some(name.as_str()));
            let wildcard = || {
                certificates.iter().find(|(h, _)| {
                    h.as_deref()
                        .and_then(|h| h.strip_prefix('*'))
                        .is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
                })
            };
            if let Some((_, key)) = exact.or_else(wildcard) {
                return Some(key.clone());
            }
        }
        certificates.iter().find(|(h, _)| h.is_none()).or(certificates.first()).map(|(_, key)| key.clone())
    }
}

/// TLS settings for a listening socket: TLS 1.2 and 1.3 only, ALPN h2 then http/1.1, session tickets on.
fn server_config(
    state: Arc<ArcSwap<Compiled>>,
    address: SocketAddr,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { state, address }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// A running accept loop; dropping it (or calling [`ListenerHandle::stop`]) stops accepting, while
/// connections already accepted carry on.
pub struct ListenerHandle {
    pub protocol: Protocol,
    task: JoinHandle<()>,
}

impl ListenerHandle {
    /// Stops accepting new connections.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts accepting on a bound socket.
pub fn spawn(
    listener: TcpListener,
    address: SocketAddr,
    protocol: Protocol,
    shared: Arc<Shared>,
) -> Result<ListenerHandle, rustls::Error> {
    let tls = match protocol {
        Protocol::Https => Some(tokio_rustls::TlsAcceptor::from(server_config(shared.state.clone(), address)?)),
        Protocol::Http => None,
    };
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%address, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            shared.metrics.connection_opened();
            let shared = shared.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => serve(shared, stream, address, peer, "http").await,
                    Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve(shared, stream, address, peer, "https").await,
                        Ok(Err(error)) => {
                            tracing::debug!(%address, %peer, %error, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%address, %peer, "TLS handshake timed out"),
                    },
                }
            });
        }
    });
    Ok(ListenerHandle { protocol, task })
}

async fn serve<I>(shared: Arc<Shared>, io: I, local: SocketAddr, peer: SocketAddr, scheme: &'static str)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let watcher = shared.graceful.lock().ok().and_then(|g| g.as_ref().map(|g| g.watcher()));
    let service_shared = shared.clone();
    let service = service_fn(move |request| {
        let shared = service_shared.clone();
        async move { Ok::<_, Infallible>(handler::handle(&shared, request, local, peer, scheme).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
    let result = match watcher {
        Some(watcher) => watcher.watch(connection).await,
        None => connection.await,
    };
    if let Err(error) = result {
        tracing::debug!(%local, %peer, %error, "connection ended with an error");
    }
}
