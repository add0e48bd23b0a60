//! external-dns compatible sync to a corporate DNS server: read the zone by (signed) AXFR, plan, and apply the
//! plan with RFC 2136 UPDATE messages over TCP, in batches, with retries and bounded backoff.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{SyncError, TsigFailure};
use crate::model::{DEFAULT_TTL, DesiredRecord, RecordKind, fqdn, normalize_name};
use crate::plan::{
    Change, Plan, PlanOptions, Policy, Prerequisite, RecordState, RecordStatus, ZoneState, compute_plan,
};
use crate::registry::TxtRegistry;
use crate::signer::{MessageSigner, ResponseVerifier};

const OP_AXFR: &str = "zone transfer (AXFR)";
const OP_UPDATE: &str = "update";

/// Most messages read for one zone transfer (a bound on a misbehaving server).
const MAX_AXFR_MESSAGES: usize = 10_000;
/// A whole zone transfer may take this many times the exchange timeout.
const AXFR_TIMEOUT_FACTOR: u32 = 12;

/// Retries of one exchange: how many attempts, and the backoff between them (doubling, capped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Wait before the second attempt.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 3, initial_backoff: Duration::from_millis(250), max_backoff: Duration::from_secs(5) }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt` (1-based; attempt 1 does not wait).
    pub fn backoff(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(attempt.saturating_sub(2).min(16));
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// How to sync one zone of a corporate DNS server. The defaults follow external-dns's RFC 2136 provider.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// The server that takes updates and transfers (`--rfc2136-host`/`--rfc2136-port`).
    pub server: SocketAddr,
    /// The zone (`--rfc2136-zone`), e.g. `aclab.uk`.
    pub zone: String,
    /// Owner id written into the TXT registry (`--txt-owner-id`).
    pub owner: String,
    /// `--txt-prefix`, e.g. `region01-aclab-vks-01-%{record_type}.`.
    pub txt_prefix: String,
    /// `--txt-suffix` (cannot be combined with the prefix).
    pub txt_suffix: String,
    /// `--txt-wildcard-replacement`.
    pub txt_wildcard_replacement: String,
    /// Which changes are allowed (`--policy`).
    pub policy: Policy,
    /// Record types managed (`--managed-record-types`; default A, AAAA, CNAME).
    pub managed_kinds: Vec<RecordKind>,
    /// Domains never touched (`--exclude-domains`, e.g. the load balancer's delegated `avi.aclab.uk`).
    pub exclude_domains: Vec<String>,
    /// TTL of records that give none (default 30 s).
    pub default_ttl: u32,
    /// Smallest TTL written (`--rfc2136-min-ttl`).
    pub min_ttl: u32,
    /// Changes per UPDATE message (`--rfc2136-batch-change-size`, default 50).
    pub batch_size: usize,
    /// Time allowed for one exchange (connect, send, all responses).
    pub timeout: Duration,
    /// Retries of an exchange that failed for a transient reason.
    pub retry: RetryPolicy,
}

impl SyncConfig {
    /// A configuration with external-dns's defaults for the rest (policy `sync`).
    pub fn new(server: SocketAddr, zone: impl Into<String>, owner: impl Into<String>) -> Self {
        SyncConfig {
            server,
            zone: zone.into(),
            owner: owner.into(),
            txt_prefix: String::new(),
            txt_suffix: String::new(),
            txt_wildcard_replacement: String::new(),
            policy: Policy::Sync,
            managed_kinds: vec![RecordKind::A, RecordKind::AAAA, RecordKind::CNAME],
            exclude_domains: vec![],
            default_ttl: DEFAULT_TTL,
            min_ttl: 0,
            batch_size: 50,
            timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        }
    }
}

/// What applying a plan did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// UPDATE messages the server accepted.
    pub messages: usize,
    /// Changes applied.
    pub applied: usize,
}

/// What one sync did: the plan, what was applied, and the state of every desired record.
#[derive(Debug, Clone)]
pub struct SyncReport {
    /// The plan that was applied (the last one, if the zone changed under us and was read again).
    pub plan: Plan,
    /// What was sent.
    pub applied: ApplyReport,
    /// The state of every desired record after the sync.
    pub statuses: Vec<RecordStatus>,
    /// Zone reads, including re-reads after a failed prerequisite.
    pub reads: u32,
}

