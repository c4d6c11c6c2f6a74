//! Operator visibility: a status line at startup and on SIGUSR1, and a status file in the data
//! directory that `whisperengine status` reads (so status works without any network port).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{info, warn};
use whisper_actors::stats::{RuntimeStats, StatusSnapshot};

#[derive(Debug, Serialize, Deserialize)]
pub struct StatusFile {
    pub pid: u32,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
    pub llm_endpoint: String,
    pub status: StatusSnapshot,
    /// In cluster mode: this member's role, partitions and the members it sees.
    #[serde(default)]
    pub cluster: Option<ClusterStatus>,
}

/// What a cluster member shows in `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub role: String,
    pub node: String,
    pub members: Vec<String>,
    pub owned: Vec<u32>,
    pub standby: Vec<u32>,
    /// Messages waiting in each owned partition's queue (only those with any).
    pub queued: Vec<(u32, u32)>,
}

/// Where a cluster member keeps its [`ClusterStatus`] for the reporter.
pub type ClusterSlot = Arc<std::sync::Mutex<Option<ClusterStatus>>>;

pub fn status_path(data_dir: &Path) -> PathBuf {
    data_dir.join("status.json")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn write(path: &Path, file: &StatusFile) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(file).expect("status serialises"))?;
    f.sync_data()?;
    std::fs::rename(tmp, path)
}

/// Writes the status file every `interval` and logs the status line on SIGUSR1.
pub fn spawn_reporter(
    stats: Arc<RuntimeStats>,
    data_dir: PathBuf,
    interval: Duration,
    llm_endpoint: String,
    cluster: ClusterSlot,
) -> JoinHandle<()> {
    let started_at_ms = now_ms();
    let path = status_path(&data_dir);
    tokio::spawn(async move {
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                .map_err(|e| warn!(error = %e, "cannot listen for SIGUSR1"))
                .ok();
        let mut tick = tokio::time::interval(interval);
        loop {
            let signalled = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match usr1.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => true,
            };
            let snapshot = stats.snapshot();
            if signalled {
                info!(target: "whisperengine::status", "{}", snapshot.summary_line());
            }
            let file = StatusFile {
                pid: std::process::id(),
                started_at_ms,
                updated_at_ms: now_ms(),
                llm_endpoint: llm_endpoint.clone(),
                status: snapshot,
                cluster: cluster.lock().expect("cluster status lock").clone(),
            };
            // The write syncs to disk: it runs on the blocking pool, not on an async worker; so
            // does the trim that hands free heap pages back.
            let target = path.clone();
            let written = tokio::task::spawn_blocking(move || {
                crate::heap::trim();
                write(&target, &file)
            });
            match written.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, path = %path.display(), "cannot write the status file")
                }
                Err(e) => warn!(error = %e, "the status file writer failed"),
            }
        }
    })
}

/// Removes the status file on clean shutdown, so `status` does not report a stale process.
pub fn clear(data_dir: &Path) {
    let _ = std::fs::remove_file(status_path(data_dir));
}

/// Reads the status file for `whisperengine status`.
pub fn read(data_dir: &Path) -> Option<(StatusFile, bool)> {
    let bytes = std::fs::read(status_path(data_dir)).ok()?;
    let file: StatusFile = serde_json::from_slice(&bytes).ok()?;
    let alive = Path::new(&format!("/proc/{}", file.pid)).exists();
    Some((file, alive))
}

/// Human-readable rendering of a status snapshot.
pub fn render(file: &StatusFile, alive: bool) -> String {
    let s = &file.status;
    let age = Duration::from_millis(now_ms().saturating_sub(file.updated_at_ms));
    let mut out = String::new();
    let state = if alive {
        "running"
    } else {
        "NOT running (last report)"
    };
    out.push_str(&format!(
        "whisperengine pid {} {state}, status {} old\nLLM endpoint: {}\n",
        file.pid,
        humantime::format_duration(Duration::from_secs(age.as_secs())),
        file.llm_endpoint
    ));
    if s.config_generation > 0 {
        let loaded = std::time::UNIX_EPOCH + Duration::from_millis(s.config_loaded_at_ms);
        out.push_str(&format!(
            "configuration: generation {}, loaded {}\n",
            s.config_generation,
            humantime::format_rfc3339_seconds(loaded)
        ));
    }
    if let Some(c) = &file.cluster {
        let queued: Vec<String> = c.queued.iter().map(|(p, n)| format!("p{p}={n}")).collect();
        out.push_str(&format!(
            "cluster: role {}, node {}; members seen: {} ({}); owned partitions: {}; standby: {}; waiting: {}\n",
            c.role,
            c.node,
            c.members.len(),
            c.members.join(", "),
            c.owned.len(),
            c.standby.len(),
            if queued.is_empty() { "none".to_owned() } else { queued.join(" ") },
        ));
    }
    out.push_str(&format!(
        "\nshards: {}   live conversations: {}   restarts: {}   escalations: {}\n",
        s.shards.len(),
        s.live_conversations(),
        s.restarts(),
        s.escalations()
    ));
    out.push_str("  shard  live  pending  started  passivated  evicted  restarts  escalations\n");
    for sh in &s.shards {
        out.push_str(&format!(
            "  {:>5}  {:>4}  {:>7}  {:>7}  {:>10}  {:>7}  {:>8}  {:>11}\n",
            sh.id,
            sh.live_conversations,
            sh.pending_messages,
            sh.started,
            sh.passivated,
            sh.evicted,
            sh.restarts,
            sh.escalations
        ));
    }
    out.push_str(&format!(
        "\nLLM: {}/{} streaming, {} queued (queue capacity {}), completed {}, retries {}, timeouts {}, failures {}, refused (queue full) {}, cancelled {}, LlmActor restarts {}\nClassifierActor restarts {}   Shard restarts {}\n",
        s.llm.in_flight, s.llm.max_concurrent, s.llm.queued, s.llm.queue_capacity, s.llm.completed, s.llm.retries, s.llm.timeouts, s.llm.failures, s.llm.rejected_overloaded, s.llm.cancelled, s.llm.restarts, s.classifier_restarts, s.shard_restarts
    ));
    out.push_str("\npools:\n");
    for p in &s.pools {
        out.push_str(&format!(
            "  {:<26} size {:>3}  in flight {:>4}  errors {:>4}  restarts {}  escalations {}\n",
            p.name, p.size, p.queue_depth, p.errors, p.restarts, p.escalations
        ));
    }
    out.push_str(&format!(
        "\nmessages {}  replies {}  failed replies {}  degraded context {}  store write failures {}\n",
        s.messages, s.replies, s.failed_replies, s.degraded_context, s.store_write_failures
    ));
    out.push_str(&format!(
        "tool calls {}  tool failures {}  rate limited {}\n",
        s.tool_calls, s.tool_failures, s.rate_limited
    ));
    out
}
