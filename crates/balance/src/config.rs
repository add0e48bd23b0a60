//! A pool's load-balancing settings as plain data: what the translator writes into the IR and the proxy hands
//! to [`PoolState`](crate::PoolState). Everything serialises in camelCase with durations as Gateway API
//! duration strings (`10s`, `1m30s`, `500ms`), and fields left at their defaults are omitted, so golden files
//! stay short.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The cookie name used when persistence by cookie names none (the operator's `System-Persistence-Http-Cookie`).
pub const DEFAULT_PERSISTENCE_COOKIE: &str = "portico-session";

/// Settings of one pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BalanceConfig {
    /// How an endpoint is chosen for a request without (valid) persistence.
    #[serde(default, skip_serializing_if = "is_default")]
    pub algorithm: Algorithm,
    /// Keeps a client on one endpoint while it is healthy; takes precedence over the algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
    /// Active health checks; without them every endpoint counts as up (passive ejection aside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// Passive health: ejection after consecutive failed requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveHealth>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl BalanceConfig {
    /// Whether these are the defaults (round robin, no persistence, no health checks), for
    /// `skip_serializing_if` in the IR.
    pub fn is_default(&self) -> bool {
        *self == BalanceConfig::default()
    }

    /// Checks what the request path and the health checker will rely on (header and cookie names, paths,
    /// status ranges, counts and durations, CA bundles). The translator should call it and report the error
    /// on the resource; [`PoolState`](crate::PoolState) accepts any value and degrades safely (an invalid hash
    /// header falls back to the source address; an unusable health check fails its probes with the reason).
    pub fn validate(&self) -> Result<(), String> {
        if let Algorithm::ConsistentHash(key) = &self.algorithm {
            match key {
                HashKey::SourceIp => {}
                HashKey::Header(name) => {
                    http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("consistent hash: {name:?} is not a valid header name"))?;
                }
                HashKey::Cookie(name) => check_cookie_name(name).map_err(|e| format!("consistent hash: {e}"))?,
            }
        }
        if let Some(Persistence::Cookie { name, ttl }) = &self.persistence {
            check_cookie_name(name).map_err(|e| format!("persistence: {e}"))?;
            if ttl.is_some_and(|t| t.as_secs() == 0) {
                return Err("persistence: the cookie's ttl must be at least 1s".into());
            }
        }
        if let Some(health) = &self.health {
            health.validate().map_err(|e| format!("health check: {e}"))?;
        }
        if let Some(passive) = &self.passive {
            if passive.consecutive_errors == 0 {
                return Err("passive health: consecutiveErrors must be at least 1".into());
            }
            if passive.ejection.is_zero() {
                return Err("passive health: ejection must be longer than 0s".into());
            }
        }
        Ok(())
    }
}

/// How an endpoint is chosen. Every algorithm honours endpoint weights and skips unhealthy endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Algorithm {
    /// Each healthy endpoint in turn (weighted, interleaved).
    #[default]
    RoundRobin,
    /// The endpoint with the fewest requests in flight relative to its weight; ties rotate.
    LeastConnections,
    /// A uniformly (weighted) random healthy endpoint.
    Random,
    /// Two random healthy endpoints, the one with fewer requests in flight.
    PowerOfTwoChoices,
    /// Rendezvous (highest random weight) hashing of a request key: a key stays on its endpoint and moves only
    /// when that endpoint leaves or becomes unhealthy.
    ConsistentHash(HashKey),
}

/// What consistent hashing hashes. A request without the header or cookie is hashed on its source address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HashKey {
    /// The client's IP address (IPv4-mapped IPv6 addresses count as IPv4).
    SourceIp,
    /// The first value of this request header.
    Header(String),
    /// The value of this request cookie.
    Cookie(String),
}

/// Session persistence: a client keeps its endpoint while that endpoint is healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Persistence {
    /// A cookie names the endpoint (by a stable hash of `ip:port`, never the address itself). A request
    /// without a valid cookie, or whose endpoint is gone or unhealthy, is balanced by the algorithm and the
    /// response sets the cookie.
    Cookie {
        /// Cookie name.
        name: String,
        /// `Max-Age` of the cookie; a session cookie when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none", with = "duration_format::option")]
        ttl: Option<Duration>,
    },
    /// The client's IP address picks the endpoint by rendezvous hashing: nothing is stored, so it holds across
    /// restarts and across Portico instances.
    SourceIp,
}

