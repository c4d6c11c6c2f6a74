//! The job system the workers share: handlers by kind, the queue, the in-memory backlog kept
//! while the queue's store is down, and the run-one-job loop body.

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::Notify;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::{Fate, JobError, JobHandler, JobKind, JobQueue, JobSettings, NewJob};
use crate::backoff::Backoff;
use crate::ports::StoreError;
use crate::stats::PoolStats;
use crate::supervision::panic_message;

/// What the workers share.
pub struct JobSystem {
    pub queue: Arc<dyn JobQueue>,
    pub handlers: HashMap<JobKind, Arc<dyn JobHandler>>,
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
        let handler = JobKind::parse(&job.kind).and_then(|kind| self.handlers.get(&kind));
        let result = match handler {
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
                // The job fails (and retries or is dead-lettered like any failure); the worker
                // carries on as a fresh incarnation, counted as a restart.
                Err(panic) => {
                    self.stats.restarts.inc();
                    Err(JobError::new(format!(
                        "panicked: {}",
                        panic_message(panic.as_ref())
                    )))
                }
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
                let backoff =
                    Backoff::new(self.settings.retry_backoff, self.settings.retry_backoff_max);
                let fate = Fate::after_failure(&job, self.settings.max_attempts, backoff);
                match self.queue.fail(&job, &e.message, fate).await {
                    Ok(()) => match fate {
                        Fate::RetryIn(retry_in) => {
                            warn!(error = %e, ?retry_in, "job failed; will retry")
                        }
                        Fate::DeadLetter => {
                            error!(error = %e, "job failed for the last time; dead-lettered")
                        }
                    },
                    Err(store) => {
                        warn!(error = %e, %store, "job failed and cannot be rescheduled; its lease will expire")
                    }
                }
            }
        }
        true
    }
}
