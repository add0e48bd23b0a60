//! Planning a sync: from the zone as read (AXFR) and the desired records, the changes that make the zone
//! match, honouring external-dns's TXT registry so that only records Portico owns are ever touched.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use hickory_proto::rr::{RData, Record};

use crate::model::{DesiredRecord, RecordKind, display_targets, name_to_string};
use crate::registry::{OWNER_LABEL, RESOURCE_LABEL, TxtRegistry, parse_labels};

/// Which changes a sync may make (external-dns's `--policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Create, update and delete.
    Sync,
    /// Create and update, never delete.
    UpsertOnly,
    /// Only create.
    CreateOnly,
}

impl Policy {
    /// external-dns's spelling (`sync`, `upsert-only`, `create-only`).
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Sync => "sync",
            Policy::UpsertOnly => "upsert-only",
            Policy::CreateOnly => "create-only",
        }
    }

    fn allows(self, action: Action) -> bool {
        match (self, action) {
            (Policy::Sync, _) => true,
            (Policy::UpsertOnly, Action::Delete) => false,
            (Policy::UpsertOnly, _) => true,
            (Policy::CreateOnly, Action::Create) => true,
            (Policy::CreateOnly, _) => false,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "sync" => Ok(Policy::Sync),
            "upsert-only" => Ok(Policy::UpsertOnly),
            "create-only" => Ok(Policy::CreateOnly),
            other => Err(format!("unknown DNS sync policy {other:?}: use sync, upsert-only or create-only")),
        }
    }
}

/// One RRset as read from the zone: TTL and values (sorted; TXT values are the concatenated strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RrSet {
    /// TTL, seconds.
    pub ttl: u32,
    /// Values in canonical form: addresses, names without trailing dot, TXT text.
    pub values: Vec<String>,
}

/// The records of a zone as read by a zone transfer, in the form the planner needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneState {
    /// Zone apex, lower case without trailing dot.
    pub zone: String,
    /// SOA serial when read.
    pub serial: u32,
    /// A, AAAA, CNAME and TXT RRsets by name and type.
    pub rrsets: BTreeMap<(String, RecordKind), RrSet>,
    /// Other record types present at each name (SOA, NS, MX, ...).
    pub other_types: BTreeMap<String, BTreeSet<String>>,
}

impl ZoneState {
    /// Builds the state from a zone transfer's records.
    pub fn from_records(zone: &str, records: &[Record]) -> ZoneState {
        let mut state = ZoneState { zone: zone.trim_end_matches('.').to_ascii_lowercase(), ..Default::default() };
        for record in records {
            let name = name_to_string(&record.name);
            let value = match &record.data {
                RData::A(a) => Some((RecordKind::A, a.0.to_string())),
                RData::AAAA(a) => Some((RecordKind::AAAA, a.0.to_string())),
                RData::CNAME(c) => Some((RecordKind::CNAME, name_to_string(&c.0))),
                RData::TXT(t) => Some((
                    RecordKind::TXT,
                    t.txt_data.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect::<String>(),
                )),
                RData::SOA(soa) => {
                    state.serial = soa.serial;
                    None
                }
                _ => None,
            };
            match value {
                Some((kind, value)) => {
                    let set = state.rrsets.entry((name, kind)).or_insert(RrSet { ttl: record.ttl, values: vec![] });
                    set.ttl = record.ttl;
                    if !set.values.contains(&value) {
                        set.values.push(value);
                        set.values.sort();
                    }
                }
                None => {
                    state.other_types.entry(name).or_default().insert(record.record_type().to_string());
                }
            }
        }
        state
    }

    /// The RRset of `kind` at `name`.
    pub fn get(&self, name: &str, kind: RecordKind) -> Option<&RrSet> {
        self.rrsets.get(&(name.to_string(), kind))
    }

    /// Whether the zone holds any record at `name`.
    pub fn has_name(&self, name: &str) -> bool {
        self.other_types.contains_key(name)
            || [RecordKind::A, RecordKind::AAAA, RecordKind::CNAME, RecordKind::TXT]
                .iter()
                .any(|k| self.rrsets.contains_key(&(name.to_string(), *k)))
    }
}

/// What a change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// A new record (and its ownership TXT).
    Create,
    /// A record Portico owns gets new targets, TTL or ownership TXT.
    Update,
    /// A record Portico owns and no longer wants is removed with its ownership TXT.
    Delete,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        })
    }
}

/// One resource record to add or delete.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rr {
    /// Owner name, lower case without trailing dot.
    pub name: String,
    /// Type.
    pub kind: RecordKind,
    /// TTL (ignored for deletes).
    pub ttl: u32,
    /// Value in canonical form.
    pub value: String,
}

impl fmt::Display for Rr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.name,
            self.ttl,
            self.kind,
            display_targets(self.kind, std::slice::from_ref(&self.value))
        )
    }
}

/// An RFC 2136 prerequisite: the update applies only if the zone is still as it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prerequisite {
    /// The RRset exists with exactly these values (RFC 2136 2.4.2).
    RrsetEquals {
        /// Name.
        name: String,
        /// Type.
        kind: RecordKind,
        /// Values.
        values: Vec<String>,
    },
    /// No RRset of this name and type (RFC 2136 2.4.3).
    RrsetAbsent {
        /// Name.
        name: String,
        /// Type.
        kind: RecordKind,
    },
    /// No record at all at this name (RFC 2136 2.4.5).
    NameAbsent {
        /// Name.
        name: String,
    },
}