/// Syncs desired records into one zone of a DNS server, external-dns compatible.
#[derive(Debug, Clone)]
pub struct Syncer {
    config: SyncConfig,
    zone: String,
    registry: TxtRegistry,
    signer: Arc<dyn MessageSigner>,
}

impl Syncer {
    /// A syncer for `config`, signing with `signer` (a [`crate::TsigSigner`] for TSIG).
    pub fn new(config: SyncConfig, signer: Arc<dyn MessageSigner>) -> Result<Self, SyncError> {
        let zone = normalize_name(&config.zone).map_err(|e| SyncError::Config(format!("zone: {e}")))?;
        let registry = TxtRegistry::new(
            config.owner.clone(),
            config.txt_prefix.clone(),
            config.txt_suffix.clone(),
            config.txt_wildcard_replacement.clone(),
        )
        .map_err(SyncError::Config)?;
        if config.batch_size == 0 {
            return Err(SyncError::Config("batch size must be at least 1".into()));
        }
        if config.retry.attempts == 0 {
            return Err(SyncError::Config("retry attempts must be at least 1".into()));
        }
        if config.timeout.is_zero() {
            return Err(SyncError::Config("timeout must be more than zero".into()));
        }
        if config.managed_kinds.is_empty() {
            return Err(SyncError::Config("no managed record types".into()));
        }
        Ok(Syncer { config, zone, registry, signer })
    }

    /// The configuration.
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// The TXT registry (owner id and record names).
    pub fn registry(&self) -> &TxtRegistry {
        &self.registry
    }

    fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            policy: self.config.policy,
            managed_kinds: self.config.managed_kinds.clone(),
            exclude_domains: self.config.exclude_domains.clone(),
            default_ttl: self.config.default_ttl,
            min_ttl: self.config.min_ttl,
        }
    }

    fn exchange(&self) -> Exchange<'_> {
        Exchange {
            server: self.config.server,
            zone: &self.zone,
            timeout: self.config.timeout,
            signer: self.signer.as_ref(),
        }
    }

    /// Reads the zone by a signed zone transfer (retried with backoff on transient errors).
    pub async fn read_zone(&self) -> Result<ZoneState, SyncError> {
        let exchange = self.exchange();
        let records = self.with_retry(OP_AXFR, || exchange.axfr()).await?;
        Ok(ZoneState::from_records(&self.zone, &records))
    }

    /// The plan for `desired` against `zone` (no network).
    pub fn plan_against(&self, desired: &[DesiredRecord], zone: &ZoneState) -> Plan {
        compute_plan(desired, zone, &self.registry, &self.plan_options())
    }

    /// Reads the zone and returns what a sync would change, changing nothing: the dry-run (print it with
    /// `{}`).
    pub async fn plan(&self, desired: &[DesiredRecord]) -> Result<Plan, SyncError> {
        let zone = self.read_zone().await?;
        Ok(self.plan_against(desired, &zone))
    }

    /// Applies `plan`: creates, then updates, then deletes, `batch_size` changes per UPDATE message, each
    /// message retried on transient errors. Stops at the first message that fails; the next sync reads the
    /// zone again and plans what is left.
    pub async fn apply(&self, plan: &Plan) -> Result<ApplyReport, SyncError> {
        let mut report = ApplyReport { messages: 0, applied: 0 };
        let zone_name = fqdn(&self.zone);
        for batch in plan.changes.chunks(self.config.batch_size) {
            let message = update_message(&zone_name, batch).map_err(|reason| SyncError::Sign {
                zone: self.zone.clone(),
                operation: OP_UPDATE,
                reason,
            })?;
            let exchange = self.exchange();
            self.with_retry(OP_UPDATE, || exchange.update(message.clone())).await?;
            report.messages += 1;
            report.applied += batch.len();
            for change in batch {
                tracing::info!(zone = %self.zone, server = %self.config.server, "dns sync applied: {}", change_line(change));
            }
        }
        Ok(report)
    }

    /// One sync: read, plan, apply. When the zone changed between read and update (a prerequisite failed), it
    /// is read and planned again, at most `retry.attempts` times.
    pub async fn sync(&self, desired: &[DesiredRecord]) -> Result<SyncReport, SyncError> {
        let mut reads = 0;
        loop {
            reads += 1;
            let plan = self.plan(desired).await?;
            if plan.is_empty() {
                tracing::debug!(zone = %self.zone, "dns sync: nothing to change");
                let statuses = plan.statuses();
                return Ok(SyncReport { plan, applied: ApplyReport { messages: 0, applied: 0 }, statuses, reads });
            }
            match self.apply(&plan).await {
                Ok(applied) => {
                    let statuses = plan
                        .statuses()
                        .into_iter()
                        .map(|mut s| {
                            if matches!(s.state, RecordState::Pending(_)) {
                                s.state = RecordState::Published;
                            }
                            s
                        })
                        .collect();
                    return Ok(SyncReport { plan, applied, statuses, reads });
                }
                Err(SyncError::ZoneChanged { .. }) if reads < self.config.retry.attempts => {
                    tracing::warn!(zone = %self.zone, "dns sync: the zone changed while syncing; reading it again");
                    tokio::time::sleep(self.config.retry.backoff(reads + 1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn with_retry<T, F, Fut>(&self, operation: &'static str, mut f: F) -> Result<T, SyncError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SyncError>>,
    {
        let retry = self.config.retry;
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                // A failed prerequisite needs a new read, not the same message again.
                Err(e)
                    if e.is_transient() && !matches!(e, SyncError::ZoneChanged { .. }) && attempt < retry.attempts =>
                {
                    attempt += 1;
                    let wait = retry.backoff(attempt);
                    tracing::warn!(
                        zone = %self.zone, server = %self.config.server, error = %e,
                        "dns sync: {operation} failed; attempt {attempt}/{} in {wait:?}", retry.attempts
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    tracing::error!(zone = %self.zone, server = %self.config.server, error = %e, "dns sync: {operation} failed");
                    return Err(e);
                }
            }
        }
    }
}

/// Marks every record of `statuses` that a failed sync left unpublished with the error.
pub fn statuses_after_error(plan: &Plan, error: &SyncError) -> Vec<RecordStatus> {
    plan.statuses()
        .into_iter()
        .map(|mut s| {
            if matches!(s.state, RecordState::Pending(_)) {
                s.state = RecordState::Error(error.to_string());
            }
            s
        })
        .collect()
}

fn change_line(change: &Change) -> String {
    let mut line = format!("{} {} {}", change.action, change.name, change.kind);
    if let Some(after) = &change.after {
        line.push_str(&format!(" -> {} (TTL {})", after.values.join(","), after.ttl));
    }
    if !change.resource.is_empty() {
        line.push_str(&format!(" [{}]", change.resource));
    }
    line
}

/// The RDATA of a value in canonical form.
fn rdata(kind: RecordKind, value: &str) -> Result<RData, String> {
    Ok(match kind {
        RecordKind::A => RData::A(A(value.parse::<Ipv4Addr>().map_err(|e| format!("{value:?}: {e}"))?)),
        RecordKind::AAAA => RData::AAAA(AAAA(value.parse::<Ipv6Addr>().map_err(|e| format!("{value:?}: {e}"))?)),
        RecordKind::CNAME => RData::CNAME(CNAME(
            Name::from_ascii(format!("{}.", value.trim_end_matches('.'))).map_err(|e| format!("{value:?}: {e}"))?,
        )),
        // Character strings are at most 255 bytes: longer text is split, as zone files and external-dns do.
        RecordKind::TXT => RData::TXT(TXT::from_bytes(if value.is_empty() {
            vec![&[][..]]
        } else {
            value.as_bytes().chunks(255).collect()
        })),
    })
}

fn record(name: &str, ttl: u32, class: DNSClass, kind: RecordKind, value: &str) -> Result<Record, String> {
    let mut r = Record::from_rdata(fqdn(name), ttl, rdata(kind, value)?);
    r.dns_class = class;
    Ok(r)
}

/// One RFC 2136 UPDATE message for a batch of changes: the prerequisites of every change, then each change's
/// deletes (class NONE, exact values) and adds.
pub(crate) fn update_message(zone: &Name, changes: &[Change]) -> Result<Message, String> {
    let mut message = Message::query();
    message.metadata.op_code = OpCode::Update;
    message.metadata.recursion_desired = false;
    let mut query = Query::new();
    query.set_name(zone.clone()).set_query_class(DNSClass::IN).set_query_type(RecordType::SOA);
    message.add_zone(query);
    let mut prerequisites: Vec<Record> = Vec::new();
    let mut push_prereq = |r: Record| {
        if !prerequisites.contains(&r) {
            prerequisites.push(r);
        }
    };
    for change in changes {
        for p in &change.prerequisites {
            match p {
                Prerequisite::RrsetEquals { name, kind, values } => {
                    for v in values {
                        push_prereq(record(name, 0, DNSClass::IN, *kind, v)?);
                    }
                }
                Prerequisite::RrsetAbsent { name, kind } => {
                    let mut r = Record::update0(fqdn(name), 0, kind.record_type());
                    r.dns_class = DNSClass::NONE;
                    push_prereq(r);
                }
                Prerequisite::NameAbsent { name } => {
                    let mut r = Record::update0(fqdn(name), 0, RecordType::ANY);
                    r.dns_class = DNSClass::NONE;
                    push_prereq(r);
                }
            }
        }
    }
    message.add_pre_requisites(prerequisites);
    for change in changes {
        for rr in &change.deletes {
            message.add_update(record(&rr.name, 0, DNSClass::NONE, rr.kind, &rr.value)?);
        }
        for rr in &change.adds {
            message.add_update(record(&rr.name, rr.ttl, DNSClass::IN, rr.kind, &rr.value)?);
        }
    }
    Ok(message)
}

/// One request/response exchange over TCP with the server (external-dns always uses TCP for RFC 2136).
struct Exchange<'a> {
    server: SocketAddr,
    zone: &'a str,
    timeout: Duration,
    signer: &'a dyn MessageSigner,
}

impl Exchange<'_> {
    fn err_protocol(&self, operation: &'static str, reason: impl Into<String>) -> SyncError {
        SyncError::Protocol { server: self.server, zone: self.zone.to_string(), operation, reason: reason.into() }
    }

    fn err_timeout(&self, operation: &'static str) -> SyncError {
        SyncError::Timeout { server: self.server, zone: self.zone.to_string(), operation, timeout: self.timeout }
    }

    fn err_unreachable(&self, operation: &'static str, source: std::io::Error) -> SyncError {
        SyncError::Unreachable { server: self.server, zone: self.zone.to_string(), operation, source }
    }

    async fn connect_and_send(
        &self,
        operation: &'static str,
        message: Message,
        deadline: Instant,
    ) -> Result<(TcpStream, u16, Option<Box<dyn ResponseVerifier>>), SyncError> {
        let id = message.metadata.id;
        let signed = self.signer.sign(self.server, message).await.map_err(|reason| SyncError::Sign {
            zone: self.zone.to_string(),
            operation,
            reason,
        })?;
        if signed.bytes.len() > u16::MAX as usize {
            return Err(SyncError::Sign {
                zone: self.zone.to_string(),
                operation,
                reason: format!("message of {} bytes is too large; use a smaller batch size", signed.bytes.len()),
            });
        }
        let mut stream = tokio::time::timeout_at(deadline.into(), TcpStream::connect(self.server))
            .await
            .map_err(|_| self.err_timeout(operation))?
            .map_err(|source| self.err_unreachable(operation, source))?;
        let mut frame = Vec::with_capacity(signed.bytes.len() + 2);
        frame.extend_from_slice(&(signed.bytes.len() as u16).to_be_bytes());
        frame.extend_from_slice(&signed.bytes);
        tokio::time::timeout_at(deadline.into(), stream.write_all(&frame))
            .await
            .map_err(|_| self.err_timeout(operation))?
            .map_err(|source| self.err_unreachable(operation, source))?;
        Ok((stream, id, signed.verifier))
    }

    async fn read_frame(
        &self,
        stream: &mut TcpStream,
        operation: &'static str,
        deadline: Instant,
    ) -> Result<Vec<u8>, SyncError> {
        let read = async {
            let len = stream.read_u16().await? as usize;
            let mut buf = vec![0u8; len];
            stream.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        match tokio::time::timeout_at(deadline.into(), read).await {
            Err(_) => Err(self.err_timeout(operation)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(self.err_protocol(operation, "the server closed the connection without a complete answer"))
            }
            Ok(Err(source)) => {
                Err(SyncError::Unreachable { server: self.server, zone: self.zone.to_string(), operation, source })
            }
            Ok(Ok(buf)) => Ok(buf),
        }
    }

    /// Checks one response: id, TSIG error, response code, then the signature.
    fn check(
        &self,
        operation: &'static str,
        raw: &[u8],
        id: u16,
        verifier: &mut Option<Box<dyn ResponseVerifier>>,
    ) -> Result<Message, SyncError> {
        let message = Message::from_vec(raw).map_err(|e| self.err_protocol(operation, e.to_string()))?;
        if message.metadata.id != id || message.metadata.message_type != MessageType::Response {
            return Err(self.err_protocol(operation, format!("unexpected message id {}", message.metadata.id)));
        }
        let zone = self.zone.to_string();
        // An unsigned error response with a TSIG error (BADSIG, BADKEY, BADTIME) says what the server disliked;
        // hickory's verifier would only call its empty MAC "truncated".
        if let Some(failure) = message.signature.as_ref().and_then(|s| s.data.error) {
            let failure = match failure {
                TsigError::BadSig => TsigFailure::BadSig,
                TsigError::BadKey => TsigFailure::BadKey,
                TsigError::BadTime => TsigFailure::BadTime,
                other => TsigFailure::Other(u16::from(other)),
            };
            return Err(SyncError::Tsig { server: self.server, zone, operation, key: self.signer.describe(), failure });
        }
        match message.metadata.response_code {
            ResponseCode::NoError => {}
            ResponseCode::Refused => {
                return Err(SyncError::Refused { server: self.server, zone, operation, key: self.signer.describe() });
            }
            ResponseCode::NotAuth => {
                return Err(SyncError::NotAuthoritative { server: self.server, zone, operation });
            }
            rcode @ (ResponseCode::YXDomain
            | ResponseCode::YXRRSet
            | ResponseCode::NXRRSet
            | ResponseCode::NXDomain)
                if operation == OP_UPDATE =>
            {
                return Err(SyncError::ZoneChanged { server: self.server, zone, rcode: rcode_name(rcode) });
            }
            rcode => {
                return Err(SyncError::Rcode { server: self.server, zone, operation, rcode: rcode_name(rcode) });
            }
        }
        if let Some(v) = verifier.as_mut() {
            if message.signature.is_none() {
                return Err(SyncError::ResponseVerification {
                    server: self.server,
                    zone,
                    operation,
                    reason: "the response is not signed".into(),
                });
            }
            v.verify(raw).map_err(|reason| SyncError::ResponseVerification {
                server: self.server,
                zone: self.zone.to_string(),
                operation,
                reason,
            })?;
        }
        Ok(message)
    }

    async fn update(&self, message: Message) -> Result<(), SyncError> {
        let deadline = Instant::now() + self.timeout;
        let (mut stream, id, mut verifier) = self.connect_and_send(OP_UPDATE, message, deadline).await?;
        let raw = self.read_frame(&mut stream, OP_UPDATE, deadline).await?;
        self.check(OP_UPDATE, &raw, id, &mut verifier)?;
        Ok(())
    }

    async fn axfr(&self) -> Result<Vec<Record>, SyncError> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        // A large zone takes several messages: each must come within the timeout, the whole within
        // AXFR_TIMEOUT_FACTOR times it.
        let overall = started + self.timeout * AXFR_TIMEOUT_FACTOR;
        let mut message = Message::query();
        message.metadata.recursion_desired = false;
        let mut query = Query::new();
        query.set_name(fqdn(self.zone)).set_query_class(DNSClass::IN).set_query_type(RecordType::AXFR);
        message.add_query(query);
        let mut edns = Edns::new();
        edns.set_max_payload(4096).set_version(0);
        message.edns = Some(edns);
        let (mut stream, id, mut verifier) = self.connect_and_send(OP_AXFR, message, deadline).await?;
        let mut records: Vec<Record> = Vec::new();
        for _ in 0..MAX_AXFR_MESSAGES {
            let next = (Instant::now() + self.timeout).min(overall);
            let raw = self.read_frame(&mut stream, OP_AXFR, next).await?;
            let message = self.check(OP_AXFR, &raw, id, &mut verifier)?;
            for record in message.answers {
                let is_soa = record.record_type() == RecordType::SOA;
                if records.is_empty() {
                    if !is_soa {
                        return Err(self.err_protocol(OP_AXFR, "the transfer does not start with the zone's SOA"));
                    }
                } else if is_soa {
                    // The closing SOA: the transfer is complete.
                    return Ok(records);
                }
                records.push(record);
            }
        }
        Err(self.err_protocol(OP_AXFR, format!("no end of the transfer after {MAX_AXFR_MESSAGES} messages")))
    }
}

fn rcode_name(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::YXDomain => "YXDOMAIN".into(),
        ResponseCode::YXRRSet => "YXRRSET".into(),
        ResponseCode::NXRRSet => "NXRRSET".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        ResponseCode::NotZone => "NOTZONE".into(),
        other => format!("{other} ({})", u16::from(other)),
    }
}

/// Parses a record kind list such as `A,AAAA,CNAME`.
pub fn parse_kinds(list: &str) -> Result<Vec<RecordKind>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<RecordKind>().map_err(|e| e.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Action, Rr};

    #[test]
    fn backoff_doubles_and_is_capped() {
        let r = RetryPolicy {
            attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        let waits: Vec<u128> = (1..=6).map(|a| r.backoff(a).as_millis()).collect();
        assert_eq!(waits, vec![0, 100, 200, 350, 350, 350]);
    }

    #[test]
    fn update_message_has_zone_prerequisites_deletes_then_adds() {
        let change = Change {
            action: Action::Update,
            name: "a.aclab.uk".into(),
            kind: RecordKind::A,
            resource: "r".into(),
            before: vec![],
            after: None,
            reason: String::new(),
            prerequisites: vec![
                Prerequisite::RrsetEquals {
                    name: "a.aclab.uk".into(),
                    kind: RecordKind::A,
                    values: vec!["10.0.0.1".into()],
                },
                Prerequisite::RrsetAbsent { name: "t.aclab.uk".into(), kind: RecordKind::TXT },
            ],
            deletes: vec![Rr { name: "a.aclab.uk".into(), kind: RecordKind::A, ttl: 0, value: "10.0.0.1".into() }],
            adds: vec![
                Rr { name: "a.aclab.uk".into(), kind: RecordKind::A, ttl: 30, value: "10.0.0.2".into() },
                Rr { name: "t.aclab.uk".into(), kind: RecordKind::TXT, ttl: 30, value: "x".repeat(300) },
            ],
        };
        let m = update_message(&fqdn("aclab.uk"), &[change]).unwrap();
        assert_eq!(m.metadata.op_code, OpCode::Update);
        assert_eq!(m.queries[0].query_type(), RecordType::SOA);
        assert_eq!(m.answers.len(), 2, "prerequisites");
        assert_eq!(m.answers[1].dns_class, DNSClass::NONE);
        assert_eq!(m.authorities.len(), 3, "updates");
        assert_eq!(m.authorities[0].dns_class, DNSClass::NONE);
        assert_eq!(m.authorities[0].ttl, 0);
        match &m.authorities[2].data {
            RData::TXT(t) => assert_eq!(t.txt_data.iter().map(|s| s.len()).collect::<Vec<_>>(), vec![255, 45]),
            other => panic!("{other:?}"),
        }
        // And it survives the wire.
        let back = Message::from_vec(&m.to_vec().unwrap()).unwrap();
        assert_eq!(back.authorities.len(), 3);
    }

    #[test]
    fn config_errors_are_clear() {
        let server: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let mut c = SyncConfig::new(server, "aclab.uk", "");
        let e = Syncer::new(c.clone(), Arc::new(crate::Unsigned)).unwrap_err();
        assert!(e.to_string().contains("owner id cannot be empty"), "{e}");
        c.owner = "o".into();
        c.txt_prefix = "p".into();
        c.txt_suffix = "s".into();
        let e = Syncer::new(c, Arc::new(crate::Unsigned)).unwrap_err();
        assert!(e.to_string().contains("cannot be combined"), "{e}");
        assert_eq!(parse_kinds("A, cname").unwrap(), vec![RecordKind::A, RecordKind::CNAME]);
    }
}
