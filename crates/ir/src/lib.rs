//! Portico's intermediate representation: what the data plane must do, with no trace of the Kubernetes
//! resources it came from (other than names for logs and metrics).
//!
//! The translator produces an [`Ir`]; runtimes (proxy, DNS, ...) compile it into their own fast structures
//! and take it by atomic swap. The IR is plain data so it can be printed (`portico translate`), compared in
//! golden tests and served on the admin API. Private keys are wrapped in [`SecretPem`], which never prints.

pub use portico_balance::BalanceConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The whole data-plane configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ir {
    /// Listening sockets, ordered by address and port.
    pub listeners: Vec<Listener>,
    /// Backend pools by name, referred to by routes.
    pub pools: BTreeMap<String, Pool>,
    /// Certificates by name (`namespace/secret`), referred to by listeners.
    pub certificates: BTreeMap<String, Certificate>,
    /// DNS records to serve and to publish; empty (and not printed) when DNS is not configured.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl Ir {
    /// The listener bound to an address and port.
    pub fn listener(&self, address: SocketAddr) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.address == address.ip() && l.port == address.port())
    }
}

/// Application protocol of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// Plain HTTP/1.1 (and HTTP/2 with prior knowledge).
    Http,
    /// TLS terminated here, then HTTP/1.1 or HTTP/2 by ALPN; may also pass some server names through.
    Https,
    /// TLS routed by server name only (TLSRoute): passed through, or terminated and forwarded as TCP.
    Tls,
}

impl Protocol {
    /// Whether clients speak TLS on this socket (HTTPS and TLS listeners share sockets).
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }
}

/// One address:port that Portico listens on, with its virtual hosts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// `address:port`, used in logs and metrics.
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Certificates by SNI; present for HTTPS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<SniCertificate>,
    /// Virtual hosts, most specific hostname first; `*` matches any host.
    pub virtual_hosts: Vec<VirtualHost>,
    /// TLS routes by server name, most specific first; consulted before HTTP on TLS sockets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_routes: Vec<TlsRoute>,
}

/// A TLS connection route, chosen by the ClientHello's server name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRoute {
    /// Where the route came from, e.g. `tlsroute/dev/db/rule/0`.
    pub name: String,
    /// Exact name, `*.suffix`, or `*`.
    pub hostname: String,
    /// `true`: the bytes go to the backend untouched (it presents its own certificate); `false`: TLS is
    /// terminated here and the plaintext stream is forwarded over TCP.
    pub passthrough: bool,
    pub backends: Vec<WeightedPool>,
}

/// Which certificate to present for which server names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SniCertificate {
    /// Server name (exact, or `*.suffix`); `None` for any name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Key into [`Ir::certificates`].
    pub certificate: String,
}

/// The routes of one hostname on a listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualHost {
    /// Exact name, `*.suffix` wildcard, or `*` for any.
    pub hostname: String,
    /// Routes in precedence order: the first that matches wins.
    pub routes: Vec<Route>,
}

/// A request match and what to do with matching requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Where the route came from, e.g. `httproute/dev/app/rule/0/match/0`.
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    /// Filters applied to the request before the action, and to the response after it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    pub action: Action,
    /// Time limits; none when empty.
    #[serde(default, skip_serializing_if = "Timeouts::is_empty")]
    pub timeouts: Timeouts,
    /// Retries of requests without a body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Answer errors the gRPC way (HTTP 200 with `grpc-status`), for GRPCRoute rules.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grpc: bool,
}

impl Route {
    /// A route with no filters, time limits or retries.
    pub fn new(name: String, matcher: RouteMatch, action: Action) -> Self {
        Route { name, matcher, filters: Vec::new(), action, timeouts: Timeouts::default(), retry: None, grpc: false }
    }
}

/// Time limits of a route, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// From request to the end of the response headers, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_ms: Option<u64>,
    /// For each attempt to a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request_ms: Option<u64>,
}

impl Timeouts {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        self.request_ms.is_none() && self.backend_request_ms.is_none()
    }
}

/// Retry policy: on connection errors and on the listed status codes, up to `attempts` more tries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<u16>,
    pub backoff_ms: u64,
}

/// Conditions a request must meet; all of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    pub path: PathMatch,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// How the request path must look.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    /// The whole path equals this.
    Exact(String),
    /// The path starts with these path segments (`/a` matches `/a` and `/a/b`, not `/ab`).
    Prefix(String),
    /// The whole path matches this regular expression.
    Regex(String),
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch::Prefix("/".into())
    }
}

/// A header or query parameter condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueMatch {
    pub name: String,
    #[serde(flatten)]
    pub value: StringMatch,
}

/// Exact or regular-expression string match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    Exact(String),
    Regex(String),
}

/// Request or response transformation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Filter {
    RequestHeaders(HeaderEdits),
    ResponseHeaders(HeaderEdits),
    UrlRewrite(UrlRewrite),
    /// Send a copy of the request (without its body) to another pool and ignore the answer.
    Mirror(Mirror),
    /// Answer CORS preflights and add CORS headers to responses for allowed origins.
    Cors(Cors),
}