/// A change to one record (name and type), with its ownership TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Create, update or delete.
    pub action: Action,
    /// Record name.
    pub name: String,
    /// Record type.
    pub kind: RecordKind,
    /// The source object (`httproute/dev/NAME`), or the one the ownership TXT named for deletes.
    pub resource: String,
    /// The records at this name that Portico owns before the change (one or more types when a CNAME replaces
    /// addresses or the reverse).
    pub before: Vec<(RecordKind, RrSet)>,
    /// The record after the change (`None` for deletes).
    pub after: Option<RrSet>,
    /// Why, in words (`new record`, `targets 10.0.0.1 -> 10.0.0.2`, `ownership TXT missing`).
    pub reason: String,
    /// Conditions checked by the server before applying.
    pub prerequisites: Vec<Prerequisite>,
    /// Records removed (exact values).
    pub deletes: Vec<Rr>,
    /// Records added.
    pub adds: Vec<Rr>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = match self.action {
            Action::Create => '+',
            Action::Update => '~',
            Action::Delete => '-',
        };
        write!(f, "{sign} {} {} {}", self.action, self.name, self.kind)?;
        if !self.resource.is_empty() {
            write!(f, " ({})", self.resource)?;
        }
        write!(f, ": {}", self.reason)?;
        for rr in &self.deletes {
            write!(f, "\n      delete {rr}")?;
        }
        for rr in &self.adds {
            write!(f, "\n      add    {rr}")?;
        }
        Ok(())
    }
}

/// Why a desired record is not published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictReason {
    /// The name holds a record whose ownership TXT names another owner id.
    OwnedBy(String),
    /// The name holds a record without ownership TXT (made by hand or by another tool).
    Unowned,
    /// Another desired record wants the same name and type; the one with the smallest targets wins.
    Duplicate {
        /// The resource whose record is published instead.
        kept: String,
    },
    /// A CNAME cannot share its name with other data.
    CnameWithOtherData(String),
    /// The ownership TXT record's name is taken by a TXT record Portico does not own.
    RegistryNameTaken {
        /// The TXT record's name.
        txt_name: String,
        /// Its owner ("" when unowned).
        owner: String,
    },
    /// The name is not in the synced zone.
    OutsideZone,
    /// The name is in an excluded domain (e.g. the load balancer's delegated zone).
    Excluded(String),
    /// The sync does not manage this record type.
    KindNotManaged,
    /// The record is invalid.
    Invalid(String),
}

impl fmt::Display for ConflictReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConflictReason::OwnedBy(owner) => write!(f, "owned by {owner}"),
            ConflictReason::Unowned => f.write_str("a record without ownership TXT (made by hand?) is there"),
            ConflictReason::Duplicate { kept } => write!(f, "also wanted by {kept}, which is published instead"),
            ConflictReason::CnameWithOtherData(what) => write!(f, "a CNAME cannot share its name with {what}"),
            ConflictReason::RegistryNameTaken { txt_name, owner } if owner.is_empty() => {
                write!(f, "its ownership TXT name {txt_name} holds an unmanaged TXT record")
            }
            ConflictReason::RegistryNameTaken { txt_name, owner } => {
                write!(f, "its ownership TXT name {txt_name} is owned by {owner}")
            }
            ConflictReason::OutsideZone => f.write_str("not in the zone"),
            ConflictReason::Excluded(domain) => write!(f, "in excluded domain {domain}"),
            ConflictReason::KindNotManaged => f.write_str("record type not managed by this sync"),
            ConflictReason::Invalid(why) => write!(f, "invalid: {why}"),
        }
    }
}

/// A desired record that will not be published, and why. Nothing at its name is touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Record name.
    pub name: String,
    /// Record type.
    pub kind: RecordKind,
    /// The source object.
    pub resource: String,
    /// Why.
    pub reason: ConflictReason,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "! conflict {} {}", self.name, self.kind)?;
        if !self.resource.is_empty() {
            write!(f, " ({})", self.resource)?;
        }
        write!(f, ": {}; not touched", self.reason)
    }
}

/// The state of one desired record, for `/api/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// The zone holds the record as desired, owned by Portico.
    Published,
    /// A change is planned (or being applied).
    Pending(Action),
    /// The policy holds the change back.
    HeldBack(Action),
    /// Not published: another owner or a hand-made record is there, or the record is invalid.
    Conflict(ConflictReason),
    /// Applying the change failed.
    Error(String),
}

impl fmt::Display for RecordState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordState::Published => f.write_str("published"),
            RecordState::Pending(action) => write!(f, "pending {action}"),
            RecordState::HeldBack(action) => write!(f, "{action} held back by policy"),
            RecordState::Conflict(reason) => write!(f, "conflict: {reason}"),
            RecordState::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// The state of one desired record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordStatus {
    /// Record name.
    pub name: String,
    /// Record type.
    pub kind: RecordKind,
    /// The source object.
    pub resource: String,
    /// Its state.
    pub state: RecordState,
}

