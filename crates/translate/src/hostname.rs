//! Hostname rules of the Gateway API: wildcard matching and listener/route intersection.

/// Whether `name` (exact or `*.suffix`) falls under `pattern` (exact or `*.suffix`). A wildcard covers one or
/// more labels in front of its suffix, never the suffix itself.
pub fn covers(pattern: &str, name: &str) -> bool {
    if pattern == name {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            let name = name.strip_prefix("*.").unwrap_or(name);
            name.len() > suffix.len()
                && name.ends_with(suffix)
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
        }
        None => false,
    }
}

/// The hostnames a route serves on a listener: the spec's intersection of the listener's hostname and the
/// route's hostnames, keeping the more specific of each matching pair. `None` means they do not intersect;
/// `["*"]` means any host.
pub fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let mut names: Vec<String> = match (listener, route.is_empty()) {
        (None, true) => return Some(vec!["*".to_string()]),
        (None, false) => route.to_vec(),
        (Some(l), true) => return Some(vec![l.to_string()]),
        (Some(l), false) => route
            .iter()
            .filter_map(|r| {
                if covers(l, r) {
                    Some(r.clone())
                } else if covers(r, l) {
                    Some(l.to_string())
                } else {
                    None
                }
            })
            .collect(),
    };
    // A name can come out twice, not always in a row (`*.com` and `*.example.com` both narrow to a
    // `*.example.com` listener): keep the first of each, or the virtual host gets the route twice.
    if names.len() > 1 {
        let mut seen = std::collections::HashSet::new();
        names.retain(|name| seen.insert(name.clone()));
    }
    if names.is_empty() { None } else { Some(names) }
}

/// Checks a hostname the way the Gateway API's schema does (RFC 1123 labels, optional leading `*.`, no IP).
pub fn validate(name: &str) -> Result<(), String> {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    if bare.is_empty() || name.len() > 253 {
        return Err(format!("{name:?} is not a valid hostname"));
    }
    // Only text made of digits and dots, or with a colon, can be an address: parsing every name as one was a
    // third of the check.
    let maybe_address = bare.contains(':') || bare.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if maybe_address && bare.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{name:?} is an IP address; hostnames must be names"));
    }
    for label in bare.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!("{name:?} is not a valid hostname (label {label:?})"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_subdomains_not_the_apex() {
        assert!(covers("*.example.com", "a.example.com"));
        assert!(covers("*.example.com", "a.b.example.com"));
        assert!(covers("*.example.com", "*.a.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "aexample.com"));
        assert!(!covers("a.example.com", "*.example.com"));
    }

    #[test]
    fn intersection_keeps_the_more_specific_name() {
        let route = vec!["test.example.com".to_string(), "test.example.net".to_string()];
        assert_eq!(intersect(Some("*.example.com"), &route), Some(vec!["test.example.com".to_string()]));
        assert_eq!(
            intersect(Some("a.example.com"), &["*.example.com".to_string()]),
            Some(vec!["a.example.com".to_string()])
        );
        assert_eq!(intersect(Some("a.example.com"), &["b.example.com".to_string()]), None);
        assert_eq!(intersect(None, &[]), Some(vec!["*".to_string()]));
    }

    #[test]
    fn intersection_names_each_host_once() {
        let route = vec!["*.com".to_string(), "a.example.com".to_string(), "*.example.com".to_string()];
        assert_eq!(
            intersect(Some("*.example.com"), &route),
            Some(vec!["*.example.com".to_string(), "a.example.com".to_string()])
        );
        let repeated = vec!["a.example.com".to_string(), "a.example.com".to_string()];
        assert_eq!(intersect(None, &repeated), Some(vec!["a.example.com".to_string()]));
    }

    #[test]
    fn hostnames_are_validated() {
        assert!(validate("app01-lab.avi.aclab.uk").is_ok());
        assert!(validate("*.aclab.uk").is_ok());
        assert!(validate("10.0.0.1").unwrap_err().contains("IP address"));
        assert!(validate("::1").unwrap_err().contains("IP address"));
        assert!(validate("10.0.0.1.example.com").is_ok());
        assert!(validate("Bad_Name.com").is_err());
    }
}
