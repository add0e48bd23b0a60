//! Portico's own configuration file (`--config-file portico.yaml`): the settings that do not come from
//! Kubernetes resources. Today that is DNS: the authoritative server and the external-dns compatible sync.
//! See `examples/article/portico.yaml` for the article's values and the README for every field.
//!
//! Secrets are never in this file: the TSIG key is read from `secretFile` (a base64 secret, or a BIND `key`
//! statement as `tsig-keygen` writes it), and only its name and algorithm ever appear in logs, errors,
//! `/api/status` or `/api/config`.

use anyhow::{Context as _, bail};
use portico_dns::{Policy, RecordKind, RetryPolicy, SyncConfig, TsigAlg, TsigKey, ZoneConfig};
use portico_translate::{DEFAULT_DNS_TTL, DnsOptions, TranslateOptions};
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    /// Authoritative DNS and DNS sync; both off when absent.
    #[serde(default)]
    pub dns: Option<DnsSection>,
    /// The file's directory: relative paths in it (`secretFile`) are taken from there.
    #[serde(skip)]
    base_dir: PathBuf,
}

/// `dns:` of the config file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsSection {
    /// Addresses the DNS server listens on (UDP and TCP), e.g. `["127.0.0.53:53"]`.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Zones served authoritatively; the one delegated to Portico first (it gives the canonical names).
    #[serde(default)]
    pub zones: Vec<String>,
    /// Names of Portico's DNS servers, written as every zone's apex NS records (the delegation's targets).
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// SOA mailbox (`hostmaster.aclab.uk`); `hostmaster.<zone>` when empty.
    #[serde(default)]
    pub hostmaster: String,
    /// TTL of served records and of published records without a `ttl` annotation (default 30).
    #[serde(default)]
    pub ttl: Option<u32>,
    /// The sync to the corporate DNS; off when absent.
    #[serde(default)]
    pub sync: Option<SyncSection>,
}

/// `dns.sync:` of the config file, named after external-dns's flags.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncSection {
    /// `host:port` or `host` (port 53) of the server taking updates (`--rfc2136-host`, `--rfc2136-port`).
    pub server: String,
    /// `--rfc2136-zone`.
    pub zone: String,
    /// `--txt-owner-id`.
    pub owner: String,
    /// `--txt-prefix`.
    #[serde(default)]
    pub txt_prefix: String,
    /// `--txt-suffix`.
    #[serde(default)]
    pub txt_suffix: String,
    /// `--txt-wildcard-replacement`.
    #[serde(default)]
    pub txt_wildcard_replacement: String,
    /// `sync` (default), `upsert-only` or `create-only`.
    #[serde(default)]
    pub policy: Option<String>,
    /// How often to sync besides on every change (`30s`, `1m`; default 1m as external-dns).
    #[serde(default)]
    pub interval: Option<String>,
    /// `--exclude-domains`: names never touched (the zone delegated to Portico).
    #[serde(default)]
    pub exclude_domains: Vec<String>,
    /// `--managed-record-types` (default A, AAAA, CNAME).
    #[serde(default)]
    pub managed_record_types: Vec<String>,
    /// `--rfc2136-min-ttl`, seconds.
    #[serde(default)]
    pub min_ttl: u32,
    /// `--rfc2136-batch-change-size` (default 50).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Time allowed for one exchange with the server (default 5s).
    #[serde(default)]
    pub timeout: Option<String>,
    /// What aliases point at without a `target` annotation: `cname` (default: the canonical in-zone name)
    /// or `address` (A/AAAA to the VIP).
    #[serde(default)]
    pub target: Option<String>,
    /// The TSIG key; requests are sent unsigned when absent (not recommended).
    #[serde(default)]
    pub tsig: Option<TsigSection>,
}

/// `dns.sync.tsig:`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TsigSection {
    /// Key name as the server knows it; taken from the key file when it is a BIND `key` statement.
    #[serde(default)]
    pub name: Option<String>,
    /// `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// File holding the secret: base64, or a BIND `key "name" { algorithm ...; secret "..."; };` statement.
    pub secret_file: PathBuf,
}

/// The DNS settings, checked and ready for the runtime.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub listen: Vec<SocketAddr>,
    pub zones: Vec<ZoneConfig>,
    pub ttl: u32,
    pub sync: Option<SyncSettings>,
}