/// Everything the planner needs besides the records.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Which changes are allowed.
    pub policy: Policy,
    /// Record types the sync manages (external-dns's `--managed-record-types`; default A, AAAA, CNAME).
    pub managed_kinds: Vec<RecordKind>,
    /// Domains inside the zone that are never touched (external-dns's `--exclude-domains`).
    pub exclude_domains: Vec<String>,
    /// TTL of desired records that give none.
    pub default_ttl: u32,
    /// Smallest TTL written.
    pub min_ttl: u32,
}

/// The changes a sync would make, the records in conflict and the records already right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Zone apex.
    pub zone: String,
    /// Owner id.
    pub owner: String,
    /// Policy.
    pub policy: Policy,
    /// SOA serial of the zone as read.
    pub serial: u32,
    /// Changes to make, in order: creates, updates, deletes.
    pub changes: Vec<Change>,
    /// Changes the policy holds back.
    pub held_back: Vec<Change>,
    /// Desired records that will not be published.
    pub conflicts: Vec<Conflict>,
    /// Desired records already published as desired: `(name, kind, resource)`.
    pub unchanged: Vec<(String, RecordKind, String)>,
}

impl Plan {
    /// Whether the sync has nothing to send.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The state of every desired record under this plan (before it is applied).
    pub fn statuses(&self) -> Vec<RecordStatus> {
        let mut out = Vec::new();
        for (name, kind, resource) in &self.unchanged {
            out.push(RecordStatus {
                name: name.clone(),
                kind: *kind,
                resource: resource.clone(),
                state: RecordState::Published,
            });
        }
        for change in self.changes.iter().filter(|c| c.after.is_some()) {
            out.push(RecordStatus {
                name: change.name.clone(),
                kind: change.kind,
                resource: change.resource.clone(),
                state: RecordState::Pending(change.action),
            });
        }
        for change in self.held_back.iter().filter(|c| c.after.is_some()) {
            out.push(RecordStatus {
                name: change.name.clone(),
                kind: change.kind,
                resource: change.resource.clone(),
                state: RecordState::HeldBack(change.action),
            });
        }
        for conflict in &self.conflicts {
            out.push(RecordStatus {
                name: conflict.name.clone(),
                kind: conflict.kind,
                resource: conflict.resource.clone(),
                state: RecordState::Conflict(conflict.reason.clone()),
            });
        }
        out.sort_by(|a, b| (&a.name, a.kind, &a.resource).cmp(&(&b.name, b.kind, &b.resource)));
        out
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "DNS sync plan for zone {} (serial {}), owner {}, policy {}: {} change(s), {} conflict(s), {} up to date",
            self.zone,
            self.serial,
            self.owner,
            self.policy,
            self.changes.len(),
            self.conflicts.len(),
            self.unchanged.len()
        )?;
        for change in &self.changes {
            writeln!(f, "  {change}")?;
        }
        for change in &self.held_back {
            writeln!(f, "  (held back by policy {}) {change}", self.policy)?;
        }
        for conflict in &self.conflicts {
            writeln!(f, "  {conflict}")?;
        }
        for (name, kind, resource) in &self.unchanged {
            writeln!(f, "  = {name} {kind} ({resource}): up to date")?;
        }
        Ok(())
    }
}

/// Who owns a record: the labels of its ownership TXT record, if any.
struct Ownership {
    owner: String,
    resource: String,
}

struct Planner<'a> {
    zone: &'a ZoneState,
    registry: &'a TxtRegistry,
    options: &'a PlanOptions,
    /// Ownership TXT RRsets by name: labels of the first registry value.
    registry_sets: BTreeMap<String, BTreeMap<String, String>>,
}

