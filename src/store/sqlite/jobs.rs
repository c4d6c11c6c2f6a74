//! The durable job queue in SQLite: lease, ack, retry with backoff, dead-letter, idempotent ids.
//! A lease that expires (its worker died) makes the job due again.

use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use whisper_actors::jobs::{Fate, Job, JobQueue, NewJob, QueueCounts};
use whisper_actors::ports::StoreError;

use super::LazyConnection;

const STORE: &str = "sqlite job queue";

use whisper_actors::clock::unix_ms as now_ms;

struct Worker {
    conn: LazyConnection,
}

impl Actor for Worker {
    type Context = SyncContext<Self>;
}

enum Op {
    Enqueue(NewJob),
    Lease(Duration),
    Ack(String),
    Fail {
        id: String,
        error: String,
        fate: Fate,
    },
    Counts,
    Forget(String),
}

enum Out {
    Bool(bool),
    Job(Option<Job>),
    Unit,
    Counts(QueueCounts),
    Count(u64),
}

#[derive(Message)]
#[rtype(result = "Result<Out, StoreError>")]
struct Call(Op);

impl Handler<Call> for Worker {
    type Result = Result<Out, StoreError>;

    fn handle(&mut self, Call(op): Call, _: &mut Self::Context) -> Self::Result {
        let now = now_ms();
        match op {
            Op::Enqueue(job) => self.conn.run("enqueue", |c| {
                let n = c.execute(
                    "INSERT OR IGNORE INTO jobs (id, kind, user_id, payload, state, run_at_ms, created_at_ms)
                     VALUES (?1, ?2, ?3, ?4, 'ready', ?5, ?5)",
                    params![job.id, job.kind.as_str(), job.user, job.payload, now],
                )?;
                Ok(Out::Bool(n == 1))
            }),
            Op::Lease(lease) => self.conn.run("lease", |c| {
                c.query_row(
                    "UPDATE jobs SET state = 'leased', lease_until_ms = ?1 + ?2, attempts = attempts + 1
                     WHERE id = (SELECT id FROM jobs
                                 WHERE (state = 'ready' AND run_at_ms <= ?1)
                                    OR (state = 'leased' AND lease_until_ms <= ?1)
                                 ORDER BY run_at_ms LIMIT 1)
                     RETURNING id, kind, user_id, payload, attempts",
                    params![now, lease.as_millis() as i64],
                    |r| {
                        Ok(Job { id: r.get(0)?, kind: r.get(1)?, user: r.get(2)?, payload: r.get(3)?, attempt: r.get(4)? })
                    },
                )
                .optional()
                .map(Out::Job)
            }),
            Op::Ack(id) => self.conn.run("ack", |c| {
                c.execute("DELETE FROM jobs WHERE id = ?1", [id])?;
                Ok(Out::Unit)
            }),
            Op::Fail { id, error, fate } => self.conn.run("fail", |c| {
                match fate {
                    Fate::DeadLetter => {
                        c.execute("UPDATE jobs SET state = 'dead', last_error = ?2, lease_until_ms = NULL WHERE id = ?1", params![id, error])?;
                    }
                    Fate::RetryIn(retry_in) => {
                        c.execute(
                            "UPDATE jobs SET state = 'ready', last_error = ?2, run_at_ms = ?3, lease_until_ms = NULL WHERE id = ?1",
                            params![id, error, now + retry_in.as_millis() as i64],
                        )?;
                    }
                }
                Ok(Out::Unit)
            }),
            Op::Counts => self.conn.run("count", |c| {
                let mut counts = QueueCounts::default();
                let mut stmt = c.prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
                let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
                for row in rows {
                    match row? {
                        (s, n) if s == "ready" => counts.ready = n,
                        (s, n) if s == "leased" => counts.leased = n,
                        (_, n) => counts.dead = n,
                    }
                }
                Ok(Out::Counts(counts))
            }),
            Op::Forget(user) => self.conn.run("forget", |c| {
                Ok(Out::Count(c.execute("DELETE FROM jobs WHERE user_id = ?1", [user])? as u64))
            }),
        }
    }
}

pub struct SqliteJobs {
    worker: Addr<Worker>,
}

impl SqliteJobs {
    pub fn start(db_path: PathBuf) -> Self {
        Self {
            worker: SyncArbiter::start(1, move || Worker {
                conn: LazyConnection::new(STORE, db_path.clone()),
            }),
        }
    }

    async fn call(&self, op: Op) -> Result<Out, StoreError> {
        self.worker.send(Call(op)).await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable {
                store: STORE,
                reason: "worker stopped".into(),
            })
        })
    }
}

#[async_trait]
impl JobQueue for SqliteJobs {
    async fn enqueue(&self, job: NewJob) -> Result<bool, StoreError> {
        match self.call(Op::Enqueue(job)).await? {
            Out::Bool(b) => Ok(b),
            _ => unreachable!("enqueue answers Bool"),
        }
    }
    async fn lease(&self, lease: Duration) -> Result<Option<Job>, StoreError> {
        match self.call(Op::Lease(lease)).await? {
            Out::Job(j) => Ok(j),
            _ => unreachable!("lease answers Job"),
        }
    }
    async fn ack(&self, id: &str) -> Result<(), StoreError> {
        self.call(Op::Ack(id.to_owned())).await.map(|_| ())
    }
    async fn fail(&self, job: &Job, error: &str, fate: Fate) -> Result<(), StoreError> {
        let op = Op::Fail {
            id: job.id.clone(),
            error: error.to_owned(),
            fate,
        };
        self.call(op).await.map(|_| ())
    }
    async fn counts(&self) -> Result<QueueCounts, StoreError> {
        match self.call(Op::Counts).await? {
            Out::Counts(c) => Ok(c),
            _ => unreachable!("counts answers Counts"),
        }
    }
    async fn forget_user(&self, user: &str) -> Result<u64, StoreError> {
        match self.call(Op::Forget(user.to_owned())).await? {
            Out::Count(n) => Ok(n),
            _ => unreachable!("forget answers Count"),
        }
    }
}
