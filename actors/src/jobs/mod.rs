//! Durable background jobs: the port, the handler trait and the worker actors.
//!
//! A job is leased, not popped: a worker that dies mid-job (panic, SIGKILL, power loss) leaves
//! a lease that expires, and the job runs again, so handlers are idempotent and no job is lost.
//! Failures retry with exponential backoff and are dead-lettered after `max_attempts`, never
//! dropped silently.

use std::time::Duration;

use async_trait::async_trait;

use crate::ports::StoreError;

mod kind;
mod system;
mod worker;

pub use kind::{JobKind, Payload};
pub use system::JobSystem;
pub use worker::JobWorker;

/// A job to enqueue. `id` makes enqueueing idempotent: the same id is stored once.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub id: String,
    pub kind: JobKind,
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

/// What becomes of a failed job. Decided once, here, for every queue: a store only carries it
/// out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Due again after this wait.
    RetryIn(Duration),
    /// Out of attempts: kept in the dead-letter list with its error, never run again.
    DeadLetter,
}

impl Fate {
    /// The dead-letter rule: a job that failed its `max_attempts`-th attempt is dead.
    pub fn after_failure(job: &Job, max_attempts: u32, backoff: crate::backoff::Backoff) -> Self {
        if job.attempt >= max_attempts {
            Fate::DeadLetter
        } else {
            Fate::RetryIn(backoff.delay(job.attempt))
        }
    }
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
    /// Records the error and carries out `fate`: reschedule, or move to the dead letters.
    async fn fail(&self, job: &Job, error: &str, fate: Fate) -> Result<(), StoreError>;
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
    fn kind(&self) -> JobKind;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Backoff;

    #[test]
    fn a_job_is_dead_after_its_last_attempt() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let job = |attempt| Job {
            id: "j".into(),
            kind: "summarise".into(),
            user: "u".into(),
            payload: "{}".into(),
            attempt,
        };
        assert_eq!(
            Fate::after_failure(&job(1), 3, backoff),
            Fate::RetryIn(Duration::from_secs(1))
        );
        assert_eq!(
            Fate::after_failure(&job(2), 3, backoff),
            Fate::RetryIn(Duration::from_secs(2))
        );
        assert_eq!(Fate::after_failure(&job(3), 3, backoff), Fate::DeadLetter);
        assert_eq!(Fate::after_failure(&job(9), 3, backoff), Fate::DeadLetter);
    }
}
