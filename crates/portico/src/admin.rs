//! The admin endpoint (127.0.0.1:9901 by default): health, readiness, metrics, statuses and the IR.
//!
//! It serves only what is safe to show: the IR's private keys serialise as `<redacted>`, and Secrets are
//! never part of the status document.

use crate::controller::View;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_proxy::{Metrics, Proxy};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

/// Starts the admin server; returns the bound address.
pub async fn serve(
    address: SocketAddr,
    view: Arc<ArcSwap<View>>,
    metrics: Arc<Metrics>,
    proxy: Arc<Proxy>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the admin endpoint on {address}: {e}"))?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!(%bound, "the admin endpoint listens beyond localhost");
    }
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let view = view.clone();
            let metrics = metrics.clone();
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = route(&request, &view.load(), &metrics, &proxy);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

fn route(request: &Request<Incoming>, view: &View, metrics: &Metrics, proxy: &Proxy) -> Response<Full<Bytes>> {
    const JSON: &str = "application/json";
    match request.uri().path() {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if view.ready => respond(StatusCode::OK, "text/plain", "ready\n"),
        "/readyz" => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "no configuration applied yet\n"),
        "/metrics" => respond(StatusCode::OK, "text/plain; version=0.0.4", metrics.render() + &proxy.pool_metrics()),
        "/api/status" => {
            // Per-endpoint health and load live in the proxy; the rest comes from the last translation.
            let mut status = serde_json::to_value(&*view.status).unwrap_or_default();
            status["pools"] = proxy.pool_health();
            if let Some(dns) = &view.dns {
                status["dns"] = dns.status();
            }
            respond(StatusCode::OK, JSON, serde_json::to_vec_pretty(&status).unwrap_or_default())
        }
        "/api/config" => {
            let body = serde_json::json!({ "generation": view.generation, "ir": &*view.ir });
            respond(StatusCode::OK, JSON, serde_json::to_vec_pretty(&body).unwrap_or_default())
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /healthz /readyz /metrics /api/status /api/config\n",
        ),
    }
}
