//! The plain record model the control plane feeds to the DNS server and to the sync.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use hickory_proto::rr::Name;

use crate::error::RecordError;

/// Default TTL, in seconds, of the records Portico serves and publishes.
pub const DEFAULT_TTL: u32 = 30;

/// The record types Portico serves and publishes.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKind {
    /// IPv4 address.
    A,
    /// IPv6 address.
    AAAA,
    /// Alias to a canonical name.
    CNAME,
    /// Text.
    TXT,
}

impl RecordKind {
    /// Upper-case type name as DNS writes it (`A`, `AAAA`, `CNAME`, `TXT`).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::A => "A",
            RecordKind::AAAA => "AAAA",
            RecordKind::CNAME => "CNAME",
            RecordKind::TXT => "TXT",
        }
    }

    /// The hickory record type.
    pub fn record_type(self) -> hickory_proto::rr::RecordType {
        use hickory_proto::rr::RecordType;
        match self {
            RecordKind::A => RecordType::A,
            RecordKind::AAAA => RecordType::AAAA,
            RecordKind::CNAME => RecordType::CNAME,
            RecordKind::TXT => RecordType::TXT,
        }
    }

    /// The kind of a hickory record type, if Portico manages that type.
    pub fn from_record_type(rtype: hickory_proto::rr::RecordType) -> Option<Self> {
        use hickory_proto::rr::RecordType;
        match rtype {
            RecordType::A => Some(RecordKind::A),
            RecordType::AAAA => Some(RecordKind::AAAA),
            RecordType::CNAME => Some(RecordKind::CNAME),
            RecordType::TXT => Some(RecordKind::TXT),
            _ => None,
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RecordKind {
    type Err = RecordError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "A" => Ok(RecordKind::A),
            "AAAA" => Ok(RecordKind::AAAA),
            "CNAME" => Ok(RecordKind::CNAME),
            "TXT" => Ok(RecordKind::TXT),
            _ => Err(RecordError::UnsupportedKind(s.to_string())),
        }
    }
}

/// One record (an RRset: all targets of one name and type) that Portico wants to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRecord {
    /// Fully qualified name, lower-case, without the trailing dot (`application01.aclab.uk`, `*.apps.aclab.uk`).
    pub name: String,
    /// Record type.
    pub kind: RecordKind,
    /// Addresses (A/AAAA), one canonical name without trailing dot (CNAME), or text strings (TXT).
    pub targets: Vec<String>,
    /// TTL in seconds; 0 means the zone's or the sync's default.
    pub ttl: u32,
    /// The object it comes from, `KIND/NAMESPACE/NAME` in lower case (e.g.
    /// `httproute/dev/app01-aclab-nginx-httproute`); written into the TXT registry record.
    pub resource: String,
}

impl DesiredRecord {
    /// A record with the given name, kind, targets, TTL and resource.
    pub fn new(
        name: impl Into<String>,
        kind: RecordKind,
        targets: Vec<String>,
        ttl: u32,
        resource: impl Into<String>,
    ) -> Self {
        DesiredRecord { name: name.into(), kind, targets, ttl, resource: resource.into() }
    }

    /// The same record with its name and targets in canonical form (lower case, no trailing dot; addresses
    /// parsed and re-printed; sorted, duplicates removed), or why it is invalid.
    pub fn normalized(&self) -> Result<DesiredRecord, RecordError> {
        let name = normalize_name(&self.name)?;
        if self.targets.is_empty() {
            return Err(RecordError::NoTargets { name, kind: self.kind });
        }
        let mut targets = Vec::with_capacity(self.targets.len());
        for target in &self.targets {
            targets.push(normalize_target(&name, self.kind, target)?);
        }
        targets.sort();
        targets.dedup();
        if self.kind == RecordKind::CNAME && targets.len() > 1 {
            return Err(RecordError::MultipleCnameTargets { name, targets });
        }
        Ok(DesiredRecord { name, kind: self.kind, targets, ttl: self.ttl, resource: self.resource.clone() })
    }
}

impl fmt::Display for DesiredRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} {}", self.name, self.ttl, self.kind, display_targets(self.kind, &self.targets))
    }
}