/// Active health checking of every endpoint of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// What a probe does.
    pub kind: HealthKind,
    /// Time between the starts of two probes of an endpoint (default 10s).
    #[serde(default = "default_interval", with = "duration_format")]
    pub interval: Duration,
    /// How long a probe may take (default 4s).
    #[serde(default = "default_timeout", with = "duration_format")]
    pub timeout: Duration,
    /// Consecutive successes that bring a down endpoint back up (default 2).
    #[serde(default = "default_count")]
    pub rise: u32,
    /// Consecutive failures that take an up endpoint down (default 2).
    #[serde(default = "default_count")]
    pub fall: u32,
    /// Port to probe instead of the endpoint's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_timeout() -> Duration {
    Duration::from_secs(4)
}

fn default_count() -> u32 {
    2
}

impl HealthCheck {
    /// A check of this kind with the defaults: every 10s, 4s timeout, rise 2, fall 2, the endpoint's port.
    pub fn new(kind: HealthKind) -> Self {
        HealthCheck {
            kind,
            interval: default_interval(),
            timeout: default_timeout(),
            rise: default_count(),
            fall: default_count(),
            port: None,
        }
    }

    /// Checks counts, durations, the request's path and host, status ranges and the CA bundle.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval < Duration::from_millis(1) || self.timeout < Duration::from_millis(1) {
            return Err("interval and timeout must be at least 1ms".into());
        }
        if self.rise == 0 || self.fall == 0 {
            return Err("rise and fall must be at least 1".into());
        }
        if self.port == Some(0) {
            return Err("port 0 cannot be probed".into());
        }
        match &self.kind {
            HealthKind::Tcp => Ok(()),
            HealthKind::Tls(tls) => tls.validate(),
            HealthKind::Http(http) => http.validate(),
            HealthKind::Https(https) => {
                https.http.validate()?;
                https.tls.validate()
            }
        }
    }
}

/// What an active probe does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HealthKind {
    /// A TCP connection is accepted.
    Tcp,
    /// A TLS handshake completes.
    Tls(TlsProbe),
    /// An HTTP/1.1 request is answered with an expected status (and body text, if set).
    Http(HttpProbe),
    /// The same over TLS.
    Https(HttpsProbe),
}

/// Request method of an HTTP probe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ProbeMethod {
    /// `GET` (the default).
    #[default]
    Get,
    /// `HEAD`: the body is not sent, so `body` cannot be checked.
    Head,
}

/// An HTTP probe: `METHOD path HTTP/1.1` with `Host` and `Connection: close`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpProbe {
    /// Request method (default GET).
    #[serde(default, skip_serializing_if = "is_default")]
    pub method: ProbeMethod,
    /// Request path and query (default `/`).
    #[serde(default = "default_path")]
    pub path: String,
    /// `Host` header; the probed `ip:port` when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Status codes that count as healthy; 200-399 when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected: Vec<StatusRange>,
    /// Text the response body must contain (within its first 16 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

fn default_path() -> String {
    "/".into()
}

impl Default for HttpProbe {
    fn default() -> Self {
        HttpProbe { method: ProbeMethod::Get, path: default_path(), host: None, expected: Vec::new(), body: None }
    }
}

/// The statuses an HTTP probe accepts when none are listed.
pub const DEFAULT_EXPECTED: StatusRange = StatusRange { start: 200, end: 399 };

impl HttpProbe {
    /// A GET of this path expecting 200-399.
    pub fn get(path: &str) -> Self {
        HttpProbe { path: path.into(), ..HttpProbe::default() }
    }

    /// Whether a status counts as healthy.
    pub fn accepts(&self, status: u16) -> bool {
        if self.expected.is_empty() {
            DEFAULT_EXPECTED.contains(status)
        } else {
            self.expected.iter().any(|r| r.contains(status))
        }
    }

    fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') || !self.path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("path {:?} must start with / and hold no spaces or control characters", self.path));
        }
        if let Some(host) = &self.host
            && (host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(format!("host {host:?} is not a valid Host header"));
        }
        for range in &self.expected {
            range.validate()?;
        }
        if self.body.as_deref().is_some_and(str::is_empty) {
            return Err("the expected body text is empty".into());
        }
        if self.body.is_some() && self.method == ProbeMethod::Head {
            return Err("a HEAD probe has no body to check".into());
        }
        Ok(())
    }
}

/// TLS settings of a probe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsProbe {
    /// PEM CA bundle the endpoint's certificate must chain to. When `None` the certificate is not verified: the
    /// probe checks that the endpoint speaks TLS, as the load balancer's own HTTPS monitors do (a probe sends
    /// nothing secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Server name sent by SNI (and verified when `ca_pem` is set); the endpoint's IP when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl TlsProbe {
    fn validate(&self) -> Result<(), String> {
        if let Some(name) = &self.server_name
            && (name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b)))
        {
            return Err(format!("server name {name:?} is not a DNS name or IP address"));
        }
        if let Some(pem) = &self.ca_pem {
            #[cfg(feature = "runtime")]
            crate::check::client_config(Some(pem))?;
            #[cfg(not(feature = "runtime"))]
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err("the CA bundle holds no certificate".into());
            }
        }
        Ok(())
    }
}

