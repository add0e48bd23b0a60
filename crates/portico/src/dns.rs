//! The DNS runtime: Portico's authoritative server, updated from the IR on every applied configuration (the
//! same apply as the proxy), and the external-dns compatible sync of `ir.dns.publish` into the corporate DNS,
//! run in the background with its record-level status on `/api/status` (`dns`).

use crate::config_file::{DnsConfig, SyncSettings};
use portico_dns::{
    DesiredRecord, DnsServer, DnsServerHandle, MessageSigner, RecordKind, RecordState, SyncLoop, Syncer, TsigSigner,
    Unsigned,
};
use portico_ir::{DnsRecord, DnsRecordType, Ir};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// `portico dns ...`.
#[derive(clap::Subcommand)]
pub enum DnsCommand {
    /// Print the records Portico's DNS server answers for these manifests, zone by zone (needs --config-file).
    Records(crate::SourceArgs),
    /// Read the corporate zone (signed AXFR) and print what the sync would change, changing nothing (needs
    /// --config-file with dns.sync, and the server reachable).
    Plan(crate::SourceArgs),
}

/// Runs a `portico dns` subcommand.
pub async fn command(command: DnsCommand) -> anyhow::Result<()> {
    let (DnsCommand::Records(args) | DnsCommand::Plan(args)) = &command;
    let file = crate::config_file::ConfigFile::load(args.config_file.as_deref())?;
    let Some(config) = file.dns_config()? else {
        anyhow::bail!(
            "no DNS configured: pass --config-file with a `dns:` section (see examples/article/portico.yaml)"
        );
    };
    let mut loaded = crate::load_once(args)?;
    for diagnostic in &loaded.diagnostics {
        eprintln!("{diagnostic}");
    }
    // As `portico validate`: certificates are issued in memory, so listeners that wait for one count as ready.
    let mut certs = crate::certs::CertManager::new(None, args.cluster_resource_namespace.clone());
    certs.reconcile(&mut loaded.snapshot, std::time::SystemTime::now());
    let translation = portico_translate::translate(&loaded.snapshot, &file.translate_options(args.translate.options()));
    for diagnostic in &translation.diagnostics {
        eprintln!("{diagnostic}");
    }
    match command {
        DnsCommand::Records(_) => print_records(&config, &translation.ir).await,
        DnsCommand::Plan(_) => match &config.sync {
            Some(sync) => print_plan(sync, &translation.ir).await,
            None => anyhow::bail!("no DNS sync configured: the config file has no `dns.sync:` section"),
        },
    }
}

/// The running DNS server and sync.
pub struct DnsRuntime {
    server: Option<DnsServerHandle>,
    sync: Option<SyncRuntime>,
    /// Served records the server refused at the last apply, and why.
    rejected: Mutex<Vec<(String, String)>>,
}

struct SyncRuntime {
    syncer: Arc<Syncer>,
    interval: std::time::Duration,
    /// The loop starts at the first apply, so that a restart never syncs an empty set (which would delete
    /// every record Portico owns until the configuration is read).
    running: Mutex<Option<(watch::Sender<Vec<DesiredRecord>>, SyncLoop)>>,
    /// Records not handed to the sync: outside its zone or in an excluded domain.
    skipped: Mutex<Vec<(DesiredRecord, String)>>,
    /// Only the leader syncs (on Kubernetes, one replica of several); standalone Portico always leads.
    leading: std::sync::atomic::AtomicBool,
}

