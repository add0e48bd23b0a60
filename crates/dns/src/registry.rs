//! external-dns's TXT registry: which TXT record says who owns a record, and what it says.
//!
//! Names: the record's name is split at its first dot; the first label gets the prefix and suffix (in which
//! `%{record_type}` becomes the lower-case type), or `<type>-` in front when neither contains the template.
//! With `txt-prefix = region01-aclab-vks-01-%{record_type}.` the owner of the CNAME `application01.aclab.uk` is
//! the TXT record `region01-aclab-vks-01-cname.application01.aclab.uk`. Values:
//! `heritage=external-dns,external-dns/owner=OWNER,external-dns/resource=KIND/NS/NAME` (labels in key order).

use std::collections::BTreeMap;

use crate::model::RecordKind;

const RECORD_TYPE_TEMPLATE: &str = "%{record_type}";
const HERITAGE: &str = "external-dns";

/// Label key of the owner id.
pub const OWNER_LABEL: &str = "owner";
/// Label key of the source object (`httproute/dev/NAME`).
pub const RESOURCE_LABEL: &str = "resource";

/// Maps records to their ownership TXT records and back, exactly as external-dns does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxtRegistry {
    owner: String,
    prefix: String,
    suffix: String,
    wildcard_replacement: String,
}

impl TxtRegistry {
    /// A registry for `owner` with external-dns's `--txt-prefix`, `--txt-suffix` (only one of them may be
    /// set) and `--txt-wildcard-replacement`.
    pub fn new(
        owner: impl Into<String>,
        prefix: impl Into<String>,
        suffix: impl Into<String>,
        wildcard_replacement: impl Into<String>,
    ) -> Result<Self, String> {
        let owner = owner.into();
        let prefix = prefix.into().to_ascii_lowercase();
        let suffix = suffix.into().to_ascii_lowercase();
        if owner.trim().is_empty() {
            return Err("the TXT registry owner id cannot be empty".into());
        }
        if owner.contains(',') || owner.contains('=') || owner.contains('"') {
            return Err(format!("the TXT registry owner id {owner:?} cannot contain ',', '=' or '\"'"));
        }
        if !prefix.is_empty() && !suffix.is_empty() {
            return Err("txt-prefix and txt-suffix cannot be combined (external-dns rejects it too)".into());
        }
        Ok(TxtRegistry {
            owner,
            prefix,
            suffix,
            wildcard_replacement: wildcard_replacement.into().to_ascii_lowercase(),
        })
    }

    /// The owner id this registry writes.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn type_in_affix(&self) -> bool {
        self.prefix.contains(RECORD_TYPE_TEMPLATE) || self.suffix.contains(RECORD_TYPE_TEMPLATE)
    }

    /// The name of the TXT record that holds the ownership of the `kind` record at `name` (current format).
    pub fn txt_name(&self, name: &str, kind: RecordKind) -> String {
        let rtype = kind.as_str().to_ascii_lowercase();
        let prefix = self.prefix.replace(RECORD_TYPE_TEMPLATE, &rtype);
        let suffix = self.suffix.replace(RECORD_TYPE_TEMPLATE, &rtype);
        let (mut first, rest) = split_first_label(name);
        if !self.wildcard_replacement.is_empty() && first == "*" {
            first = self.wildcard_replacement.clone();
        }
        if !self.type_in_affix() {
            first = format!("{rtype}-{first}");
        }
        join(prefix + &first + &suffix, rest)
    }

    /// The name of the type-less ownership TXT record that external-dns wrote before v0.12 (and that it still
    /// reads for every type but AAAA).
    pub fn legacy_txt_name(&self, name: &str) -> String {
        let prefix = self.prefix.replace(RECORD_TYPE_TEMPLATE, "");
        let suffix = self.suffix.replace(RECORD_TYPE_TEMPLATE, "");
        let (mut first, rest) = split_first_label(name);
        if !self.wildcard_replacement.is_empty() && first == "*" {
            first = self.wildcard_replacement.clone();
        }
        join(prefix + &first + &suffix, rest)
    }

    /// The TXT value that records this registry's ownership of a record made for `resource`, without the
    /// presentation quotes (the TXT record's character string).
    pub fn owner_value(&self, resource: &str) -> String {
        let mut labels = BTreeMap::new();
        labels.insert(OWNER_LABEL.to_string(), self.owner.clone());
        if !resource.is_empty() {
            labels.insert(RESOURCE_LABEL.to_string(), resource.to_string());
        }
        serialize_labels(&labels)
    }
}