/// HTTPS probe: an HTTP probe over TLS. Serialised flat (`path`, `expected`, ..., `caPem`, `serverName`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpsProbe {
    /// The request and what the response must be.
    #[serde(flatten)]
    pub http: HttpProbe,
    /// The TLS side.
    #[serde(flatten)]
    pub tls: TlsProbe,
}

/// An inclusive range of HTTP status codes, written `200-399` or `204`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StatusRange {
    /// First code of the range.
    pub start: u16,
    /// Last code of the range (inclusive).
    pub end: u16,
}

impl StatusRange {
    /// The codes `start..=end`.
    pub const fn new(start: u16, end: u16) -> Self {
        StatusRange { start, end }
    }

    /// Whether `code` is in the range.
    pub fn contains(self, code: u16) -> bool {
        (self.start..=self.end).contains(&code)
    }

    fn validate(self) -> Result<(), String> {
        if self.start < 100 || self.end > 599 || self.start > self.end {
            return Err(format!("status range {self} must lie within 100-599, lowest first"));
        }
        Ok(())
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end { write!(f, "{}", self.start) } else { write!(f, "{}-{}", self.start, self.end) }
    }
}

impl FromStr for StatusRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parse = |t: &str| t.trim().parse::<u16>().map_err(|_| format!("{text:?} is not a status code or range"));
        let range = match text.split_once('-') {
            Some((start, end)) => StatusRange::new(parse(start)?, parse(end)?),
            None => {
                let code = parse(text)?;
                StatusRange::new(code, code)
            }
        };
        range.validate()?;
        Ok(range)
    }
}

impl Serialize for StatusRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Code(u16),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Code(code) => {
                let range = StatusRange::new(code, code);
                range.validate().map_err(serde::de::Error::custom)?;
                Ok(range)
            }
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Passive health: an endpoint whose requests fail `consecutive_errors` times in a row (connection errors,
/// timeouts, 5xx answers) gets no new requests for `ejection`, then is tried again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PassiveHealth {
    /// Failures in a row that eject the endpoint (default 5).
    #[serde(default = "default_consecutive_errors")]
    pub consecutive_errors: u32,
    /// How long an ejected endpoint gets no new requests (default 30s).
    #[serde(default = "default_ejection", with = "duration_format")]
    pub ejection: Duration,
}

fn default_consecutive_errors() -> u32 {
    5
}

fn default_ejection() -> Duration {
    Duration::from_secs(30)
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth { consecutive_errors: default_consecutive_errors(), ejection: default_ejection() }
    }
}

/// RFC 6265 cookie-name (an RFC 9110 token).
fn check_cookie_name(name: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("{name:?} is not a valid cookie name"));
    }
    Ok(())
}