impl Planner<'_> {
    fn ownership(&self, name: &str, kind: RecordKind) -> Option<Ownership> {
        let labels = self.registry_sets.get(&self.registry.txt_name(name, kind)).or_else(|| {
            (kind != RecordKind::AAAA).then(|| self.registry_sets.get(&self.registry.legacy_txt_name(name))).flatten()
        })?;
        Some(Ownership {
            owner: labels.get(OWNER_LABEL).cloned().unwrap_or_default(),
            resource: labels.get(RESOURCE_LABEL).cloned().unwrap_or_default(),
        })
    }

    fn owner_of(&self, name: &str, kind: RecordKind) -> String {
        self.ownership(name, kind).map(|o| o.owner).unwrap_or_default()
    }

    fn ours(&self, name: &str, kind: RecordKind) -> bool {
        self.owner_of(name, kind) == self.registry.owner()
    }

    fn conflict_for(&self, name: &str, kind: RecordKind) -> ConflictReason {
        match self.owner_of(name, kind) {
            owner if owner.is_empty() => ConflictReason::Unowned,
            owner => ConflictReason::OwnedBy(owner),
        }
    }

    fn excluded(&self, name: &str) -> Option<String> {
        self.options
            .exclude_domains
            .iter()
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
            .find(|d| name == d || name.ends_with(&format!(".{d}")))
    }

    fn in_zone(&self, name: &str) -> bool {
        name == self.zone.zone || name.ends_with(&format!(".{}", self.zone.zone))
    }

    /// Managed records at `name` that are not ownership TXT records.
    fn current_at(&self, name: &str) -> Vec<(RecordKind, &RrSet)> {
        self.options
            .managed_kinds
            .iter()
            .filter_map(|k| {
                let set = self.zone.get(name, *k)?;
                (*k != RecordKind::TXT || !self.registry_sets.contains_key(name)).then_some((*k, set))
            })
            .collect()
    }

    /// Data at `name` that a CNAME cannot live with: unmanaged types and unmanaged TXT.
    fn unmanaged_at(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> =
            self.zone.other_types.get(name).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        for kind in [RecordKind::A, RecordKind::AAAA, RecordKind::CNAME, RecordKind::TXT] {
            if self.options.managed_kinds.contains(&kind) {
                continue;
            }
            if self.zone.get(name, kind).is_some()
                && !(kind == RecordKind::TXT && self.registry_sets.contains_key(name))
            {
                out.push(kind.to_string());
            }
        }
        out
    }

    /// The ops on the ownership TXT records for a record of `kind` at `name` that ends up owned by us for
    /// `resource` (`Some`) or removed (`None`); or the conflict when the TXT name is taken.
    fn registry_ops(
        &self,
        name: &str,
        kind: RecordKind,
        target: Option<(&str, u32)>,
        change: &mut Change,
    ) -> Result<(), ConflictReason> {
        let txt_name = self.registry.txt_name(name, kind);
        let existing = self.zone.get(&txt_name, RecordKind::TXT);
        if let Some(set) = existing {
            let owner = self.registry_sets.get(&txt_name).and_then(|l| l.get(OWNER_LABEL).cloned());
            if owner.as_deref() != Some(self.registry.owner()) {
                return Err(ConflictReason::RegistryNameTaken { txt_name, owner: owner.unwrap_or_default() });
            }
            let wanted = target.map(|(resource, _)| self.registry.owner_value(resource));
            if wanted.as_ref().is_some_and(|w| set.values == [w.clone()]) {
                return Ok(());
            }
            change.prerequisites.push(Prerequisite::RrsetEquals {
                name: txt_name.clone(),
                kind: RecordKind::TXT,
                values: set.values.clone(),
            });
            for value in &set.values {
                change.deletes.push(Rr { name: txt_name.clone(), kind: RecordKind::TXT, ttl: 0, value: value.clone() });
            }
        } else if target.is_some() {
            change.prerequisites.push(Prerequisite::RrsetAbsent { name: txt_name.clone(), kind: RecordKind::TXT });
        }
        if let Some((resource, ttl)) = target {
            change.adds.push(Rr {
                name: txt_name,
                kind: RecordKind::TXT,
                ttl,
                value: self.registry.owner_value(resource),
            });
        }
        Ok(())
    }

    fn ttl(&self, desired: u32) -> u32 {
        let ttl = if desired == 0 { self.options.default_ttl } else { desired };
        ttl.max(self.options.min_ttl)
    }
}

