//! ReferenceGrant: may an object in one namespace refer to an object in another?

use portico_resources::Snapshot;

/// One side of a reference: API group (`""` for core), kind and namespace.
pub struct RefEnd<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
}

/// Whether `from` may refer to the object `to_name` described by `to`. References within a namespace are
/// always allowed; across namespaces a ReferenceGrant in the target namespace must admit them.
pub fn permitted(snapshot: &Snapshot, from: &RefEnd<'_>, to: &RefEnd<'_>, to_name: &str) -> bool {
    if from.namespace == to.namespace {
        return true;
    }
    snapshot.reference_grants.iter().filter(|(key, _)| key.namespace == to.namespace).any(|(_, grant)| {
        let admits_from = grant
            .spec
            .from
            .iter()
            .any(|f| f.group == from.group && f.kind == from.kind && f.namespace == from.namespace);
        let admits_to = grant
            .spec
            .to
            .iter()
            .any(|t| t.group == to.group && t.kind == to.kind && t.name.as_deref().is_none_or(|n| n == to_name));
        admits_from && admits_to
    })
}
