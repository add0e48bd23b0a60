//! The request path: find the virtual host and route in the configuration in force, apply filters, then
//! redirect, answer, or forward to a pool endpoint.

use crate::Shared;
use crate::compile::{CompiledAction, CompiledListener, CompiledPool, CompiledRoute};
use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue, LOCATION};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use portico_ir::{Filter, HeaderEdits, PathRewrite, Redirect};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The response body type of the proxy.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one hop and must not be forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

fn local(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The request's host, lower-case, without port: `:authority` for HTTP/2, else the Host header.
fn request_host(request: &Request<Incoming>) -> Option<String> {
    let raw = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| request.headers().get(HOST).and_then(|h| h.to_str().ok()).map(str::to_string))?;
    let without_port = match raw.rfind(':') {
        Some(i) if !raw.ends_with(']') && raw[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &raw[..i],
        _ => raw.as_str(),
    };
    Some(without_port.to_ascii_lowercase())
}

fn find_route<'a>(
    listener: &'a CompiledListener,
    host: &str,
    request: &Request<Incoming>,
) -> Option<&'a CompiledRoute> {
    let path = request.uri().path();
    let query = request.uri().query();
    // The most specific matching host owns the request: if none of its routes match, the answer is 404 and
    // less specific hosts are not consulted, as in the Gateway API.
    let vhost = listener.hosts.iter().find(|h| h.pattern.matches(host))?;
    vhost.routes.iter().find(|route| {
        route.path.matches(path)
            && route.method.as_ref().is_none_or(|m| m == request.method())
            && route.headers.iter().all(|(name, m)| {
                // Repeated headers are matched on their values joined with commas, as RFC 9110 allows.
                let values: Vec<&str> =
                    request.headers().get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
                !values.is_empty() && m.matches(&values.join(","))
            })
            && route.query.iter().all(|(name, m)| query_value(query, name).is_some_and(|v| m.matches(&v)))
    })
}

/// The first value of a query parameter, percent-decoded.
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key) == name).then(|| decode(value))
    })
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Handles one request. Never fails: every problem becomes a short error response.
pub async fn handle(
    shared: &Shared,
    request: Request<Incoming>,
    local_address: SocketAddr,
    peer: SocketAddr,
    scheme: &'static str,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let compiled = shared.state.load_full();
    let Some(listener) = compiled.listeners.get(&local_address) else {
        return local(StatusCode::NOT_FOUND, "no listener\n");
    };
    let host = request_host(&request).unwrap_or_default();
    let Some(route) = find_route(listener, &host, &request) else {
        shared.metrics.request(&listener.name, "", 404, started.elapsed());
        return local(StatusCode::NOT_FOUND, "no route for this host and path\n");
    };
    let response = match &route.action {
        CompiledAction::Redirect(redirect) => {
            redirect_response(redirect, &request, &host, scheme, local_address.port())
        }
        CompiledAction::Respond { status, body } => local(*status, body.clone()),
        CompiledAction::Forward { pools, total_weight } => match pick_pool(pools, *total_weight) {
            None => local(StatusCode::INTERNAL_SERVER_ERROR, "the route's backend is not valid\n"),
            Some(pool) => forward(shared, route, pool, request, peer, scheme).await,
        },
    };
    let mut response = response;
    for filter in &route.filters {
        if let Filter::ResponseHeaders(edits) = filter {
            edit_headers(response.headers_mut(), edits);
        }
    }
    shared.metrics.request(&listener.name, &route.name, response.status().as_u16(), started.elapsed());
    response
}

fn pick_pool(pools: &[(Option<std::sync::Arc<CompiledPool>>, u32)], total: u32) -> Option<&CompiledPool> {
    if total == 0 {
        return None;
    }
    let mut ticket = if pools.len() == 1 { 0 } else { rand::random_range(0..total) };
    for (pool, weight) in pools {
        if ticket < *weight {
            return pool.as_deref();
        }
        ticket -= weight;
    }
    None
}

