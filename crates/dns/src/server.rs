//! The authoritative DNS server: hickory's `Catalog` of in-memory zones behind an atomic swap, served over UDP
//! and TCP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hickory_net::runtime::{Time, TokioRuntimeProvider};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use hickory_proto::rr::{RecordType, TSigResponseContext};
use hickory_server::Server;
use hickory_server::dnssec::NxProofKind;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, Catalog, LookupControlFlow, LookupError, LookupOptions, Nsec3QueryInfo, ZoneHandler,
    ZoneTransfer, ZoneType,
};
use std::collections::BTreeSet;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::ServerError;
use crate::model::{DesiredRecord, RecordKind, ZoneConfig, fqdn, normalize_name};
use crate::packet_cache::{self, PacketCache};

/// How long a TCP client may stay idle between queries.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses buffered per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Attempts to bind UDP and TCP to the same free port when port 0 is asked for.
const BIND_ATTEMPTS: usize = 20;

/// Starts Portico's authoritative DNS server.
#[derive(Debug, Clone, Copy)]
pub struct DnsServer;

impl DnsServer {
    /// Serves `zones` (apex SOA and NS, no other records until [`DnsServerHandle::update`]) on UDP and TCP at
    /// every address of `listen`. Port 0 picks a free port, the same for UDP and TCP.
    pub async fn start(listen: Vec<SocketAddr>, zones: Vec<ZoneConfig>) -> Result<DnsServerHandle, ServerError> {
        if listen.is_empty() {
            return Err(ServerError::NoListenAddress);
        }
        let zones = validate_zones(zones)?;
        let serial = unix_serial();
        let state = ServerState {
            zones: zones.into_iter().map(|config| ZoneData { config, serial, content: BTreeMap::new() }).collect(),
        };
        let catalog = build_catalog(&state.zones);
        let cache = Arc::new(PacketCache::default());
        let shared = Arc::new(Shared {
            catalog: ArcSwap::from_pointee(catalog),
            state: Mutex::new(state),
            cache: cache.clone(),
        });

        let mut server = Server::new(SwappableCatalog(shared.clone()));
        let mut addrs = Vec::new();
        let mut fast_paths = Vec::new();
        for addr in listen {
            let (udp, tcp) = bind_pair(addr).await?;
            addrs.push(udp.local_addr().map_err(|source| ServerError::Bind { protocol: "UDP", addr, source })?);
            // UDP goes through the packet cache; hickory answers its misses on a private loopback socket, and
            // TCP directly.
            let loopback: SocketAddr =
                if addr.is_ipv4() { ([127, 0, 0, 1], 0).into() } else { (std::net::Ipv6Addr::LOCALHOST, 0).into() };
            let private = UdpSocket::bind(loopback).await.map_err(|source| ServerError::Bind {
                protocol: "UDP",
                addr: loopback,
                source,
            })?;
            let private_addr =
                private.local_addr().map_err(|source| ServerError::Bind { protocol: "UDP", addr: loopback, source })?;
            server.register_socket(private);
            server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
            fast_paths.push(tokio::spawn(packet_cache::serve(udp, private_addr, cache.clone())));
        }
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Either an explicit shutdown or the handle being dropped.
            let _ = rx.await;
            for fast_path in fast_paths {
                fast_path.abort();
            }
            if let Err(e) = server.shutdown_gracefully().await {
                tracing::warn!(error = %e, "dns server stopped with an error");
            }
        });
        tracing::info!(?addrs, "dns server listening (UDP and TCP)");
        Ok(DnsServerHandle { addrs, shared, shutdown: Some(tx), task: Some(task) })
    }
}

async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), ServerError> {
    let mut last_err = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind(addr).await.map_err(|source| ServerError::Bind { protocol: "UDP", addr, source })?;
        let bound = udp.local_addr().map_err(|source| ServerError::Bind { protocol: "UDP", addr, source })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // The port is free for UDP but taken for TCP: with port 0, try another one.
            Err(source) if addr.port() == 0 => last_err = Some(source),
            Err(source) => return Err(ServerError::Bind { protocol: "TCP", addr: bound, source }),
        }
    }
    Err(ServerError::Bind {
        protocol: "TCP",
        addr,
        source: last_err.unwrap_or_else(|| std::io::Error::other("no free port")),
    })
}

