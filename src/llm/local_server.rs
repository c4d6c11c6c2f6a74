//! The embedded default's model server: llama.cpp's `llama-server` as a supervised child.
//!
//! Started on a free loopback port, considered up once `/health` answers 200, and restarted with
//! the configured backoff if it exits; past the restart budget it is left down and every reply
//! degrades to an apology (logged at error) rather than the bot crash-looping a 100 MB model.
//! The child gets SIGTERM if this process dies, so it never outlives the bot.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};
use whisper_actors::supervision::{RestartDecision, RestartPolicy, RestartTracker};

use crate::config::{LocalLlmSection, cache_dir};

#[derive(Debug, thiserror::Error)]
pub enum LocalServerError {
    #[error("llama-server not found at {}: run `./bot.sh provision`, set llm.local.server, or point llm.base_url at an OpenAI-compatible endpoint", .0.display())]
    MissingServer(PathBuf),
    #[error("model file not found at {}: run `./bot.sh provision` or set llm.local.model", .0.display())]
    MissingModel(PathBuf),
    #[error("cannot start {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("llama-server exited during startup ({status}); see {}", log.display())]
    ExitedEarly { status: String, log: PathBuf },
    #[error("llama-server did not become healthy within {timeout:?}; see {}", log.display())]
    NotHealthy { timeout: Duration, log: PathBuf },
    #[error("cannot open log file {}: {source}", path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no free loopback port: {0}")]
    Port(std::io::Error),
}

#[derive(Clone, Debug)]
struct Launch {
    server: PathBuf,
    model: PathBuf,
    port: u16,
    threads: u32,
    context_size: u32,
    parallel: usize,
    startup_timeout: Duration,
    log: PathBuf,
}

pub struct LocalServer {
    base_url: String,
    /// The current child's pid (0 while down), updated by the supervisor on every restart.
    pid: Arc<AtomicU32>,
    stop: watch::Sender<bool>,
    supervisor: JoinHandle<()>,
}

impl LocalServer {
    /// Resolves paths, starts the server and waits until it is healthy.
    pub async fn start(
        cfg: &LocalLlmSection,
        parallel: usize,
        data_dir: &Path,
        restart: RestartPolicy,
    ) -> Result<LocalServer, LocalServerError> {
        let server = resolve(&cfg.server, || cache_dir().join("llama/bin/llama-server"));
        let model = resolve(&cfg.model, || {
            cache_dir().join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
        if !server.is_file() {
            return Err(LocalServerError::MissingServer(server));
        }
        if !model.is_file() {
            return Err(LocalServerError::MissingModel(model));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(LocalServerError::Port)?
            .port();
        let launch = Launch {
            server,
            model,
            port,
            threads: cfg.threads,
            context_size: cfg.context_size,
            parallel,
            startup_timeout: cfg.startup_timeout,
            log: data_dir.join("llama-server.log"),
        };
        let began = Instant::now();
        let child = spawn_healthy(&launch).await?;
        info!(port, elapsed = ?began.elapsed(), model = %launch.model.display(), "local model server is up");
        let pid = Arc::new(AtomicU32::new(child.id().unwrap_or(0)));
        let (stop, stopped) = watch::channel(false);
        let supervisor = tokio::spawn(supervise(launch, child, restart, stopped, pid.clone()));
        Ok(LocalServer {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            pid,
            stop,
            supervisor,
        })
    }

    /// The running server's process id, `None` while it is down.
    pub fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::Relaxed)).filter(|&p| p != 0)
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Stops the server and waits for the child to exit.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.supervisor.await;
    }
}

fn resolve(configured: &Path, default: impl FnOnce() -> PathBuf) -> PathBuf {
    if configured.as_os_str().is_empty() {
        default()
    } else {
        configured.to_owned()
    }
}

fn spawn(launch: &Launch) -> Result<Child, LocalServerError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)
        .map_err(|source| LocalServerError::Log {
            path: launch.log.clone(),
            source,
        })?;
    let log_err = log.try_clone().map_err(|source| LocalServerError::Log {
        path: launch.log.clone(),
        source,
    })?;
    let mut cmd = Command::new(&launch.server);
    cmd.arg("-m")
        .arg(&launch.model)
        .args(["--host", "127.0.0.1", "--port", &launch.port.to_string()])
        .args(["-c", &launch.context_size.to_string()])
        .args(["-t", &launch.threads.to_string()])
        .args(["-np", &launch.parallel.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| LocalServerError::Spawn {
        path: launch.server.clone(),
        source,
    })
}

async fn spawn_healthy(launch: &Launch) -> Result<Child, LocalServerError> {
    let mut child = spawn(launch)?;
    let health = format!("http://127.0.0.1:{}/health", launch.port);
    crate::tls::install_provider();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("static reqwest configuration");
    let deadline = Instant::now() + launch.startup_timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LocalServerError::ExitedEarly {
                status: status.to_string(),
                log: launch.log.clone(),
            });
        }
        if let Ok(resp) = http.get(&health).send().await
            && resp.status().is_success()
        {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill().await;
            return Err(LocalServerError::NotHealthy {
                timeout: launch.startup_timeout,
                log: launch.log.clone(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn supervise(
    launch: Launch,
    mut child: Child,
    policy: RestartPolicy,
    mut stop: watch::Receiver<bool>,
    pid: Arc<AtomicU32>,
) {
    let mut tracker = RestartTracker::new(policy);
    loop {
        tokio::select! {
            status = child.wait() => {
                pid.store(0, Ordering::Relaxed);
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                match tracker.on_failure(Instant::now()) {
                    RestartDecision::Restart { attempt, backoff } => {
                        warn!(%status, attempt, ?backoff, log = %launch.log.display(), "local model server exited; restarting");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => return,
                        }
                        match spawn_healthy(&launch).await {
                            Ok(new_child) => {
                                info!(port = launch.port, "local model server restarted");
                                pid.store(new_child.id().unwrap_or(0), Ordering::Relaxed);
                                child = new_child;
                            }
                            Err(e) => {
                                error!(error = %e, "local model server failed to restart");
                                // Count the failed start too and try again with the next backoff.
                                child = match spawn(&launch) {
                                    Ok(c) => c,
                                    Err(e) => { error!(error = %e, "giving up on the local model server"); return; }
                                };
                            }
                        }
                    }
                    RestartDecision::Escalate { failures } => {
                        error!(failures, log = %launch.log.display(), "local model server keeps crashing; leaving it down: replies will fail until the bot is restarted");
                        return;
                    }
                }
            }
            _ = stop.changed() => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return;
            }
        }
    }
}
