//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it.
//!
//! Every replica serves traffic; only the Lease holder writes status, issues certificates and syncs DNS.
//! A replica takes the Lease when it is free, or when the holder has not renewed it for a whole lease
//! duration *as this replica observed it* (the time is measured on the local monotonic clock from when the
//! record last changed, so clock skew between nodes does not matter). Updates carry the resourceVersion
//! that was read, so two candidates never both win. A leader that cannot renew for `renew_deadline`
//! steps down by itself before anyone else can take over, and a leader that stops gracefully releases the
//! Lease, so that the next one takes over at once.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Settings of the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the release namespace).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the pod name, plus the process id to tell restarts apart).
    pub identity: String,
    /// How long a Lease holds without renewal (client-go's default is 15 s).
    pub lease_duration: Duration,
}

impl LeaseConfig {
    /// The leader gives up when it could not renew for this long: two thirds of the lease, so that it has
    /// stopped acting as leader before another replica may take over.
    fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }

    /// How often candidates try and the leader renews.
    fn retry_period(&self) -> Duration {
        (self.lease_duration / 5).max(Duration::from_millis(200))
    }
}

/// Runs the election in the background.
pub struct LeaderElector {
    leader: watch::Receiver<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaderElector {
    /// Starts campaigning.
    pub fn start(client: kube::Client, config: LeaseConfig) -> Self {
        let (leader_tx, leader) = watch::channel(false);
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(campaign(Api::namespaced(client, &config.namespace), config, leader_tx, stop_rx));
        LeaderElector { leader, stop: Some(stop), task }
    }

    /// Whether this replica leads, and changes of it.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Stops campaigning and releases the Lease if held (bounded: a lost API server does not block it).
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), &mut self.task).await;
    }
}

/// What this replica last saw of the Lease: the record and when (locally) it last changed.
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    at: Instant,
}

async fn campaign(
    api: Api<Lease>,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut observed: Option<Observed> = None;
    let mut last_renewal: Option<Instant> = None;
    let mut last_error = None;
    loop {
        let started = Instant::now();
        let leading = *leader.borrow();
        // A leader must have stepped down by its deadline (last renewal + renew_deadline, well before anyone
        // may take over): no attempt may run past it.
        let deadline = last_renewal.map(|at| at + config.renew_deadline()).filter(|_| leading);
        let budget = deadline.map_or(config.renew_deadline() / 2, |d| {
            d.saturating_duration_since(started).min(config.renew_deadline() / 2)
        });
        let attempt = tokio::time::timeout(budget, try_acquire_or_renew(&api, &config, &mut observed));
        let leads = match attempt.await.unwrap_or_else(|_| Err("timed out".to_string())) {
            Ok(true) => {
                // The renewal counts from when it was sent: the API server's renewTime is no earlier.
                last_renewal = Some(started);
                last_error = None;
                true
            }
            Ok(false) => {
                last_error = None;
                false
            }
            // A leader keeps leading through short API hiccups, up to the renew deadline.
            Err(error) => {
                // Said once per distinct error: a missing Role or namespace must show, but not every retry.
                if last_error.as_ref() != Some(&error) {
                    tracing::warn!(%error, lease = %config.name, namespace = %config.namespace, "lease not read or written");
                    last_error = Some(error);
                }
                leading && deadline.is_some_and(|d| Instant::now() < d)
            }
        };
        if leads != *leader.borrow() {
            if leads {
                tracing::info!(lease = %config.name, identity = %config.identity, "became the leader");
            } else {
                tracing::warn!(lease = %config.name, identity = %config.identity, "no longer the leader");
            }
            leader.send_replace(leads);
        }
        // A leader wakes by its deadline at the latest, to step down if it could not renew.
        let mut pause = config.retry_period();
        if let Some(deadline) = last_renewal.map(|at| at + config.renew_deadline()).filter(|_| leads) {
            pause = pause.min(deadline.saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = &mut stop => break,
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        if let Err(error) = release(&api, &config).await {
            tracing::warn!(%error, lease = %config.name, "lease not released; the next leader waits for it to expire");
        } else {
            tracing::info!(lease = %config.name, "lease released");
        }
    }
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// One round: `Ok(true)` when this replica holds the Lease afterwards.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, String> {
    acquire_or_renew(api, config, observed).await.map_err(|e| e.to_string())
}

async fn acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let now = Instant::now();
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(config.name.clone()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds(config.lease_duration)),
                acquire_time: Some(now_micro()),
                renew_time: Some(now_micro()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // Another replica created it first.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    // The record changed since we last looked: the holder is alive (or new); restart the clock.
    let changed = observed.as_ref().is_none_or(|o| o.holder != holder || o.renew_time != spec.renew_time);
    if changed {
        *observed = Some(Observed { holder: holder.clone(), renew_time: spec.renew_time.clone(), at: now });
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(config.lease_duration, Duration::from_secs);
    let ours = holder.as_deref() == Some(config.identity.as_str());
    let expired = observed.as_ref().is_some_and(|o| now.duration_since(o.at) >= duration);
    if !ours && holder.is_some() && !expired {
        return Ok(false);
    }
    if !ours {
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(now_micro());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now_micro());
    spec.lease_duration_seconds = Some(seconds(config.lease_duration));
    // The resourceVersion read above guards the update: a concurrent writer makes it fail with 409.
    match api.replace(&config.name, &PostParams::default(), &lease).await {
        Ok(written) => {
            let spec = written.spec.unwrap_or_default();
            *observed = Some(Observed { holder: spec.holder_identity, renew_time: spec.renew_time, at: now });
            Ok(true)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

/// Hands the Lease back: no holder, so candidates take it at their next try.
async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else { return Ok(()) };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = Some(now_micro());
    api.replace(&config.name, &PostParams::default(), &lease).await.map(|_| ())
}