/// Targets as a zone file would show them (CNAME with a trailing dot, TXT quoted).
pub(crate) fn display_targets(kind: RecordKind, targets: &[String]) -> String {
    targets
        .iter()
        .map(|t| match kind {
            RecordKind::CNAME => format!("{t}."),
            RecordKind::TXT => format!("\"{}\"", t.replace('\\', "\\\\").replace('"', "\\\"")),
            _ => t.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A zone that Portico's DNS server is authoritative for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// Zone apex, e.g. `avi.aclab.uk` (no trailing dot).
    pub origin: String,
    /// Names of the zone's name servers, written as the apex NS records (at least one).
    pub ns: Vec<String>,
    /// TTL of SOA and NS records and of records that give none (default 30 s).
    pub ttl: u32,
    /// Mailbox of the zone's administrator in SOA form (`hostmaster.avi.aclab.uk`); empty means
    /// `hostmaster.<origin>`.
    pub hostmaster: String,
    /// SOA refresh, seconds.
    pub refresh: u32,
    /// SOA retry, seconds.
    pub retry: u32,
    /// SOA expire, seconds.
    pub expire: u32,
    /// SOA minimum: how long resolvers cache a negative answer (RFC 2308); 0 means `ttl`.
    pub negative_ttl: u32,
}

impl ZoneConfig {
    /// A zone with the given origin and name servers and default timers (TTL 30 s).
    pub fn new(origin: impl Into<String>, ns: Vec<String>) -> Self {
        ZoneConfig {
            origin: origin.into(),
            ns,
            ttl: DEFAULT_TTL,
            hostmaster: String::new(),
            refresh: 3600,
            retry: 600,
            expire: 86400,
            negative_ttl: 0,
        }
    }
}

/// Lower-case, no trailing dot, checked as a DNS name.
pub(crate) fn normalize_name(name: &str) -> Result<String, RecordError> {
    let trimmed = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if trimmed.is_empty() {
        return Err(RecordError::InvalidName { name: name.to_string(), reason: "empty name".into() });
    }
    if let Some(pos) = trimmed.find('*')
        && (pos != 0 || !trimmed.starts_with("*.") || trimmed[1..].contains('*'))
    {
        return Err(RecordError::InvalidName {
            name: name.to_string(),
            reason: "a wildcard must be the whole first label (`*.example.com`)".into(),
        });
    }
    Name::from_ascii(format!("{trimmed}."))
        .map_err(|e| RecordError::InvalidName { name: name.to_string(), reason: e.to_string() })?;
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(RecordError::InvalidName { name: name.to_string(), reason: "empty label".into() });
        }
    }
    Ok(trimmed)
}

/// A fully qualified hickory name for a normalized name.
pub(crate) fn fqdn(name: &str) -> Name {
    // Names reaching here went through `normalize_name`, so this cannot fail; fall back to root defensively.
    Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).unwrap_or_else(|_| Name::root())
}

/// A name as Portico writes it: lower case, no trailing dot.
pub(crate) fn name_to_string(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

fn normalize_target(name: &str, kind: RecordKind, target: &str) -> Result<String, RecordError> {
    let bad = |reason: &str| RecordError::InvalidTarget {
        name: name.to_string(),
        kind,
        target: target.to_string(),
        reason: reason.to_string(),
    };
    match kind {
        RecordKind::A => {
            Ipv4Addr::from_str(target.trim()).map(|a| a.to_string()).map_err(|_| bad("not an IPv4 address"))
        }
        RecordKind::AAAA => {
            Ipv6Addr::from_str(target.trim()).map(|a| a.to_string()).map_err(|_| bad("not an IPv6 address"))
        }
        RecordKind::CNAME => {
            let t = normalize_name(target).map_err(|e| bad(&e.to_string()))?;
            if t.starts_with("*.") {
                return Err(bad("a CNAME target cannot be a wildcard"));
            }
            Ok(t)
        }
        RecordKind::TXT => Ok(target.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_names_and_targets() {
        let r = DesiredRecord::new(
            "Application01.ACLAB.uk.",
            RecordKind::CNAME,
            vec!["App01-Lab.avi.aclab.uk.".into()],
            30,
            "httproute/dev/x",
        )
        .normalized()
        .unwrap();
        assert_eq!(r.name, "application01.aclab.uk");
        assert_eq!(r.targets, vec!["app01-lab.avi.aclab.uk"]);
        let a = DesiredRecord::new(
            "a.x",
            RecordKind::A,
            vec!["10.0.0.2".into(), "10.0.0.1".into(), "10.0.0.2".into()],
            0,
            "",
        )
        .normalized()
        .unwrap();
        assert_eq!(a.targets, vec!["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn rejects_bad_records_with_the_reason() {
        let err = DesiredRecord::new("a.x", RecordKind::A, vec!["::1".into()], 0, "").normalized().unwrap_err();
        assert!(err.to_string().contains("not an IPv4 address"), "{err}");
        let err = DesiredRecord::new("a.*.x", RecordKind::A, vec!["1.2.3.4".into()], 0, "").normalized().unwrap_err();
        assert!(err.to_string().contains("wildcard"), "{err}");
        let err = DesiredRecord::new("a..x", RecordKind::A, vec!["1.2.3.4".into()], 0, "").normalized().unwrap_err();
        assert!(err.to_string().contains("a..x"), "{err}");
        let err = DesiredRecord::new("c.x", RecordKind::CNAME, vec!["a.x".into(), "b.x".into()], 0, "")
            .normalized()
            .unwrap_err();
        assert!(err.to_string().contains("one target"), "{err}");
        let err = DesiredRecord::new("c.x", RecordKind::A, vec![], 0, "").normalized().unwrap_err();
        assert!(err.to_string().contains("no targets"), "{err}");
        assert!(DesiredRecord::new("*.apps.x", RecordKind::A, vec!["1.2.3.4".into()], 0, "").normalized().is_ok());
    }

    #[test]
    fn kinds_parse_and_print() {
        assert_eq!("cname".parse::<RecordKind>().unwrap(), RecordKind::CNAME);
        assert_eq!(RecordKind::AAAA.to_string(), "AAAA");
        assert!("MX".parse::<RecordKind>().is_err());
    }
}
