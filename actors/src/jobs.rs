//! Durable background jobs: the port, the handler trait and the worker actors.
//!
//! A job is leased, not popped: a worker that dies mid-job (panic, SIGKILL, power loss) leaves
//! a lease that expires, and the job runs again, so handlers are idempotent and no job is lost.
//! Failures retry with exponential backoff and are dead-lettered after `max_attempts`, never
//! dropped silently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use futures::FutureExt;
use tokio::sync::Notify;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::ports::StoreError;
use crate::stats::PoolStats;
use crate::supervision::panic_message;

/// A job to enqueue. `id` makes enqueueing idempotent: the same id is stored once.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub id: String,
    pub kind: String,
    /// Whose data the job touches ("forget me" deletes their queued jobs).
    pub user: String,
    /// JSON payload, opaque to the queue.
    pub payload: String,
}

#[derive(Clone, Debug)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub user: String,
    pub payload: String,
    /// Including this one.
    pub attempt: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    Retry,
    DeadLettered,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    pub ready: u64,
    pub leased: u64,
    pub dead: u64,
}

#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Stores the job unless one with the same id exists; returns whether it was new.
    async fn enqueue(&self, job: NewJob) -> Result<bool, StoreError>;
    /// Takes the next due job (or one whose lease expired) for `lease`.
    async fn lease(&self, lease: Duration) -> Result<Option<Job>, StoreError>;
    async fn ack(&self, id: &str) -> Result<(), StoreError>;
    /// Schedules a retry after `retry_in`, or dead-letters the job after `max_attempts`.
    async fn fail(
        &self,
        job: &Job,
        error: &str,
        retry_in: Duration,
        max_attempts: u32,
    ) -> Result<FailOutcome, StoreError>;
    async fn counts(&self) -> Result<QueueCounts, StoreError>;
    async fn forget_user(&self, user: &str) -> Result<u64, StoreError>;
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub message: String,
}

impl JobError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Runs one kind of job. Must be idempotent: a job can run again after a crash.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    async fn run(&self, job: &Job) -> Result<(), JobError>;
}

#[derive(Clone, Debug)]
pub struct JobSettings {
    pub workers: usize,
    pub lease: Duration,
    pub max_attempts: u32,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// How long an idle worker sleeps before looking again (enqueueing wakes it sooner).
    pub poll_interval: Duration,
}

/// What the workers share.
pub struct JobSystem {
    pub queue: Arc<dyn JobQueue>,
    pub handlers: HashMap<&'static str, Arc<dyn JobHandler>>,
    pub settings: JobSettings,
    pub wake: Notify,
    pub stats: Arc<PoolStats>,
    /// Users whose jobs are running right now ("forget me" waits for them).
    running: std::sync::Mutex<Vec<String>>,
    /// Jobs the queue refused (its server is down), kept in order and stored once it is back.
    backlog: std::sync::Mutex<std::collections::VecDeque<NewJob>>,
}

impl JobSystem {
    pub fn new(
        queue: Arc<dyn JobQueue>,
        handlers: Vec<Arc<dyn JobHandler>>,
        settings: JobSettings,
        stats: Arc<PoolStats>,
    ) -> Arc<Self> {
        stats.size.set(settings.workers as u64);
        Arc::new(Self {
            queue,
            handlers: handlers.into_iter().map(|h| (h.kind(), h)).collect(),
            settings,
            wake: Notify::new(),
            stats,
            running: std::sync::Mutex::new(Vec::new()),
            backlog: std::sync::Mutex::new(std::collections::VecDeque::new()),
        })
    }