/// A running DNS server. Dropping it stops the server.
pub struct DnsServerHandle {
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DnsServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServerHandle").field("addrs", &self.addrs).finish_non_exhaustive()
    }
}

/// What an update changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateReport {
    /// Zones whose records changed, with their new serial.
    pub changed: Vec<(String, u32)>,
    /// Records not served, and why (invalid, outside every zone, CNAME beside other data, ...).
    pub rejected: Vec<(DesiredRecord, String)>,
}

/// One zone as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneView {
    /// Apex.
    pub origin: String,
    /// SOA serial.
    pub serial: u32,
    /// Records besides SOA and NS, sorted by name and type.
    pub records: Vec<DesiredRecord>,
}

impl DnsServerHandle {
    /// The addresses served (UDP and TCP on each), with the ports actually bound.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Replaces the records of every zone with `records` in one atomic swap: a query sees either the old or
    /// the new set, never a mix. A zone's serial is bumped only when its records changed. Records that fall in
    /// no zone, or are invalid, are reported and left out.
    pub fn update(&self, records: &[DesiredRecord]) -> UpdateReport {
        let mut state = self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut report = UpdateReport::default();
        let mut contents: Vec<ZoneContent> = vec![BTreeMap::new(); state.zones.len()];
        let mut sources: BTreeMap<(usize, String, RecordKind), Vec<DesiredRecord>> = BTreeMap::new();

        for record in records {
            let normalized = match record.normalized() {
                Ok(r) => r,
                Err(e) => {
                    report.rejected.push((record.clone(), e.to_string()));
                    continue;
                }
            };
            // The most specific zone holds the name.
            let zone = state
                .zones
                .iter()
                .enumerate()
                .filter(|(_, z)| in_zone(&normalized.name, &z.config.origin))
                .max_by_key(|(_, z)| z.config.origin.len())
                .map(|(i, _)| i);
            let Some(zone) = zone else {
                report.rejected.push((record.clone(), "not in any zone this server is authoritative for".into()));
                continue;
            };
            if normalized.kind == RecordKind::CNAME && normalized.name == state.zones[zone].config.origin {
                report.rejected.push((record.clone(), "a CNAME cannot be at the zone apex".into()));
                continue;
            }
            sources.entry((zone, normalized.name.clone(), normalized.kind)).or_default().push(normalized);
        }

        // Several sources for one name and type: addresses and texts are merged; the lowest TTL wins; a CNAME
        // keeps the smallest target. A CNAME beside other data at its name is left out.
        for ((zone, name, kind), group) in &sources {
            let has_other = sources.keys().any(|(z, n, k)| z == zone && n == name && k != kind);
            if *kind == RecordKind::CNAME && has_other {
                for r in group {
                    report.rejected.push((r.clone(), "a CNAME cannot share its name with other records".into()));
                }
                continue;
            }
            let default_ttl = state.zones[*zone].config.ttl;
            let ttl = group.iter().map(|r| if r.ttl == 0 { default_ttl } else { r.ttl }).min().unwrap_or(default_ttl);
            let mut targets: Vec<String> = group.iter().flat_map(|r| r.targets.iter().cloned()).collect();
            targets.sort();
            targets.dedup();
            if *kind == RecordKind::CNAME && targets.len() > 1 {
                for r in group.iter().filter(|r| r.targets[0] != targets[0]) {
                    report.rejected.push((r.clone(), format!("another source wants CNAME {}", targets[0])));
                }
                targets.truncate(1);
            }
            contents[*zone].insert((name.clone(), *kind), (ttl, targets));
        }

        let mut changed = false;
        for (zone, content) in state.zones.iter_mut().zip(contents) {
            if zone.content != content {
                zone.serial = next_serial(zone.serial);
                zone.content = content;
                changed = true;
                report.changed.push((zone.config.origin.clone(), zone.serial));
            }
        }
        if changed {
            self.shared.catalog.store(Arc::new(build_catalog(&state.zones)));
            self.shared.cache.clear();
            tracing::info!(changed = ?report.changed, "dns zones updated");
        }
        for (record, reason) in &report.rejected {
            tracing::warn!(record = %record, %reason, "dns record not served");
        }
        report
    }