fn redirect_response(
    redirect: &Redirect,
    request: &Request<Incoming>,
    host: &str,
    scheme: &str,
    port: u16,
) -> Response<ProxyBody> {
    let new_scheme = redirect.scheme.as_deref().unwrap_or(scheme);
    let new_host = redirect.hostname.as_deref().unwrap_or(host);
    // Gateway API: with no port given, a scheme change uses that scheme's well-known port; else the listener's.
    let new_port = redirect.port.unwrap_or(if redirect.scheme.is_some() && new_scheme != scheme {
        if new_scheme == "https" { 443 } else { 80 }
    } else {
        port
    });
    let default_port = if new_scheme == "https" { 443 } else { 80 };
    let path = rewrite_path(request.uri().path(), redirect.path.as_ref());
    let mut location = format!("{new_scheme}://{new_host}");
    if new_port != default_port {
        location.push_str(&format!(":{new_port}"));
    }
    location.push_str(&path);
    if let Some(query) = request.uri().query() {
        location.push('?');
        location.push_str(query);
    }
    let status = StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::FOUND);
    let mut response = local(status, "");
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

fn rewrite_path(path: &str, rewrite: Option<&PathRewrite>) -> String {
    match rewrite {
        None => path.to_string(),
        Some(PathRewrite::Full(full)) => full.clone(),
        Some(PathRewrite::Prefix { matched, replacement }) => {
            let matched = matched.trim_end_matches('/');
            let rest = path.get(matched.len()..).unwrap_or("");
            let replacement = replacement.trim_end_matches('/');
            let joined = format!("{replacement}{rest}");
            if joined.is_empty() {
                "/".into()
            } else if joined.starts_with('/') {
                joined
            } else {
                format!("/{joined}")
            }
        }
    }
}

fn edit_headers(headers: &mut http::HeaderMap, edits: &HeaderEdits) {
    for (name, value) in &edits.set {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.insert(name, value);
        }
    }
    for (name, value) in &edits.add {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.append(name, value);
        }
    }
    for name in &edits.remove {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
}

async fn forward(
    shared: &Shared,
    route: &CompiledRoute,
    pool: &CompiledPool,
    request: Request<Incoming>,
    peer: SocketAddr,
    scheme: &'static str,
) -> Response<ProxyBody> {
    if pool.endpoints.is_empty() {
        return local(StatusCode::SERVICE_UNAVAILABLE, "no endpoint available for this route\n");
    }
    let index = pool.next.fetch_add(1, Ordering::Relaxed) % pool.endpoints.len();
    let endpoint = pool.endpoints[index];

    let (mut parts, body) = request.into_parts();
    // HTTP/2 requests carry the host in :authority only; HTTP/1.1 backends need it as Host.
    if !parts.headers.contains_key(HOST)
        && let Some(value) = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(HOST, value);
    }
    let mut path = parts.uri.path().to_string();
    for filter in &route.filters {
        match filter {
            Filter::RequestHeaders(edits) => edit_headers(&mut parts.headers, edits),
            Filter::UrlRewrite(rewrite) => {
                if let Some(hostname) = rewrite.hostname.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
                    parts.headers.insert(HOST, hostname);
                }
                path = rewrite_path(&path, rewrite.path.as_ref());
            }
            Filter::ResponseHeaders(_) => {}
        }
    }
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    let forwarded_for = match parts.headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        parts.headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    parts.headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));

    let upstream_scheme = if pool.tls_client.is_some() { "https" } else { "http" };
    let path_and_query = match parts.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let Ok(uri) = format!("{upstream_scheme}://{endpoint}{path_and_query}").parse::<Uri>() else {
        return local(StatusCode::BAD_REQUEST, "bad request path\n");
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    let client = pool.tls_client.as_ref().unwrap_or(&shared.plain_client);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            for name in HOP_BY_HOP {
                parts.headers.remove(name);
            }
            Response::from_parts(parts, body.boxed())
        }
        Err(error) => {
            let kind = if error.is_connect() { "connect" } else { "request" };
            shared.metrics.upstream_error(&pool.name, kind);
            tracing::warn!(pool = %pool.name, %endpoint, error = %error_chain(&error), "upstream request failed");
            local(StatusCode::BAD_GATEWAY, "upstream unavailable\n")
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrites_keep_the_rest_of_the_path() {
        let rewrite = PathRewrite::Prefix { matched: "/prefix/one".into(), replacement: "/one".into() };
        assert_eq!(rewrite_path("/prefix/one/two", Some(&rewrite)), "/one/two");
        let to_root = PathRewrite::Prefix { matched: "/strip".into(), replacement: "/".into() };
        assert_eq!(rewrite_path("/strip/a", Some(&to_root)), "/a");
        assert_eq!(rewrite_path("/strip", Some(&to_root)), "/");
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(query_value(Some("a=1&animal=wh%61le&x"), "animal").as_deref(), Some("whale"));
        assert_eq!(query_value(Some("x"), "x").as_deref(), Some(""));
        assert_eq!(query_value(None, "x"), None);
    }
}