impl DnsRuntime {
    /// Starts the server (when zones are configured) and prepares the sync (when configured).
    pub async fn start(config: &DnsConfig) -> anyhow::Result<Arc<DnsRuntime>> {
        let server = if config.zones.is_empty() {
            None
        } else {
            Some(
                DnsServer::start(config.listen.clone(), config.zones.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot start the DNS server: {e}"))?,
            )
        };
        let sync = config.sync.as_ref().map(sync_runtime).transpose()?;
        Ok(Arc::new(DnsRuntime { server, sync, rejected: Mutex::new(Vec::new()) }))
    }

    /// Serves the IR's records and hands its publish records to the sync. Cheap when nothing changed: the
    /// server keeps its serial and the sync is not woken.
    pub fn apply(&self, ir: &Ir) {
        if let Some(server) = &self.server {
            let records: Vec<DesiredRecord> = ir.dns.records.iter().map(desired).collect();
            let report = server.update(&records);
            *lock(&self.rejected) = report.rejected.iter().map(|(r, why)| (r.to_string(), why.clone())).collect();
        }
        if let Some(sync) = &self.sync {
            let (wanted, skipped) = sync.select(ir.dns.publish.iter().map(desired));
            *lock(&sync.skipped) = skipped;
            let mut running = lock(&sync.running);
            if !sync.leading.load(std::sync::atomic::Ordering::Relaxed) {
                // A follower never writes to the corporate DNS; dropping the loop stops it.
                running.take();
                return;
            }
            match running.as_ref() {
                Some((sender, _)) => {
                    sender.send_if_modified(|current| {
                        let changed = *current != wanted;
                        if changed {
                            *current = wanted;
                        }
                        changed
                    });
                }
                None => {
                    let (sender, receiver) = watch::channel(wanted);
                    let sync_loop = SyncLoop::spawn(sync.syncer.clone(), receiver, sync.interval);
                    *running = Some((sender, sync_loop));
                }
            }
        }
    }

    /// Starts or stops the sync with leadership (the next [`DnsRuntime::apply`] acts on it). The server
    /// answers on every replica either way.
    pub fn set_leading(&self, leading: bool) {
        if let Some(sync) = &self.sync {
            sync.leading.store(leading, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The `dns` section of `/api/status`.
    pub fn status(&self) -> serde_json::Value {
        let mut out = json!({});
        if let Some(server) = &self.server {
            let zones: Vec<serde_json::Value> = server
                .zones()
                .iter()
                .map(|z| {
                    json!({
                        "origin": z.origin,
                        "serial": z.serial,
                        "records": z.records.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let rejected: Vec<serde_json::Value> =
                lock(&self.rejected).iter().map(|(r, why)| json!({"record": r, "reason": why})).collect();
            out["server"] = json!({
                "listen": server.local_addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
                "zones": zones,
                "rejected": rejected,
            });
        }
        if let Some(sync) = &self.sync {
            out["sync"] = sync.status();
        }
        out
    }
}

fn sync_runtime(settings: &SyncSettings) -> anyhow::Result<SyncRuntime> {
    let signer: Arc<dyn MessageSigner> = match &settings.key {
        Some(key) => Arc::new(TsigSigner::new(key.clone()).map_err(|e| anyhow::anyhow!("dns.sync.tsig: {e}"))?),
        None => {
            tracing::warn!(server = %settings.config.server, "dns sync: no TSIG key configured; updates are sent unsigned");
            Arc::new(Unsigned)
        }
    };
    let syncer = Arc::new(Syncer::new(settings.config.clone(), signer)?);
    Ok(SyncRuntime {
        syncer,
        interval: settings.interval,
        running: Mutex::new(None),
        skipped: Mutex::new(Vec::new()),
        leading: std::sync::atomic::AtomicBool::new(true),
    })
}

impl SyncRuntime {
    /// Splits records into those the sync manages and those outside its zone or excluded, with the reason.
    fn select(
        &self,
        records: impl Iterator<Item = DesiredRecord>,
    ) -> (Vec<DesiredRecord>, Vec<(DesiredRecord, String)>) {
        let config = self.syncer.config();
        let zone = normalize(&config.zone);
        let mut wanted = Vec::new();
        let mut skipped = Vec::new();
        for record in records {
            let name = normalize(&record.name);
            if !in_domain(&name, &zone) {
                skipped.push((record, format!("not in the synced zone {zone}")));
            } else if let Some(domain) =
                config.exclude_domains.iter().map(|d| normalize(d)).find(|d| in_domain(&name, d))
            {
                skipped.push((record, format!("in excluded domain {domain} (served by Portico's DNS)")));
            } else {
                wanted.push(record);
            }
        }
        (wanted, skipped)
    }

    fn status(&self) -> serde_json::Value {
        let config = self.syncer.config();
        let mut out = json!({
            "server": config.server.to_string(),
            "zone": config.zone,
            "owner": config.owner,
            "policy": config.policy.as_str(),
            "intervalSeconds": self.interval.as_secs(),
        });
        let mut records: Vec<serde_json::Value> = Vec::new();
        match lock(&self.running).as_ref() {
            None => out["state"] = json!("waiting for the first configuration"),
            Some((_, sync_loop)) => {
                let status = sync_loop.status();
                out["runs"] = json!(status.runs);
                out["lastRun"] = json!(status.last_run.map(unix_seconds));
                out["lastSuccess"] = json!(status.last_success.map(unix_seconds));
                out["error"] = json!(status.error);
                out["consecutiveFailures"] = json!(status.consecutive_failures);
                out["messages"] = json!(status.messages);
                for record in &status.records {
                    let (state, detail) = match &record.state {
                        RecordState::Published => ("published", String::new()),
                        RecordState::Pending(action) => ("pending", action.to_string()),
                        RecordState::HeldBack(action) => ("held back", format!("{action} held back by the policy")),
                        RecordState::Conflict(reason) => ("conflict", reason.to_string()),
                        RecordState::Error(error) => ("error", error.clone()),
                    };
                    records.push(json!({
                        "name": record.name,
                        "type": record.kind.as_str(),
                        "resource": record.resource,
                        "state": state,
                        "detail": detail,
                    }));
                }
            }
        }
        for (record, why) in lock(&self.skipped).iter() {
            records.push(json!({
                "name": record.name,
                "type": record.kind.as_str(),
                "resource": record.resource,
                "state": "skipped",
                "detail": why,
            }));
        }
        out["records"] = json!(records);
        out
    }
}

/// The DNS crate's record for an IR record.
pub fn desired(record: &DnsRecord) -> DesiredRecord {
    let kind = match record.kind {
        DnsRecordType::A => RecordKind::A,
        DnsRecordType::Aaaa => RecordKind::AAAA,
        DnsRecordType::Cname => RecordKind::CNAME,
    };
    DesiredRecord::new(record.name.clone(), kind, record.targets.clone(), record.ttl, record.resource.clone())
}

fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn in_domain(name: &str, domain: &str) -> bool {
    name == domain || name.strip_suffix(domain).is_some_and(|head| head.ends_with('.'))
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `portico dns records`: what the server answers for `ir`, zone by zone, in zone-file form; the records it
/// refuses are listed with the reason. The server is started on an ephemeral loopback port just to build the
/// zones exactly as `portico run` would.
pub async fn print_records(config: &DnsConfig, ir: &Ir) -> anyhow::Result<()> {
    if config.zones.is_empty() {
        anyhow::bail!("the config file serves no zone (dns.zones is empty)");
    }
    let server = DnsServer::start(vec!["127.0.0.1:0".parse()?], config.zones.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot build the zones: {e}"))?;
    let records: Vec<DesiredRecord> = ir.dns.records.iter().map(desired).collect();
    let report = server.update(&records);
    for zone in server.zones() {
        let ns = config.zones.iter().find(|z| normalize(&z.origin) == zone.origin).map(|z| z.ns.clone());
        println!("; zone {} (serial {}), {} record(s)", zone.origin, zone.serial, zone.records.len());
        for name in ns.unwrap_or_default() {
            println!("{}. {} NS {}.", zone.origin, config.ttl, normalize(&name));
        }
        for record in &zone.records {
            let resources: Vec<&str> = ir
                .dns
                .records
                .iter()
                .filter(|r| normalize(&r.name) == record.name && desired(r).kind == record.kind)
                .map(|r| r.resource.as_str())
                .collect();
            let targets = record.targets.iter().map(|t| match record.kind {
                RecordKind::CNAME => format!("{t}."),
                _ => t.clone(),
            });
            for target in targets {
                println!("{}. {} {} {target} ; {}", record.name, record.ttl, record.kind, resources.join(", "));
            }
        }
    }
    for (record, why) in &report.rejected {
        println!("; not served: {record} ({}): {why}", record.resource);
    }
    server.shutdown().await;
    Ok(())
}

/// `portico dns plan`: reads the corporate zone and prints what a sync would change, changing nothing.
pub async fn print_plan(settings: &SyncSettings, ir: &Ir) -> anyhow::Result<()> {
    let runtime = sync_runtime(settings)?;
    let (wanted, skipped) = runtime.select(ir.dns.publish.iter().map(desired));
    // The error already names its cause; `{e}` keeps it from being printed twice by the `{:#}` chain.
    let plan = runtime.syncer.plan(&wanted).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    print!("{plan}");
    for (record, why) in skipped {
        println!("  - skipped {} {} ({}): {why}", record.name, record.kind, record.resource);
    }
    Ok(())
}