    /// The serial of the zone `origin`.
    pub fn serial(&self, origin: &str) -> Option<u32> {
        let origin = origin.trim_end_matches('.').to_ascii_lowercase();
        let state = self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.zones.iter().find(|z| z.config.origin == origin).map(|z| z.serial)
    }

    /// What the server answers: every zone with its serial and records (for `portico dns records`).
    pub fn zones(&self) -> Vec<ZoneView> {
        let state = self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state
            .zones
            .iter()
            .map(|z| ZoneView {
                origin: z.config.origin.clone(),
                serial: z.serial,
                records: z
                    .content
                    .iter()
                    .map(|((name, kind), (ttl, targets))| DesiredRecord {
                        name: name.clone(),
                        kind: *kind,
                        targets: targets.clone(),
                        ttl: *ttl,
                        resource: String::new(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Stops the server and waits until its sockets are closed.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for DnsServerHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

struct Shared {
    catalog: ArcSwap<Catalog>,
    state: Mutex<ServerState>,
    /// Finished UDP answers; cleared whenever the catalog changes.
    cache: Arc<PacketCache>,
}

struct ServerState {
    zones: Vec<ZoneData>,
}

/// A zone's records besides SOA and NS: TTL and sorted values by name and type.
type ZoneContent = BTreeMap<(String, RecordKind), (u32, Vec<String>)>;

struct ZoneData {
    config: ZoneConfig,
    serial: u32,
    content: ZoneContent,
}

/// Hands each request to the catalog current when it arrived.
struct SwappableCatalog(Arc<Shared>);

#[async_trait::async_trait]
impl RequestHandler for SwappableCatalog {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, response_handle: R) -> ResponseInfo {
        let catalog = self.0.catalog.load_full();
        catalog.handle_request::<R, T>(request, response_handle).await
    }
}

fn in_zone(name: &str, origin: &str) -> bool {
    name == origin || name.ends_with(&format!(".{origin}"))
}

fn unix_serial() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(1).max(1)
}

/// The next serial: the current time when that is later (as BIND's `unixtime` method), else one more
/// (RFC 1982 arithmetic).
fn next_serial(current: u32) -> u32 {
    let now = unix_serial();
    let ahead = now.wrapping_sub(current);
    if ahead != 0 && ahead < (1 << 31) { now } else { current.wrapping_add(1).max(1) }
}

fn validate_zones(zones: Vec<ZoneConfig>) -> Result<Vec<ZoneConfig>, ServerError> {
    let mut out: Vec<ZoneConfig> = Vec::new();
    for mut zone in zones {
        let invalid = |reason: String| ServerError::InvalidZone { origin: zone.origin.clone(), reason };
        let origin = normalize_name(&zone.origin).map_err(|e| invalid(e.to_string()))?;
        if origin.starts_with("*.") {
            return Err(invalid("a zone origin cannot be a wildcard".into()));
        }
        if zone.ns.is_empty() {
            return Err(invalid("at least one name server (ns) is needed for the apex NS records".into()));
        }
        let mut ns = Vec::new();
        for n in &zone.ns {
            ns.push(normalize_name(n).map_err(|e| invalid(format!("ns: {e}")))?);
        }
        let hostmaster = if zone.hostmaster.trim().is_empty() {
            format!("hostmaster.{origin}")
        } else {
            normalize_name(&zone.hostmaster.replace('@', ".")).map_err(|e| invalid(format!("hostmaster: {e}")))?
        };
        if zone.ttl == 0 {
            return Err(invalid("ttl must be more than 0".into()));
        }
        if out.iter().any(|z| z.origin == origin) {
            return Err(invalid("configured twice".into()));
        }
        zone.origin = origin;
        zone.ns = ns;
        zone.hostmaster = hostmaster;
        if zone.negative_ttl == 0 {
            zone.negative_ttl = zone.ttl;
        }
        out.push(zone);
    }
    if out.is_empty() {
        return Err(ServerError::InvalidZone { origin: String::new(), reason: "no zone configured".into() });
    }
    Ok(out)
}

fn build_catalog(zones: &[ZoneData]) -> Catalog {
    let mut catalog = Catalog::new();
    for zone in zones {
        let handler = PorticoZone::new(zone, build_zone(zone));
        catalog.upsert(LowerName::new(&fqdn(&zone.config.origin)), vec![Arc::new(handler) as Arc<dyn ZoneHandler>]);
    }
    catalog
}

fn build_zone(zone: &ZoneData) -> InMemoryZoneHandler<TokioRuntimeProvider> {
    let config = &zone.config;
    let origin = fqdn(&config.origin);
    let mut handler =
        InMemoryZoneHandler::<TokioRuntimeProvider>::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny, None);
    let soa = SOA::new(
        fqdn(&config.ns[0]),
        fqdn(&config.hostmaster),
        zone.serial,
        config.refresh as i32,
        config.retry as i32,
        config.expire as i32,
        config.negative_ttl,
    );
    let mut insert = |record: Record| {
        let text = format!("{} {}", record.name, record.record_type());
        if !handler.upsert_mut(record, zone.serial) {
            tracing::warn!(record = %text, "dns: record refused by the zone");
        }
    };
    insert(Record::from_rdata(origin.clone(), config.ttl, RData::SOA(soa)));
    for ns in &config.ns {
        insert(Record::from_rdata(origin.clone(), config.ttl, RData::NS(NS(fqdn(ns)))));
    }
    for ((name, kind), (ttl, targets)) in &zone.content {
        let owner: Name = fqdn(name);
        for target in targets {
            let rdata = match kind {
                RecordKind::A => target.parse().map(|ip| RData::A(A(ip))).ok(),
                RecordKind::AAAA => target.parse().map(|ip| RData::AAAA(AAAA(ip))).ok(),
                RecordKind::CNAME => Some(RData::CNAME(CNAME(fqdn(target)))),
                RecordKind::TXT => Some(RData::TXT(TXT::from_bytes(if target.is_empty() {
                    vec![&[][..]]
                } else {
                    target.as_bytes().chunks(255).collect()
                }))),
            };
            if let Some(rdata) = rdata {
                insert(Record::from_rdata(owner.clone(), *ttl, rdata));
            }
        }
    }
    handler
}

/// hickory's in-memory zone, with RFC 4592 wildcard semantics for other types: a name that only a wildcard
/// matches exists, so a query for a type the wildcard lacks is NODATA, not NXDOMAIN.
struct PorticoZone {
    inner: InMemoryZoneHandler<TokioRuntimeProvider>,
    /// Every owner name and its ancestors up to the origin (empty non-terminals exist too).
    existing: BTreeSet<LowerName>,
    origin: LowerName,
}

impl PorticoZone {
    fn new(zone: &ZoneData, inner: InMemoryZoneHandler<TokioRuntimeProvider>) -> Self {
        let origin = LowerName::new(&fqdn(&zone.config.origin));
        let mut existing = BTreeSet::new();
        existing.insert(origin.clone());
        for (name, _) in zone.content.keys() {
            let mut n = LowerName::new(&fqdn(name));
            while origin.zone_of(&n) && existing.insert(n.clone()) && n != origin {
                n = n.base_name();
            }
        }
        PorticoZone { inner, existing, origin }
    }

    /// Whether `name` does not exist but a wildcard at its closest encloser matches it.
    fn wildcard_matches(&self, name: &LowerName) -> bool {
        if self.existing.contains(name) || !self.origin.zone_of(name) {
            return false;
        }
        let mut encloser = name.base_name();
        while !self.existing.contains(&encloser) {
            if encloser == self.origin || encloser.is_root() {
                return false;
            }
            encloser = encloser.base_name();
        }
        Name::from(&encloser)
            .prepend_label("*")
            .is_ok_and(|wildcard| self.existing.contains(&LowerName::new(&wildcard)))
    }

    fn fix_nodata(&self, name: &LowerName, flow: LookupControlFlow<AuthLookup>) -> LookupControlFlow<AuthLookup> {
        match flow {
            LookupControlFlow::Continue(Err(e)) if e.is_nx_domain() && self.wildcard_matches(name) => {
                LookupControlFlow::Continue(Err(LookupError::NameExists))
            }
            LookupControlFlow::Break(Err(e)) if e.is_nx_domain() && self.wildcard_matches(name) => {
                LookupControlFlow::Break(Err(LookupError::NameExists))
            }
            other => other,
        }
    }
}

#[async_trait::async_trait]
impl ZoneHandler for PorticoZone {
    fn zone_type(&self) -> ZoneType {
        self.inner.zone_type()
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        self.inner.axfr_policy()
    }

    fn origin(&self) -> &LowerName {
        self.inner.origin()
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        request_info: Option<&hickory_server::server::RequestInfo<'_>>,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        let flow = self.inner.lookup(name, rtype, request_info, lookup_options).await;
        self.fix_nodata(name, flow)
    }

    async fn search(
        &self,
        request: &Request,
        lookup_options: LookupOptions,
    ) -> (LookupControlFlow<AuthLookup>, Option<TSigResponseContext>) {
        let (flow, tsig) = self.inner.search(request, lookup_options).await;
        match request.request_info() {
            Ok(info) => (self.fix_nodata(info.query.name(), flow), tsig),
            Err(_) => (flow, tsig),
        }
    }

    async fn nsec_records(&self, name: &LowerName, lookup_options: LookupOptions) -> LookupControlFlow<AuthLookup> {
        self.inner.nsec_records(name, lookup_options).await
    }

    async fn nsec3_records(
        &self,
        info: Nsec3QueryInfo<'_>,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        self.inner.nsec3_records(info, lookup_options).await
    }

    async fn zone_transfer(
        &self,
        request: &Request,
        lookup_options: LookupOptions,
        now: u64,
    ) -> Option<(Result<ZoneTransfer, LookupError>, Option<TSigResponseContext>)> {
        self.inner.zone_transfer(request, lookup_options, now).await
    }

    fn nx_proof_kind(&self) -> Option<&NxProofKind> {
        self.inner.nx_proof_kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_only_move_forward() {
        let now = unix_serial();
        assert_eq!(next_serial(now + 1), now + 2, "never backwards when the clock is behind");
        assert_eq!(next_serial(now + 1000), now + 1001);
        assert_eq!(next_serial(5), now, "jumps to the time, like BIND's unixtime serials");
    }

    #[test]
    fn zone_validation_says_what_is_wrong() {
        let e = validate_zones(vec![ZoneConfig::new("avi.aclab.uk", vec![])]).unwrap_err();
        assert!(e.to_string().contains("at least one name server"), "{e}");
        let e = validate_zones(vec![
            ZoneConfig::new("avi.aclab.uk", vec!["ns.avi.aclab.uk".into()]),
            ZoneConfig::new("AVI.aclab.uk.", vec!["ns.avi.aclab.uk".into()]),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("configured twice"), "{e}");
        let ok = validate_zones(vec![ZoneConfig::new("Avi.Aclab.uk.", vec!["NS1.avi.aclab.uk".into()])]).unwrap();
        assert_eq!(ok[0].origin, "avi.aclab.uk");
        assert_eq!(ok[0].hostmaster, "hostmaster.avi.aclab.uk");
        assert_eq!(ok[0].negative_ttl, 30);
    }
}
