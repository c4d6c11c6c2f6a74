//! Cluster members as real `whisperengine` processes (tests and the cluster benchmark): each
//! runs `whisperengine run` in a data directory of its own, configured through `WHISPER__*`
//! variables, with its log in `stderr.log` and its status (role, partitions, members) in
//! `status.json`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use whisperengine::status::ClusterStatus;

use super::arcadedb::ArcadeDb;

pub const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The environment every member shares: the model at `llm`, history and memories in
/// PostgreSQL (`postgres_url`), jobs and membership in Redis under `prefix` (also the queues'
/// prefix), facts on the Bolt server, `partitions` partitions.
pub fn member_env(
    llm: &str,
    postgres_url: &str,
    graph: &ArcadeDb,
    prefix: &str,
    partitions: u32,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("WHISPER__LLM__BASE_URL", llm.to_owned()),
        ("WHISPER__LLM__MODEL", "scripted".into()),
        ("WHISPER__LLM__RETRY_BACKOFF", "20ms".into()),
        ("WHISPER__POOLS__LLM_CONCURRENCY", "32".into()),
        ("WHISPER__STREAMING__EDIT_INTERVAL", "100ms".into()),
        ("WHISPER__RUNTIME__STATUS_INTERVAL", "200ms".into()),
        ("WHISPER__LIMITS__MESSAGES_PER_WINDOW", "0".into()),
        ("WHISPER__EMBEDDING__ENABLED", "false".into()),
        ("WHISPER__FACTS__EXTRACT", "false".into()),
        ("WHISPER__JOBS__POLL_INTERVAL", "50ms".into()),
        ("WHISPER__STORAGE__HISTORY", "postgres".into()),
        ("WHISPER__STORAGE__MEMORY", "postgres".into()),
        ("WHISPER__STORAGE__POSTGRES_URL", postgres_url.to_owned()),
        ("WHISPER__STORAGE__JOBS", "redis".into()),
        ("WHISPER__STORAGE__REDIS_PREFIX", prefix.to_owned()),
        ("WHISPER__CLUSTER__PARTITIONS", partitions.to_string()),
        ("WHISPER__CLUSTER__STANDBY", "1".into()),
        ("WHISPER__CLUSTER__MEMBER_TTL", "2s".into()),
        ("WHISPER__CLUSTER__HEARTBEAT", "5s".into()),
        ("WHISPER__CLUSTER__HANDOFF_TIMEOUT", "20s".into()),
        ("RUST_LOG", "info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.extend(graph.env());
    env
}

/// Running members by node name.
pub struct Processes {
    bin: PathBuf,
    pub env: Vec<(String, String)>,
    root: tempfile::TempDir,
    members: HashMap<String, Child>,
}

impl Processes {
    pub fn new(bin: &str, env: Vec<(String, String)>) -> Processes {
        Processes {
            bin: PathBuf::from(bin),
            env,
            root: tempfile::tempdir().unwrap(),
            members: HashMap::new(),
        }
    }

    pub fn dir(&self, node: &str) -> PathBuf {
        self.root.path().join(node.replace(':', "_"))
    }

    /// Starts `whisperengine run` as `role` named `node`, with `extra` variables on top.
    pub fn spawn(&mut self, role: &str, node: &str, extra: &[(&str, &str)]) {
        let dir = self.dir(node);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("--data-dir")
            .arg(&dir)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        for (key, _) in std::env::vars() {
            if key.starts_with("WHISPER__") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.env.iter().cloned())
            .envs(extra.iter().copied())
            .env("WHISPER__CLUSTER__ROLE", role)
            .env("WHISPER__CLUSTER__NODE_ID", node);
        self.members
            .insert(node.to_owned(), cmd.spawn().expect("the binary starts"));
    }

    pub fn signal(&self, node: &str, signal: libc::c_int) {
        let pid = self.members[node].id().expect("running") as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    pub async fn exit_of(&mut self, node: &str) -> std::process::ExitStatus {
        let log = self.log(node);
        let child = self.members.get_mut(node).unwrap();
        tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{node} did not exit: {log}"))
            .unwrap()
    }

    /// The member's exit status, if it has exited.
    pub fn exited(&mut self, node: &str) -> Option<std::process::ExitStatus> {
        self.members.get_mut(node)?.try_wait().ok().flatten()
    }

    /// Stops every member (SIGTERM, then waits).
    pub async fn stop_all(&mut self) {
        let nodes: Vec<String> = self.members.keys().cloned().collect();
        for node in &nodes {
            if let Some(pid) = self.members[node].id() {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
        }
        for node in nodes {
            let mut child = self.members.remove(&node).unwrap();
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }

    /// Every member's warnings and errors, for a failing test's message.
    pub fn warnings(&self) -> String {
        let mut nodes: Vec<&String> = self.members.keys().collect();
        nodes.sort();
        nodes
            .into_iter()
            .map(|node| {
                let lines: Vec<String> = self
                    .log(node)
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .map(str::to_owned)
                    .collect();
                let tail = &lines[lines.len().saturating_sub(15)..];
                format!("--- {node}\n{}\n", tail.join("\n"))
            })
            .collect()
    }

    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir(node).join("stderr.log")).unwrap_or_default()
    }

    pub fn status(&self, node: &str) -> Option<ClusterStatus> {
        whisperengine::status::read(&self.dir(node)).and_then(|(file, _)| file.cluster)
    }

    /// Waits until every worker in `nodes` sees exactly `nodes` and they own each of the
    /// `partitions` once between them; returns each one's owned partitions.
    pub async fn settled(&self, nodes: &[&str], partitions: u32) -> HashMap<String, BTreeSet<u32>> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let statuses: Vec<Option<ClusterStatus>> =
                nodes.iter().map(|n| self.status(n)).collect();
            let agreed = statuses.iter().all(|s| {
                s.as_ref().is_some_and(|s| {
                    s.members
                        .iter()
                        .map(String::as_str)
                        .eq(nodes.iter().copied())
                })
            });
            if agreed {
                let owned: HashMap<String, BTreeSet<u32>> = nodes
                    .iter()
                    .zip(&statuses)
                    .map(|(n, s)| {
                        let s = s.as_ref().expect("agreed");
                        (n.to_string(), s.owned.iter().copied().collect())
                    })
                    .collect();
                let total: usize = owned.values().map(BTreeSet::len).sum();
                let union: BTreeSet<u32> = owned.values().flatten().copied().collect();
                if total == partitions as usize && union.len() == partitions as usize {
                    return owned;
                }
            }
            assert!(
                Instant::now() < deadline,
                "workers {nodes:?} never settled: {statuses:?}\n{}",
                nodes
                    .iter()
                    .map(|n| format!("--- {n}\n{}", self.log(n)))
                    .collect::<String>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }
}
