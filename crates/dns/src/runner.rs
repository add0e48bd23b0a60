//! The sync run in the background: at an interval and whenever the desired records change, with backoff after
//! failures, publishing each record's state for `/api/status`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::model::DesiredRecord;
use crate::plan::{RecordState, RecordStatus};
use crate::sync::Syncer;

/// Quiet time after a change of the desired records before syncing, so that a burst of changes (a reload)
/// makes one sync.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The outcome of the background sync so far.
#[derive(Debug, Clone, Default)]
pub struct SyncLoopStatus {
    /// Syncs run.
    pub runs: u64,
    /// When the last sync ended.
    pub last_run: Option<SystemTime>,
    /// When a sync last succeeded.
    pub last_success: Option<SystemTime>,
    /// The last sync's error (`None` when it succeeded), with the server and what to check.
    pub error: Option<String>,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// UPDATE messages sent by the last sync.
    pub messages: usize,
    /// The state of every desired record after the last sync (published, conflict: owned by X, error).
    pub records: Vec<RecordStatus>,
}

/// A background sync; dropping it stops the loop.
#[derive(Debug)]
pub struct SyncLoop {
    status: watch::Receiver<SyncLoopStatus>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SyncLoop {
    /// Runs `syncer` every `interval` (at least one second) and soon after `desired` changes. After a failure
    /// the next try comes after the syncer's retry backoff, doubling per failure, never later than `interval`.
    pub fn spawn(
        syncer: Arc<Syncer>,
        mut desired: watch::Receiver<Vec<DesiredRecord>>,
        interval: Duration,
    ) -> SyncLoop {
        let interval = interval.max(Duration::from_secs(1));
        let (status_tx, status) = watch::channel(SyncLoopStatus::default());
        let (stop, mut stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut state = SyncLoopStatus::default();
            loop {
                let records = desired.borrow_and_update().clone();
                let result = syncer.sync(&records).await;
                state.runs += 1;
                state.last_run = Some(SystemTime::now());
                match result {
                    Ok(report) => {
                        state.error = None;
                        state.consecutive_failures = 0;
                        state.last_success = state.last_run;
                        state.messages = report.applied.messages;
                        state.records = report.statuses;
                    }
                    Err(e) => {
                        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                        state.messages = 0;
                        // Every desired record: published if it was at the last success, else the error.
                        let previous = std::mem::take(&mut state.records);
                        state.records = records
                            .iter()
                            .map(|r| {
                                let name = r.name.trim_end_matches('.').to_ascii_lowercase();
                                let was_published = previous.iter().any(|p| {
                                    p.name == name
                                        && p.kind == r.kind
                                        && p.resource == r.resource
                                        && p.state == RecordState::Published
                                });
                                RecordStatus {
                                    name,
                                    kind: r.kind,
                                    resource: r.resource.clone(),
                                    state: if was_published {
                                        RecordState::Published
                                    } else {
                                        RecordState::Error(e.to_string())
                                    },
                                }
                            })
                            .collect();
                        state.error = Some(e.to_string());
                    }
                }
                let _ = status_tx.send(state.clone());
                let wait = if state.consecutive_failures == 0 {
                    interval
                } else {
                    syncer.config().retry.backoff(state.consecutive_failures.saturating_add(1)).min(interval)
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    changed = desired.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        tokio::time::sleep(DEBOUNCE).await;
                    }
                    _ = &mut stop_rx => break,
                }
            }
        });
        SyncLoop { status, stop: Some(stop), task: Some(task) }
    }

    /// The latest status.
    pub fn status(&self) -> SyncLoopStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every new status.
    pub fn subscribe(&self) -> watch::Receiver<SyncLoopStatus> {
        self.status.clone()
    }

    /// Stops the loop (after the sync in progress, if any) and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SyncLoop {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