/// A request mirror.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    /// Key into [`Ir::pools`]; `None` when the reference is invalid (nothing is mirrored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Share of requests mirrored, in millionths (1,000,000 = all).
    pub per_million: u32,
}

/// CORS settings (Gateway API `HTTPCORSFilter`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// Origins (`https://a.example`, `https://*.example`, or `*`).
    pub allow_origins: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Seconds a preflight answer may be cached.
    pub max_age: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_credentials: bool,
}

/// Header edits: set replaces, add appends, remove deletes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// How the path is changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathRewrite {
    /// Replace the whole path.
    Full(String),
    /// Replace the part the route's prefix matched (the route's match must be a prefix).
    Prefix { matched: String, replacement: String },
}

/// Host and path rewrite before forwarding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
}

/// What happens to a matching request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// Proxy to one of the pools, chosen by weight.
    Forward(Vec<WeightedPool>),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly (used when a route's backends are all invalid: 500, as the Gateway API requires).
    Respond { status: u16, body: String },
}

/// A pool and its share of the traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedPool {
    /// Key into [`Ir::pools`]; `None` when the backend reference is invalid (requests to it get 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    pub weight: u32,
}

/// A redirect answer; fields left `None` keep the request's value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    pub status: u16,
}

/// A set of endpoints that serve the same thing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
    /// TLS to the endpoints (re-encryption); plain HTTP when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// Speak HTTP/2 to the endpoints (h2c, or h2 over TLS): from the Service port's `appProtocol`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http2: bool,
    /// Algorithm, persistence and health checking (round robin, nothing else, by default).
    #[serde(default, skip_serializing_if = "BalanceConfig::is_default")]
    pub balance: BalanceConfig,
}

/// How to speak TLS to a pool's endpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTls {
    /// Server name sent by SNI and verified in the certificate; the endpoint's IP when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM of the CAs the endpoint's certificate must chain to; the system's CAs when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Names the certificate must carry instead of `server_name` (BackendTLSPolicy `subjectAltNames`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// A certificate chain and its private key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    /// Leaf first, then intermediates.
    #[serde(serialize_with = "summarise_pem")]
    pub chain_pem: String,
    pub key_pem: SecretPem,
}

fn summarise_pem<S: serde::Serializer>(pem: &str, serializer: S) -> Result<S::Ok, S::Error> {
    let blocks = pem.matches("-----BEGIN CERTIFICATE-----").count();
    serializer.serialize_str(&format!("<{blocks} certificate(s), {} bytes of PEM>", pem.len()))
}

/// A private key in PEM. It prints as `<redacted>` in every form (Debug, Display, Serialize), so it cannot
/// reach logs, the admin API or config dumps by accident; [`SecretPem::expose`] is the only way in.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct SecretPem(String);

impl SecretPem {
    /// Wraps a PEM key.
    pub fn new(pem: String) -> Self {
        SecretPem(pem)
    }

    /// The key itself, for the TLS stack only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for SecretPem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

/// What Portico's DNS does with the hostnames it serves: the records its authoritative server answers, and the
/// records the external-dns compatible sync publishes into another DNS server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dns {
    /// Records answered authoritatively (names inside the configured zones), sorted by name, type and
    /// resource. Several records of one name and type (from several resources) are served as one RRset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<DnsRecord>,
    /// Records to publish into the corporate DNS (external-dns's endpoints), sorted likewise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<DnsRecord>,
}

impl Dns {
    /// Whether there is nothing to serve or publish.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.publish.is_empty()
    }
}

/// One DNS record set wanted by one resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsRecord {
    /// Lower-case name without trailing dot; `*.suffix` for a wildcard.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: DnsRecordType,
    /// Addresses (A/AAAA) or one canonical name without trailing dot (CNAME), sorted.
    pub targets: Vec<String>,
    /// Seconds.
    pub ttl: u32,
    /// The object it comes from as external-dns names it: `httproute/NAMESPACE/NAME`, `ingress/NAMESPACE/NAME`,
    /// `gateway/NAMESPACE/NAME`, ...
    pub resource: String,
}

/// The record types Portico serves and publishes for hostnames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DnsRecordType {
    A,
    Aaaa,
    Cname,
}

impl DnsRecordType {
    /// The type as DNS writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            DnsRecordType::A => "A",
            DnsRecordType::Aaaa => "AAAA",
            DnsRecordType::Cname => "CNAME",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_keys_never_print() {
        let cert = Certificate {
            chain_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            key_pem: SecretPem::new("-----BEGIN PRIVATE KEY-----\nSECRETKEY\n-----END PRIVATE KEY-----\n".into()),
        };
        let json = serde_json::to_string(&cert).expect("serialises");
        let debug = format!("{cert:?}");
        for shown in [json, debug] {
            assert!(!shown.contains("SECRETKEY"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }
}