/// Computes the changes that make `zone` hold `desired`, touching only records whose ownership TXT names
/// the registry's owner. Pure: no network.
pub fn compute_plan(
    desired: &[DesiredRecord],
    zone: &ZoneState,
    registry: &TxtRegistry,
    options: &PlanOptions,
) -> Plan {
    let mut registry_sets = BTreeMap::new();
    for ((name, kind), set) in &zone.rrsets {
        if *kind == RecordKind::TXT
            && let Some(labels) = set.values.iter().find_map(|v| parse_labels(v))
        {
            registry_sets.insert(name.clone(), labels);
        }
    }
    let planner = Planner { zone, registry, options, registry_sets };
    let mut plan = Plan {
        zone: zone.zone.clone(),
        owner: registry.owner().to_string(),
        policy: options.policy,
        serial: zone.serial,
        changes: vec![],
        held_back: vec![],
        conflicts: vec![],
        unchanged: vec![],
    };
    let conflict = |d: &DesiredRecord, reason: ConflictReason| Conflict {
        name: d.name.clone(),
        kind: d.kind,
        resource: d.resource.clone(),
        reason,
    };

    // 1. Valid, in-zone, managed desired records, grouped by name.
    let mut by_name: BTreeMap<String, Vec<DesiredRecord>> = BTreeMap::new();
    for record in desired {
        let record = match record.normalized() {
            Ok(r) => r,
            Err(e) => {
                plan.conflicts.push(conflict(record, ConflictReason::Invalid(e.to_string())));
                continue;
            }
        };
        let reason = if !planner.in_zone(&record.name) {
            Some(ConflictReason::OutsideZone)
        } else if let Some(domain) = planner.excluded(&record.name) {
            Some(ConflictReason::Excluded(domain))
        } else if !options.managed_kinds.contains(&record.kind) {
            Some(ConflictReason::KindNotManaged)
        } else if record.kind == RecordKind::CNAME && record.name == zone.zone {
            Some(ConflictReason::Invalid("a CNAME cannot be at the zone apex".into()))
        } else {
            None
        };
        match reason {
            Some(reason) => plan.conflicts.push(conflict(&record, reason)),
            None => by_name.entry(record.name.clone()).or_default().push(record),
        }
    }

    // 2. One record per name and type (smallest targets win); a CNAME yields to other types at its name.
    for records in by_name.values_mut() {
        records.sort_by(|a, b| (a.kind, &a.targets, &a.resource).cmp(&(b.kind, &b.targets, &b.resource)));
        let mut kept: Vec<DesiredRecord> = Vec::new();
        for record in records.drain(..) {
            match kept.iter().find(|k| k.kind == record.kind) {
                Some(winner) => {
                    plan.conflicts.push(conflict(&record, ConflictReason::Duplicate { kept: winner.resource.clone() }))
                }
                None => kept.push(record),
            }
        }
        if kept.len() > 1
            && let Some(pos) = kept.iter().position(|r| r.kind == RecordKind::CNAME)
        {
            let cname = kept.remove(pos);
            let others = kept.iter().map(|r| format!("{} ({})", r.kind, r.resource)).collect::<Vec<_>>().join(", ");
            plan.conflicts.push(conflict(&cname, ConflictReason::CnameWithOtherData(format!("desired {others}"))));
        }
        *records = kept;
    }

    // 3. Every name that is desired or holds a managed record we own.
    let mut names: BTreeSet<String> = by_name.keys().cloned().collect();
    for (name, kind) in zone.rrsets.keys() {
        if options.managed_kinds.contains(kind) && planner.in_zone(name) && planner.excluded(name).is_none() {
            names.insert(name.clone());
        }
    }

    let mut changes = Vec::new();
    for name in names {
        let wanted = by_name.remove(&name).unwrap_or_default();
        let current = planner.current_at(&name);
        let mut consumed: BTreeSet<RecordKind> = BTreeSet::new();
        let mut kept_ours: BTreeSet<RecordKind> = BTreeSet::new();

        for d in &wanted {
            let ttl = planner.ttl(d.ttl);
            let after = RrSet { ttl, values: d.targets.clone() };
            if d.kind == RecordKind::CNAME {
                let unmanaged = planner.unmanaged_at(&name);
                if !unmanaged.is_empty() {
                    plan.conflicts.push(conflict(
                        d,
                        ConflictReason::CnameWithOtherData(format!("existing {} records", unmanaged.join(", "))),
                    ));
                    continue;
                }
            }
            let same = current.iter().find(|(k, _)| *k == d.kind);
            // Records at this name that must go for this one to exist (CNAME exclusivity).
            let displaced: Vec<(RecordKind, &RrSet)> = current
                .iter()
                .filter(|(k, _)| *k != d.kind && (d.kind == RecordKind::CNAME || *k == RecordKind::CNAME))
                .cloned()
                .collect();
            if same.is_some() && !planner.ours(&name, d.kind) {
                plan.conflicts.push(conflict(d, planner.conflict_for(&name, d.kind)));
                continue;
            }
            if same.is_none() {
                // Creating on an occupied name: only if every record there is ours.
                if let Some((k, _)) = current.iter().find(|(k, _)| !planner.ours(&name, *k)) {
                    plan.conflicts.push(conflict(d, planner.conflict_for(&name, *k)));
                    continue;
                }
            }

            let mut change = Change {
                action: Action::Create,
                name: name.clone(),
                kind: d.kind,
                resource: d.resource.clone(),
                before: vec![],
                after: Some(after.clone()),
                reason: String::new(),
                prerequisites: vec![],
                deletes: vec![],
                adds: vec![],
            };
            let mut reasons = Vec::new();
            match same {
                Some((_, set)) => {
                    change.action = Action::Update;
                    change.before.push((d.kind, (*set).clone()));
                    if set.values != after.values {
                        reasons.push(format!("targets {} -> {}", set.values.join(","), after.values.join(",")));
                    }
                    if set.ttl != after.ttl {
                        reasons.push(format!("TTL {} -> {}", set.ttl, after.ttl));
                    }
                    if !reasons.is_empty() {
                        change.prerequisites.push(Prerequisite::RrsetEquals {
                            name: name.clone(),
                            kind: d.kind,
                            values: set.values.clone(),
                        });
                        let replace_all = set.ttl != after.ttl;
                        for v in &set.values {
                            if replace_all || !after.values.contains(v) {
                                change.deletes.push(Rr { name: name.clone(), kind: d.kind, ttl: 0, value: v.clone() });
                            }
                        }
                        for v in &after.values {
                            if replace_all || !set.values.contains(v) {
                                change.adds.push(Rr { name: name.clone(), kind: d.kind, ttl, value: v.clone() });
                            }
                        }
                    }
                }
                None => {
                    if displaced.is_empty() {
                        reasons.push("new record".to_string());
                        change.prerequisites.push(Prerequisite::RrsetAbsent { name: name.clone(), kind: d.kind });
                        if d.kind == RecordKind::CNAME && !zone.has_name(&name) {
                            change.prerequisites.push(Prerequisite::NameAbsent { name: name.clone() });
                        }
                    } else {
                        change.action = Action::Update;
                        reasons.push(format!(
                            "replaces {}",
                            displaced.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>().join(", ")
                        ));
                        change.prerequisites.push(Prerequisite::RrsetAbsent { name: name.clone(), kind: d.kind });
                    }
                    for (k, set) in &displaced {
                        consumed.insert(*k);
                        change.before.push((*k, (*set).clone()));
                        change.prerequisites.push(Prerequisite::RrsetEquals {
                            name: name.clone(),
                            kind: *k,
                            values: set.values.clone(),
                        });
                        for v in &set.values {
                            change.deletes.push(Rr { name: name.clone(), kind: *k, ttl: 0, value: v.clone() });
                        }
                        if let Err(reason) = planner.registry_ops(&name, *k, None, &mut change) {
                            tracing::debug!(%name, kind = %k, %reason, "ownership TXT of a displaced record left alone");
                        }
                    }
                    for v in &after.values {
                        change.adds.push(Rr { name: name.clone(), kind: d.kind, ttl, value: v.clone() });
                    }
                }
            }
            // The ownership TXT (current format): written on create, on takeover of an external-dns record
            // whose TXT is only in the legacy format, and when the resource changes.
            let before_len = change.adds.len() + change.deletes.len();
            if let Err(reason) = planner.registry_ops(&name, d.kind, Some((&d.resource, ttl)), &mut change) {
                plan.conflicts.push(conflict(d, reason));
                continue;
            }
            if change.adds.len() + change.deletes.len() > before_len && change.action == Action::Update {
                let ownership = planner.ownership(&name, d.kind);
                match ownership {
                    Some(o) if planner.zone.get(&registry.txt_name(&name, d.kind), RecordKind::TXT).is_some() => {
                        if o.resource != d.resource {
                            reasons.push(format!("ownership TXT resource {} -> {}", o.resource, d.resource));
                        } else {
                            reasons.push("ownership TXT rewritten".to_string());
                        }
                    }
                    _ => reasons.push("ownership TXT missing in the current format".to_string()),
                }
            }
            kept_ours.insert(d.kind);
            if change.adds.is_empty() && change.deletes.is_empty() {
                plan.unchanged.push((name.clone(), d.kind, d.resource.clone()));
                continue;
            }
            change.reason = reasons.join("; ");
            changes.push(change);
        }

        // Records we own here that nobody wants any more.
        let leftover: Vec<(RecordKind, &RrSet)> = current
            .iter()
            .filter(|(k, _)| !consumed.contains(k) && !kept_ours.contains(k) && planner.ours(&name, *k))
            .filter(|(k, _)| !wanted.iter().any(|d| d.kind == *k))
            .cloned()
            .collect();
        let legacy = registry.legacy_txt_name(&name);
        let legacy_ours = planner.registry_sets.get(&legacy).and_then(|l| l.get(OWNER_LABEL)).map(String::as_str)
            == Some(registry.owner());
        for (index, (k, set)) in leftover.iter().enumerate() {
            let mut change = Change {
                action: Action::Delete,
                name: name.clone(),
                kind: *k,
                resource: planner.ownership(&name, *k).map(|o| o.resource).unwrap_or_default(),
                before: vec![(*k, (*set).clone())],
                after: None,
                reason: "no longer desired".to_string(),
                prerequisites: vec![Prerequisite::RrsetEquals {
                    name: name.clone(),
                    kind: *k,
                    values: set.values.clone(),
                }],
                deletes: set
                    .values
                    .iter()
                    .map(|v| Rr { name: name.clone(), kind: *k, ttl: 0, value: v.clone() })
                    .collect(),
                adds: vec![],
            };
            if let Err(reason) = planner.registry_ops(&name, *k, None, &mut change) {
                tracing::debug!(%name, kind = %k, %reason, "ownership TXT left alone");
            }
            // The type-less legacy TXT goes with the last of our records at this name.
            if legacy_ours
                && wanted.is_empty()
                && index + 1 == leftover.len()
                && let Some(lset) = zone.get(&legacy, RecordKind::TXT)
            {
                change.prerequisites.push(Prerequisite::RrsetEquals {
                    name: legacy.clone(),
                    kind: RecordKind::TXT,
                    values: lset.values.clone(),
                });
                for v in &lset.values {
                    change.deletes.push(Rr { name: legacy.clone(), kind: RecordKind::TXT, ttl: 0, value: v.clone() });
                }
            }
            changes.push(change);
        }
    }

    changes.sort_by(|a, b| (a.action, &a.name, a.kind).cmp(&(b.action, &b.name, b.kind)));
    for change in changes {
        if options.policy.allows(change.action) {
            plan.changes.push(change);
        } else {
            plan.held_back.push(change);
        }
    }
    plan.conflicts.sort_by(|a, b| (&a.name, a.kind, &a.resource).cmp(&(&b.name, b.kind, &b.resource)));
    plan.unchanged.sort();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, CNAME, NS, SOA, TXT};
    use hickory_proto::rr::{Name, RData, Record};

    const OWNER: &str = "region01-aclab-vks-01";
    const VALUE: &str = "heritage=external-dns,external-dns/owner=region01-aclab-vks-01,external-dns/resource=httproute/dev/app01-aclab-nginx-httproute";

    fn registry() -> TxtRegistry {
        TxtRegistry::new(OWNER, "region01-aclab-vks-01-%{record_type}.", "", "").unwrap()
    }

    fn options(policy: Policy) -> PlanOptions {
        PlanOptions {
            policy,
            managed_kinds: vec![RecordKind::A, RecordKind::AAAA, RecordKind::CNAME],
            exclude_domains: vec!["avi.aclab.uk".into()],
            default_ttl: 30,
            min_ttl: 0,
        }
    }

    fn n(s: &str) -> Name {
        Name::from_ascii(format!("{s}.")).unwrap()
    }

    fn base_records() -> Vec<Record> {
        vec![
            Record::from_rdata(
                n("aclab.uk"),
                300,
                RData::SOA(SOA::new(n("ns1.aclab.uk"), n("hostmaster.aclab.uk"), 7, 3600, 600, 86400, 30)),
            ),
            Record::from_rdata(n("aclab.uk"), 300, RData::NS(NS(n("ns1.aclab.uk")))),
            Record::from_rdata(n("ns1.aclab.uk"), 300, RData::A(A::new(127, 0, 0, 1))),
            Record::from_rdata(n("avi.aclab.uk"), 300, RData::NS(NS(n("avi-ns01.aclab.uk")))),
        ]
    }

    fn cname(name: &str, target: &str, ttl: u32) -> Record {
        Record::from_rdata(n(name), ttl, RData::CNAME(CNAME(n(target))))
    }

    fn txt(name: &str, value: &str) -> Record {
        Record::from_rdata(n(name), 300, RData::TXT(TXT::new(vec![value.to_string()])))
    }

    fn app01() -> DesiredRecord {
        DesiredRecord::new(
            "application01.aclab.uk",
            RecordKind::CNAME,
            vec!["app01-lab.avi.aclab.uk".into()],
            30,
            "httproute/dev/app01-aclab-nginx-httproute",
        )
    }

    fn plan(desired: &[DesiredRecord], records: Vec<Record>, policy: Policy) -> Plan {
        compute_plan(desired, &ZoneState::from_records("aclab.uk", &records), &registry(), &options(policy))
    }

    #[test]
    fn article_creates_the_cname_and_its_txt() {
        let p = plan(&[app01()], base_records(), Policy::Sync);
        assert_eq!(p.changes.len(), 1, "{p}");
        let c = &p.changes[0];
        assert_eq!(c.action, Action::Create);
        assert_eq!(
            c.adds,
            vec![
                Rr {
                    name: "application01.aclab.uk".into(),
                    kind: RecordKind::CNAME,
                    ttl: 30,
                    value: "app01-lab.avi.aclab.uk".into()
                },
                Rr {
                    name: "region01-aclab-vks-01-cname.application01.aclab.uk".into(),
                    kind: RecordKind::TXT,
                    ttl: 30,
                    value: VALUE.into()
                },
            ]
        );
        assert!(c.deletes.is_empty());
        assert!(c.prerequisites.contains(&Prerequisite::NameAbsent { name: "application01.aclab.uk".into() }));
        let text = p.to_string();
        assert!(text.contains("+ create application01.aclab.uk CNAME"), "{text}");
        assert!(text.contains("add    application01.aclab.uk 30 CNAME app01-lab.avi.aclab.uk."), "{text}");
        assert_eq!(p.statuses()[0].state, RecordState::Pending(Action::Create));
    }

    #[test]
    fn an_external_dns_record_with_our_owner_is_taken_over_without_change() {
        let mut records = base_records();
        records.push(cname("application01.aclab.uk", "app01-lab.avi.aclab.uk", 30));
        records.push(txt("region01-aclab-vks-01-cname.application01.aclab.uk", VALUE));
        let p = plan(&[app01()], records, Policy::Sync);
        assert!(p.is_empty(), "{p}");
        assert_eq!(p.unchanged.len(), 1);
        assert_eq!(p.statuses()[0].state, RecordState::Published);
    }

    #[test]
    fn target_and_ttl_changes_update_only_our_records() {
        let mut records = base_records();
        records.push(cname("application01.aclab.uk", "old.avi.aclab.uk", 300));
        records.push(txt("region01-aclab-vks-01-cname.application01.aclab.uk", VALUE));
        let p = plan(&[app01()], records, Policy::UpsertOnly);
        assert_eq!(p.changes.len(), 1, "{p}");
        let c = &p.changes[0];
        assert_eq!(c.action, Action::Update);
        assert!(c.reason.contains("targets old.avi.aclab.uk -> app01-lab.avi.aclab.uk"), "{}", c.reason);
        assert!(c.reason.contains("TTL 300 -> 30"), "{}", c.reason);
        assert_eq!(c.deletes.len(), 1);
        assert_eq!(c.adds.len(), 1, "TXT unchanged: {c}");
        let held = plan(
            &[app01()],
            {
                let mut r = base_records();
                r.push(cname("application01.aclab.uk", "old.avi.aclab.uk", 300));
                r.push(txt("region01-aclab-vks-01-cname.application01.aclab.uk", VALUE));
                r
            },
            Policy::CreateOnly,
        );
        assert!(held.is_empty() && held.held_back.len() == 1, "{held}");
    }

    #[test]
    fn records_of_other_owners_or_made_by_hand_are_conflicts() {
        let mut records = base_records();
        records.push(cname("application02.aclab.uk", "elsewhere.example.net", 300));
        records.push(txt(
            "region01-aclab-vks-01-cname.application02.aclab.uk",
            "heritage=external-dns,external-dns/owner=someone-else,external-dns/resource=ingress/x/y",
        ));
        records.push(Record::from_rdata(n("manual.aclab.uk"), 300, RData::A(A::new(10, 1, 1, 1))));
        let desired = vec![
            DesiredRecord::new(
                "application02.aclab.uk",
                RecordKind::CNAME,
                vec!["app02.avi.aclab.uk".into()],
                30,
                "httproute/dev/two",
            ),
            DesiredRecord::new("manual.aclab.uk", RecordKind::A, vec!["10.0.0.1".into()], 30, "httproute/dev/three"),
            DesiredRecord::new("manual.aclab.uk", RecordKind::AAAA, vec!["::1".into()], 30, "httproute/dev/three"),
        ];
        let p = plan(&desired, records, Policy::Sync);
        assert!(p.is_empty(), "nothing may be touched: {p}");
        let reasons: Vec<String> = p.conflicts.iter().map(|c| format!("{} {}: {}", c.name, c.kind, c.reason)).collect();
        assert_eq!(
            reasons,
            vec![
                "application02.aclab.uk CNAME: owned by someone-else",
                "manual.aclab.uk A: a record without ownership TXT (made by hand?) is there",
                "manual.aclab.uk AAAA: a record without ownership TXT (made by hand?) is there",
            ]
        );
        assert!(p.to_string().contains(
            "! conflict application02.aclab.uk CNAME (httproute/dev/two): owned by someone-else; not touched"
        ));
    }

    #[test]
    fn deleting_removes_record_and_txt_under_sync_only() {
        let mut records = base_records();
        records.push(cname("application01.aclab.uk", "app01-lab.avi.aclab.uk", 30));
        records.push(txt("region01-aclab-vks-01-cname.application01.aclab.uk", VALUE));
        records.push(Record::from_rdata(n("avi-ns01.aclab.uk"), 300, RData::A(A::new(127, 0, 0, 53))));
        let p = plan(&[], records.clone(), Policy::Sync);
        assert_eq!(p.changes.len(), 1, "glue and NS untouched: {p}");
        let c = &p.changes[0];
        assert_eq!(c.action, Action::Delete);
        assert_eq!(c.resource, "httproute/dev/app01-aclab-nginx-httproute");
        let deleted: Vec<&str> = c.deletes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(deleted, vec!["application01.aclab.uk", "region01-aclab-vks-01-cname.application01.aclab.uk"]);
        let upsert = plan(&[], records, Policy::UpsertOnly);
        assert!(upsert.is_empty() && upsert.held_back.len() == 1, "{upsert}");
    }

    #[test]
    fn legacy_txt_is_read_and_the_current_format_added() {
        let mut records = base_records();
        records.push(cname("application01.aclab.uk", "app01-lab.avi.aclab.uk", 30));
        records.push(txt("region01-aclab-vks-01-.application01.aclab.uk", VALUE));
        let p = plan(&[app01()], records, Policy::Sync);
        assert_eq!(p.changes.len(), 1, "{p}");
        assert_eq!(p.changes[0].action, Action::Update);
        assert!(p.changes[0].reason.contains("ownership TXT missing"), "{}", p.changes[0].reason);
        assert_eq!(p.changes[0].adds.len(), 1);
        assert_eq!(p.changes[0].adds[0].kind, RecordKind::TXT);
    }

    #[test]
    fn a_cname_replaces_our_address_records_in_one_change() {
        let mut records = base_records();
        records.push(Record::from_rdata(n("application01.aclab.uk"), 30, RData::A(A::new(127, 0, 0, 10))));
        records.push(txt("region01-aclab-vks-01-a.application01.aclab.uk", VALUE));
        let p = plan(&[app01()], records, Policy::Sync);
        assert_eq!(p.changes.len(), 1, "{p}");
        let c = &p.changes[0];
        assert_eq!(c.action, Action::Update);
        assert!(c.reason.contains("replaces A"), "{}", c.reason);
        assert_eq!(c.deletes.len(), 2, "the A and its TXT: {c}");
        assert_eq!(c.adds.len(), 2, "the CNAME and its TXT: {c}");
    }

    #[test]
    fn desired_conflicts_and_filters() {
        let desired = vec![
            DesiredRecord::new("x.aclab.uk", RecordKind::A, vec!["10.0.0.2".into()], 0, "ingress/a/one"),
            DesiredRecord::new("x.aclab.uk", RecordKind::A, vec!["10.0.0.1".into()], 0, "ingress/a/two"),
            DesiredRecord::new("x.aclab.uk", RecordKind::CNAME, vec!["y.aclab.uk".into()], 0, "ingress/a/three"),
            DesiredRecord::new("app.avi.aclab.uk", RecordKind::A, vec!["10.0.0.1".into()], 0, "ingress/a/four"),
            DesiredRecord::new("app.example.com", RecordKind::A, vec!["10.0.0.1".into()], 0, "ingress/a/five"),
            DesiredRecord::new("t.aclab.uk", RecordKind::TXT, vec!["hello".into()], 0, "ingress/a/six"),
            DesiredRecord::new("bad.aclab.uk", RecordKind::A, vec!["nope".into()], 0, "ingress/a/seven"),
        ];
        let p = plan(&desired, base_records(), Policy::Sync);
        assert_eq!(p.changes.len(), 1, "{p}");
        assert_eq!(p.changes[0].adds[0].value, "10.0.0.1");
        assert_eq!(p.changes[0].adds[0].ttl, 30, "default TTL");
        let reasons: BTreeMap<String, String> =
            p.conflicts.iter().map(|c| (c.resource.clone(), c.reason.to_string())).collect();
        assert_eq!(reasons["ingress/a/one"], "also wanted by ingress/a/two, which is published instead");
        assert!(reasons["ingress/a/three"].starts_with("a CNAME cannot share its name with desired A"));
        assert_eq!(reasons["ingress/a/four"], "in excluded domain avi.aclab.uk");
        assert_eq!(reasons["ingress/a/five"], "not in the zone");
        assert_eq!(reasons["ingress/a/six"], "record type not managed by this sync");
        assert!(reasons["ingress/a/seven"].contains("not an IPv4 address"));
    }
}