fn split_first_label(name: &str) -> (String, Option<&str>) {
    match name.split_once('.') {
        Some((first, rest)) => (first.to_string(), Some(rest)),
        None => (name.to_string(), None),
    }
}

fn join(first: String, rest: Option<&str>) -> String {
    match rest {
        Some(rest) => format!("{first}.{rest}"),
        None => first,
    }
}

/// `heritage=external-dns,external-dns/KEY=VALUE,...` with keys in sorted order.
pub fn serialize_labels(labels: &BTreeMap<String, String>) -> String {
    let mut out = format!("heritage={HERITAGE}");
    for (key, value) in labels {
        out.push_str(&format!(",{HERITAGE}/{key}={value}"));
    }
    out
}

/// The labels of an ownership TXT value, or `None` when it is not one (no `heritage=external-dns`: an
/// unmanaged TXT record). Surrounding quotes are ignored, as external-dns ignores them.
pub fn parse_labels(value: &str) -> Option<BTreeMap<String, String>> {
    let text = value.trim().trim_matches('"');
    let mut labels = BTreeMap::new();
    let mut heritage = false;
    for token in text.split(',') {
        let mut parts = token.split('=');
        let (Some(key), Some(val), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if key == "heritage" {
            if val != HERITAGE {
                return None;
            }
            heritage = true;
            continue;
        }
        if let Some(label) = key.strip_prefix(&format!("{HERITAGE}/")) {
            labels.insert(label.to_string(), val.to_string());
        }
    }
    heritage.then_some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn article() -> TxtRegistry {
        TxtRegistry::new("region01-aclab-vks-01", "region01-aclab-vks-01-%{record_type}.", "", "").unwrap()
    }

    #[test]
    fn article_names_and_value() {
        let r = article();
        assert_eq!(
            r.txt_name("application01.aclab.uk", RecordKind::CNAME),
            "region01-aclab-vks-01-cname.application01.aclab.uk"
        );
        assert_eq!(
            r.txt_name("application01.aclab.uk", RecordKind::A),
            "region01-aclab-vks-01-a.application01.aclab.uk"
        );
        assert_eq!(r.legacy_txt_name("application01.aclab.uk"), "region01-aclab-vks-01-.application01.aclab.uk");
        assert_eq!(
            r.owner_value("httproute/dev/app01-aclab-nginx-httproute"),
            "heritage=external-dns,external-dns/owner=region01-aclab-vks-01,\
             external-dns/resource=httproute/dev/app01-aclab-nginx-httproute"
        );
    }

    #[test]
    fn default_type_prefix_suffix_and_wildcards() {
        let plain = TxtRegistry::new("o", "", "", "").unwrap();
        assert_eq!(plain.txt_name("app.example.com", RecordKind::CNAME), "cname-app.example.com");
        assert_eq!(plain.txt_name("app.example.com", RecordKind::AAAA), "aaaa-app.example.com");
        assert_eq!(plain.legacy_txt_name("app.example.com"), "app.example.com");
        let prefix = TxtRegistry::new("o", "txt.", "", "").unwrap();
        assert_eq!(prefix.txt_name("app.example.com", RecordKind::A), "txt.a-app.example.com");
        let suffix = TxtRegistry::new("o", "", "-%{record_type}-own", "").unwrap();
        assert_eq!(suffix.txt_name("app.example.com", RecordKind::A), "app-a-own.example.com");
        let wild = TxtRegistry::new("o", "", "", "wildcard").unwrap();
        assert_eq!(wild.txt_name("*.apps.example.com", RecordKind::A), "a-wildcard.apps.example.com");
        assert!(TxtRegistry::new("o", "p", "s", "").is_err());
        assert!(TxtRegistry::new("", "p", "", "").is_err());
    }

    #[test]
    fn parses_values_like_external_dns() {
        let labels = parse_labels(
            "\"heritage=external-dns,external-dns/owner=region01-aclab-vks-01,external-dns/resource=httproute/dev/x\"",
        )
        .unwrap();
        assert_eq!(labels["owner"], "region01-aclab-vks-01");
        assert_eq!(labels["resource"], "httproute/dev/x");
        assert!(parse_labels("v=spf1 -all").is_none());
        assert!(parse_labels("heritage=someone-else,external-dns/owner=x").is_none());
        let round = article().owner_value("ingress/dev/a");
        assert_eq!(parse_labels(&round).unwrap()["resource"], "ingress/dev/a");
    }
}