/// Durations as Gateway API (GEP-2257) strings: one to four `<integer><unit>` parts, units `h`, `m`, `s`, `ms`,
/// e.g. `10s`, `1m30s`, `500ms`. Serialised in the shortest such form, at millisecond precision.
pub mod duration_format {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes a duration as `1h2m3s4ms` (zero parts left out; `0s` for zero).
    pub fn format(duration: Duration) -> String {
        let mut ms = duration.as_millis();
        if ms == 0 {
            return "0s".into();
        }
        let mut out = String::new();
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)] {
            let count = ms / size;
            if count > 0 {
                out.push_str(&format!("{count}{unit}"));
                ms %= size;
            }
        }
        out
    }

    /// Reads `1h2m3s4ms`-style text.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let bad = || format!("{text:?} is not a duration such as 10s, 1m30s or 500ms");
        let bytes = text.as_bytes();
        if bytes.is_empty() {
            return Err(bad());
        }
        let mut total = Duration::ZERO;
        let mut i = 0;
        while i < bytes.len() {
            let digits = bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 || digits > 9 {
                return Err(bad());
            }
            let count: u64 = text[i..i + digits].parse().map_err(|_| bad())?;
            i += digits;
            let unit_len = bytes[i..].iter().take_while(|b| b.is_ascii_alphabetic()).count();
            let part = match &text[i..i + unit_len] {
                "h" => Duration::from_secs(count * 3600),
                "m" => Duration::from_secs(count * 60),
                "s" => Duration::from_secs(count),
                "ms" => Duration::from_millis(count),
                _ => return Err(bad()),
            };
            i += unit_len;
            total = total.checked_add(part).ok_or_else(bad)?;
        }
        Ok(total)
    }

    /// serde `serialize_with`.
    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*duration))
    }

    /// serde `deserialize_with`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    /// The same for `Option<Duration>`.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::Duration;

        /// serde `serialize_with`.
        pub fn serialize<S: Serializer>(duration: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
            match duration {
                Some(d) => serializer.serialize_some(&super::format(*d)),
                None => serializer.serialize_none(),
            }
        }

        /// serde `deserialize_with`.
        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
            match Option::<String>::deserialize(deserializer)? {
                Some(text) => super::parse(&text).map(Some).map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_in_gateway_api_form() {
        for (text, duration) in [
            ("10s", Duration::from_secs(10)),
            ("1m30s", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("1h1ms", Duration::from_millis(3_600_001)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(duration_format::parse(text), Ok(duration), "{text}");
            assert_eq!(duration_format::format(duration), text);
        }
        for bad in ["", "10", "s", "1.5s", "10x", "-1s", "1 s"] {
            assert!(duration_format::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn status_ranges_read_codes_and_ranges() {
        assert_eq!("200-399".parse(), Ok(StatusRange::new(200, 399)));
        assert_eq!("204".parse(), Ok(StatusRange::new(204, 204)));
        assert!("399-200".parse::<StatusRange>().is_err());
        assert!("700".parse::<StatusRange>().is_err());
        let ranges: Vec<StatusRange> = serde_json::from_str(r#"["200-299", 302]"#).expect("parses");
        assert_eq!(ranges, vec![StatusRange::new(200, 299), StatusRange::new(302, 302)]);
        assert_eq!(serde_json::to_string(&ranges).expect("serialises"), r#"["200-299","302"]"#);
    }

    #[test]
    fn config_serialises_compactly_in_camel_case() {
        assert_eq!(serde_json::to_string(&BalanceConfig::default()).expect("serialises"), "{}");
        let config = BalanceConfig {
            algorithm: Algorithm::ConsistentHash(HashKey::Header("x-user".into())),
            persistence: Some(Persistence::Cookie { name: "s".into(), ttl: Some(Duration::from_secs(3600)) }),
            health: Some(HealthCheck {
                port: Some(8080),
                ..HealthCheck::new(HealthKind::Https(HttpsProbe {
                    http: HttpProbe::get("/healthz"),
                    tls: TlsProbe { ca_pem: None, server_name: Some("app.example".into()) },
                }))
            }),
            passive: Some(PassiveHealth::default()),
        };
        let json = serde_json::to_value(&config).expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({
                "algorithm": {"consistentHash": {"header": "x-user"}},
                "persistence": {"cookie": {"name": "s", "ttl": "1h"}},
                "health": {
                    "kind": {"https": {"path": "/healthz", "serverName": "app.example"}},
                    "interval": "10s", "timeout": "4s", "rise": 2, "fall": 2, "port": 8080
                },
                "passive": {"consecutiveErrors": 5, "ejection": "30s"}
            })
        );
        let back: BalanceConfig = serde_json::from_value(json).expect("parses");
        assert_eq!(back, config);
        let minimal: BalanceConfig =
            serde_json::from_str(r#"{"algorithm":"leastConnections","health":{"kind":"tcp"}}"#).expect("parses");
        assert_eq!(minimal.algorithm, Algorithm::LeastConnections);
        assert_eq!(minimal.health, Some(HealthCheck::new(HealthKind::Tcp)));
    }

    #[test]
    fn validation_names_the_problem() {
        let mut config = BalanceConfig {
            algorithm: Algorithm::ConsistentHash(HashKey::Header("bad header".into())),
            ..BalanceConfig::default()
        };
        assert!(config.validate().is_err_and(|e| e.contains("bad header")));
        config.algorithm = Algorithm::RoundRobin;
        config.persistence = Some(Persistence::Cookie { name: "a;b".into(), ttl: None });
        assert!(config.validate().is_err_and(|e| e.contains("cookie name")));
        config.persistence = None;
        let probe = HttpProbe { path: "/x\r\nEvil: 1".into(), ..HttpProbe::default() };
        config.health = Some(HealthCheck::new(HealthKind::Http(probe)));
        assert!(config.validate().is_err_and(|e| e.contains("path")));
        config.health = Some(HealthCheck { rise: 0, ..HealthCheck::new(HealthKind::Tcp) });
        assert!(config.validate().is_err_and(|e| e.contains("rise")));
        config.health = Some(HealthCheck::new(HealthKind::Tls(TlsProbe {
            ca_pem: Some("not a certificate".into()),
            server_name: None,
        })));
        assert!(config.validate().is_err());
        config.health = None;
        config.passive = Some(PassiveHealth { consecutive_errors: 0, ..PassiveHealth::default() });
        assert!(config.validate().is_err());
        config.passive = Some(PassiveHealth::default());
        assert_eq!(config.validate(), Ok(()));
    }
}