/// The sync's settings, checked; the key is loaded (its Debug form is redacted).
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub config: SyncConfig,
    pub key: Option<TsigKey>,
    pub interval: Duration,
}

impl ConfigFile {
    /// Reads and checks the file; an absent path gives the defaults (no DNS).
    pub fn load(path: Option<&Path>) -> anyhow::Result<ConfigFile> {
        let Some(path) = path else {
            return Ok(ConfigFile::default());
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read the config file {}", path.display()))?;
        let mut file: ConfigFile =
            serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        file.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        // Check everything now, so that a bad file stops `portico run` at start with the reason.
        file.dns_config().with_context(|| format!("config file {}", path.display()))?;
        Ok(file)
    }

    /// The translation's settings: `base` (from the flags) with the DNS zones, TTL and publishing of this file.
    pub fn translate_options(&self, base: TranslateOptions) -> TranslateOptions {
        let Some(dns) = &self.dns else {
            return base;
        };
        TranslateOptions {
            dns: DnsOptions {
                zones: dns.zones.clone(),
                ttl: dns.ttl.unwrap_or(DEFAULT_DNS_TTL),
                publish: dns.sync.is_some(),
                publish_addresses: dns.sync.as_ref().and_then(|s| s.target.as_deref()) == Some("address"),
            },
            ..base
        }
    }

    /// The DNS settings, checked (TSIG key read from its file), or `None` when DNS is not configured.
    pub fn dns_config(&self) -> anyhow::Result<Option<DnsConfig>> {
        let Some(dns) = &self.dns else {
            return Ok(None);
        };
        let ttl = dns.ttl.unwrap_or(DEFAULT_DNS_TTL);
        if ttl == 0 {
            bail!("dns.ttl: must be at least 1 second");
        }
        let mut listen = Vec::new();
        for (i, text) in dns.listen.iter().enumerate() {
            listen.push(text.parse::<SocketAddr>().map_err(|_| {
                anyhow::anyhow!("dns.listen[{i}]: {text:?} is not an address such as 127.0.0.53:53 or [::1]:53")
            })?);
        }
        if !dns.zones.is_empty() && listen.is_empty() {
            bail!("dns.listen: the DNS server serves zones {:?} but has no listen address", dns.zones);
        }
        if !dns.zones.is_empty() && dns.nameservers.is_empty() {
            bail!("dns.nameservers: at least one name server name is needed for the zones' apex NS records");
        }
        let zones = dns
            .zones
            .iter()
            .map(|origin| {
                let mut zone = ZoneConfig::new(origin.clone(), dns.nameservers.clone());
                zone.ttl = ttl;
                zone.hostmaster = dns.hostmaster.clone();
                zone
            })
            .collect();
        let sync = dns.sync.as_ref().map(|s| sync_settings(s, ttl, &self.base_dir)).transpose().context("dns.sync")?;
        Ok(Some(DnsConfig { listen, zones, ttl, sync }))
    }
}

impl crate::SourceArgs {
    /// The translation's settings: the flags, plus the DNS settings of `--config-file`.
    pub(crate) fn options(&self) -> anyhow::Result<TranslateOptions> {
        Ok(ConfigFile::load(self.config_file.as_deref())?.translate_options(self.translate.options()))
    }
}

fn sync_settings(section: &SyncSection, ttl: u32, base_dir: &Path) -> anyhow::Result<SyncSettings> {
    let server = resolve_server(&section.server)?;
    let mut config = SyncConfig::new(server, section.zone.clone(), section.owner.clone());
    if section.owner.trim().is_empty() {
        bail!("owner: the TXT registry owner id is required (external-dns's --txt-owner-id)");
    }
    config.txt_prefix = section.txt_prefix.clone();
    config.txt_suffix = section.txt_suffix.clone();
    config.txt_wildcard_replacement = section.txt_wildcard_replacement.clone();
    if let Some(policy) = &section.policy {
        config.policy = policy.parse::<Policy>().map_err(|e| anyhow::anyhow!("policy: {e}"))?;
    }
    config.exclude_domains = section.exclude_domains.clone();
    if !section.managed_record_types.is_empty() {
        config.managed_kinds = section
            .managed_record_types
            .iter()
            .map(|k| k.parse::<RecordKind>().map_err(|e| anyhow::anyhow!("managedRecordTypes: {e}")))
            .collect::<anyhow::Result<_>>()?;
    }
    config.default_ttl = ttl;
    config.min_ttl = section.min_ttl;
    if let Some(size) = section.batch_size {
        config.batch_size = size;
    }
    if let Some(timeout) = &section.timeout {
        config.timeout = parse_duration(timeout).context("timeout")?;
    }
    config.retry = RetryPolicy::default();
    let interval = match &section.interval {
        Some(text) => parse_duration(text).context("interval")?,
        None => Duration::from_secs(60),
    };
    if let Some(other) = section.target.as_deref().filter(|t| !matches!(*t, "cname" | "address")) {
        bail!("target: {other:?} is neither \"cname\" nor \"address\"");
    }
    let key = section.tsig.as_ref().map(|t| load_key(t, base_dir)).transpose().context("tsig")?;
    // The same checks the syncer makes (prefix and suffix together, batch size, ...), now rather than later.
    portico_dns::Syncer::new(config.clone(), std::sync::Arc::new(portico_dns::Unsigned))?;
    Ok(SyncSettings { config, key, interval })
}

/// `host:port`, `host` (port 53), `ip`, `ip:port` or `[v6]:port`.
fn resolve_server(text: &str) -> anyhow::Result<SocketAddr> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    let with_port = if text.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        text.to_string()
    } else {
        format!("{text}:53")
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("server: cannot resolve {text:?}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("server: {text:?} has no address"))
}

/// Reads the TSIG key file. Errors name the file and the key, never the secret.
fn load_key(section: &TsigSection, base_dir: &Path) -> anyhow::Result<TsigKey> {
    let path = &base_dir.join(&section.secret_file);
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("secretFile: cannot read the TSIG key file {}", path.display()))?;
    // Comment lines (`#`, `//`, `;`) are allowed above the key.
    let text: String = text
        .lines()
        .filter(|l| !["#", "//", ";"].iter().any(|c| l.trim_start().starts_with(c)))
        .collect::<Vec<_>>()
        .join("\n");
    let statement = BindKey::parse(&text);
    let name = section
        .name
        .clone()
        .or_else(|| statement.as_ref().and_then(|k| k.name.clone()))
        .ok_or_else(|| anyhow::anyhow!("name: the TSIG key's name is required (the key file does not name it)"))?;
    let algorithm = section
        .algorithm
        .clone()
        .or_else(|| statement.as_ref().and_then(|k| k.algorithm.clone()))
        .unwrap_or_else(|| "hmac-sha256".to_string());
    let algorithm = algorithm.parse::<TsigAlg>().map_err(|e| anyhow::anyhow!("algorithm: {e}"))?;
    let secret = match &statement {
        Some(key) => key.secret.clone().ok_or_else(|| {
            anyhow::anyhow!("secretFile {}: the key statement has no `secret \"...\";`", path.display())
        })?,
        None => text.trim().to_string(),
    };
    TsigKey::from_base64(name, algorithm, &secret).map_err(|e| anyhow::anyhow!("secretFile {}: {e}", path.display()))
}