    /// Jobs waiting in memory for the queue to come back.
    pub fn backlog_len(&self) -> usize {
        self.backlog.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Drops `user`'s jobs still waiting in memory ("forget me"); returns how many.
    pub fn forget_backlog(&self, user: &str) -> u64 {
        let mut backlog = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        let before = backlog.len();
        backlog.retain(|job| job.user != user);
        (before - backlog.len()) as u64
    }

    /// Stores what the backlog holds, in order, until the queue refuses again.
    async fn flush_backlog(&self) {
        loop {
            let Some(job) = self
                .backlog
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
            else {
                return;
            };
            if let Err(error) = self.queue.enqueue(job.clone()).await {
                debug!(%error, "job queue still unavailable");
                self.backlog
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_front(job);
                return;
            }
            info!(id = %job.id, "job kept during the outage is now stored");
        }
    }

    /// Jobs of `user` running at this moment.
    pub fn running_for(&self, user: &str) -> usize {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.iter().filter(|u| *u == user).count()
    }

    fn set_running(&self, user: &str, running: bool) {
        let mut list = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running {
            list.push(user.to_owned());
        } else if let Some(at) = list.iter().position(|u| u == user) {
            list.swap_remove(at);
        }
    }

    /// Enqueues and wakes a worker. When the queue's store is down the job is kept in memory,
    /// in order, and stored as soon as it answers again (workers retry on every poll), so an
    /// outage delays background work instead of losing it. Only a process exit during the
    /// outage loses what is kept (logged at shutdown).
    pub async fn submit(&self, job: NewJob) -> Result<bool, StoreError> {
        let waiting = self.backlog_len() > 0;
        if !waiting {
            match self.queue.enqueue(job.clone()).await {
                Ok(new) => {
                    self.wake.notify_one();
                    return Ok(new);
                }
                Err(error) => {
                    self.stats.errors.inc();
                    warn!(%error, id = %job.id, "job queue unavailable; keeping the job in memory until it is back");
                }
            }
        }
        // Behind others already waiting: keep the order.
        self.backlog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(job);
        self.wake.notify_one();
        Ok(true)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.settings
            .retry_backoff
            .checked_mul(factor)
            .unwrap_or(self.settings.retry_backoff_max)
            .min(self.settings.retry_backoff_max)
    }

    /// Leases and runs one job; returns whether there was one.
    pub async fn run_one(&self) -> bool {
        self.flush_backlog().await;
        let job = match self.queue.lease(self.settings.lease).await {
            Ok(Some(job)) => job,
            Ok(None) => return false,
            Err(e) => {
                warn!(error = %e, "cannot lease a job");
                return false;
            }
        };
        self.stats.queue_depth.inc();
        self.set_running(&job.user, true);
        let span = info_span!("job", id = %job.id, kind = %job.kind, attempt = job.attempt);
        let result = match self.handlers.get(job.kind.as_str()) {
            None => Err(JobError::new(format!(
                "no handler for job kind {:?}",
                job.kind
            ))),
            Some(handler) => match std::panic::AssertUnwindSafe(handler.run(&job))
                .catch_unwind()
                .instrument(span.clone())
                .await
            {
                Ok(result) => result,
                Err(panic) => Err(JobError::new(format!(
                    "panicked: {}",
                    panic_message(panic.as_ref())
                ))),
            },
        };
        self.stats.queue_depth.dec();
        self.set_running(&job.user, false);
        let _entered = span.enter();
        match result {
            Ok(()) => {
                if let Err(e) = self.queue.ack(&job.id).await {
                    // The lease will expire and the (idempotent) job run again.
                    warn!(error = %e, "cannot ack a finished job");
                }
            }
            Err(e) => {
                self.stats.errors.inc();
                let retry_in = self.backoff(job.attempt);
                match self
                    .queue
                    .fail(&job, &e.message, retry_in, self.settings.max_attempts)
                    .await
                {
                    Ok(FailOutcome::Retry) => {
                        warn!(error = %e, ?retry_in, "job failed; will retry")
                    }
                    Ok(FailOutcome::DeadLettered) => {
                        error!(error = %e, "job failed for the last time; dead-lettered")
                    }
                    Err(store) => {
                        warn!(error = %e, %store, "job failed and cannot be rescheduled; its lease will expire")
                    }
                }
            }
        }
        true
    }
}

/// One worker: leases and runs jobs one at a time, forever.
pub struct JobWorker {
    system: Arc<JobSystem>,
}

impl JobWorker {
    pub fn new(system: Arc<JobSystem>) -> Self {
        Self { system }
    }
}

impl Actor for JobWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let system = self.system.clone();
        ctx.spawn(
            async move {
                loop {
                    // A panic outside a job's own handler (which `run_one` already catches)
                    // must not end the worker: it is counted and the loop goes on.
                    let ran = std::panic::AssertUnwindSafe(system.run_one())
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|panic| {
                            system.stats.restarts.inc();
                            tracing::error!(cause = %crate::supervision::panic_message(&*panic), "job worker panicked; it carries on");
                            true
                        });
                    if !ran {
                        let _ = tokio::time::timeout(
                            system.settings.poll_interval,
                            system.wake.notified(),
                        )
                        .await;
                    }
                }
            }
            .into_actor(self),
        );
        info!("job worker started");
    }
}

impl Supervised for JobWorker {}