/// The parts of a BIND `key "name" { algorithm hmac-sha256; secret "..."; };` statement.
struct BindKey {
    name: Option<String>,
    algorithm: Option<String>,
    secret: Option<String>,
}

impl BindKey {
    fn parse(text: &str) -> Option<BindKey> {
        let body = text.trim_start();
        let rest = body.strip_prefix("key")?;
        let (head, inner) = rest.split_once('{')?;
        let name = head.trim().trim_matches('"').trim_end_matches('.');
        let mut key = BindKey { name: (!name.is_empty()).then(|| name.to_string()), algorithm: None, secret: None };
        for statement in inner.split(';') {
            let statement = statement.trim();
            if let Some(value) = statement.strip_prefix("algorithm") {
                key.algorithm = Some(value.trim().trim_matches('"').to_string());
            } else if let Some(value) = statement.strip_prefix("secret") {
                key.secret = Some(value.trim().trim_matches('"').to_string());
            }
        }
        Some(key)
    }
}

/// `30s`, `5m`, `1h`, `1m30s`, `500ms` or a number of seconds.
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    let bad = || anyhow::anyhow!("{text:?} is not a duration such as 30s, 5m, 1h or 500ms");
    if let Ok(seconds) = t.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    if let Some(ms) = t.strip_suffix("ms") {
        return ms.parse::<u64>().map(Duration::from_millis).map_err(|_| bad());
    }
    let mut total = 0u64;
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = total.saturating_add(n.saturating_mul(match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        }));
    }
    if !digits.is_empty() || t.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "cG9ydGljby10ZXN0LWtleS1zaGEyNTYtMDEyMzQ1Njc4OQ==";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn the_article_example_loads_and_never_shows_the_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = write(
            dir.path(),
            "tsig.key",
            &format!("key \"portico-key\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{SECRET}\";\n}};\n"),
        );
        let config = write(
            dir.path(),
            "portico.yaml",
            &format!(
                "dns:\n  listen: [\"127.0.0.53:53\"]\n  zones: [avi.aclab.uk, aclab.uk]\n  nameservers: [avi-ns01.aclab.uk]\n\
                 \x20 sync:\n    server: 127.0.53.1\n    zone: aclab.uk\n    owner: region01-aclab-vks-01\n\
                 \x20   txtPrefix: \"region01-aclab-vks-01-%{{record_type}}.\"\n    interval: 30s\n\
                 \x20   excludeDomains: [avi.aclab.uk]\n    tsig:\n      secretFile: {}\n",
                key.display()
            ),
        );
        let file = ConfigFile::load(Some(&config)).expect("loads");
        let dns = file.dns_config().expect("valid").expect("dns on");
        let sync = dns.sync.expect("sync on");
        assert_eq!(sync.config.server, "127.0.53.1:53".parse().unwrap());
        assert_eq!(sync.interval, Duration::from_secs(30));
        let key = sync.key.expect("key");
        assert_eq!(key.name, "portico-key");
        assert_eq!(key.secret_base64(), SECRET);
        assert!(!format!("{key:?}").contains(SECRET));
        let options = file.translate_options(TranslateOptions::default());
        assert_eq!(options.dns.zones, vec!["avi.aclab.uk", "aclab.uk"]);
        assert!(options.dns.publish);
    }

    #[test]
    fn mistakes_are_named_without_the_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = write(dir.path(), "bad.key", "not-base64-but-secret!!");
        let config = write(
            dir.path(),
            "portico.yaml",
            &format!(
                "dns:\n  sync:\n    server: 127.0.53.1:53\n    zone: aclab.uk\n    owner: o\n    tsig:\n      name: k\n      secretFile: {}\n",
                key.display()
            ),
        );
        let error = format!("{:#}", ConfigFile::load(Some(&config)).unwrap_err());
        assert!(error.contains("bad.key") && error.contains("base64"), "{error}");
        assert!(!error.contains("not-base64-but-secret"), "{error}");

        let typo = write(dir.path(), "typo.yaml", "dns:\n  zone: [aclab.uk]\n");
        let error = format!("{:#}", ConfigFile::load(Some(&typo)).unwrap_err());
        assert!(error.contains("zone"), "{error}");
        let no_ns = write(dir.path(), "no-ns.yaml", "dns:\n  listen: [\"127.0.0.1:53\"]\n  zones: [a.example]\n");
        let error = format!("{:#}", ConfigFile::load(Some(&no_ns)).unwrap_err());
        assert!(error.contains("nameservers"), "{error}");
        let policy =
            write(dir.path(), "p.yaml", "dns:\n  sync: {server: 127.0.0.1, zone: a.example, owner: o, policy: all}\n");
        let error = format!("{:#}", ConfigFile::load(Some(&policy)).unwrap_err());
        assert!(error.contains("policy"), "{error}");
    }

    #[test]
    fn the_shipped_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/article/portico.yaml");
        let file = ConfigFile::load(Some(&path)).expect("examples/article/portico.yaml loads");
        let dns = file.dns_config().expect("valid").expect("dns on");
        assert_eq!(dns.listen, vec!["127.0.0.153:53".parse::<SocketAddr>().unwrap()]);
        assert_eq!(dns.zones.iter().map(|z| z.origin.as_str()).collect::<Vec<_>>(), ["avi.aclab.uk", "aclab.uk"]);
        let sync = dns.sync.expect("sync on");
        assert_eq!(sync.config.owner, "region01-aclab-vks-01");
        assert_eq!(sync.config.txt_prefix, "region01-aclab-vks-01-%{record_type}.");
        assert_eq!(sync.config.zone, "aclab.uk");
        assert_eq!(sync.config.exclude_domains, vec!["avi.aclab.uk"]);
        assert_eq!(sync.key.expect("key read from tsig.key next to it").name, "portico-key");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0m30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
    }
}
