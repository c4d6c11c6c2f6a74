//! The user's fact graph in SQLite: one table of edges with validity intervals.

use std::path::PathBuf;

use actix::prelude::*;
use async_trait::async_trait;
use rusqlite::{TransactionBehavior, params};
use whisper_actors::graph::{Fact, FactStore, NewFact};
use whisper_actors::ports::StoreError;

use std::sync::Arc;

use whisper_actors::stats::PoolStats;

use super::{LazyConnection, call_pool};

const STORE: &str = "sqlite facts";

struct Worker {
    conn: LazyConnection,
}

impl Actor for Worker {
    type Context = SyncContext<Self>;
}

#[derive(Message)]
#[rtype(result = "Result<usize, StoreError>")]
struct Upsert {
    user: String,
    facts: Vec<NewFact>,
    source: String,
    single_valued: Vec<String>,
    now_ms: i64,
}

#[derive(Message)]
#[rtype(result = "Result<Vec<Fact>, StoreError>")]
struct Current {
    user: String,
    /// The closed (corrected) facts instead of the current ones.
    closed: bool,
}

#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
struct Forget(String);

impl Handler<Upsert> for Worker {
    type Result = Result<usize, StoreError>;

    fn handle(&mut self, msg: Upsert, _: &mut Self::Context) -> Self::Result {
        self.conn.run("upsert facts", |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut stored = 0;
            for f in &msg.facts {
                // Normalised by the GraphActor (`NewFact::normalised`) before it gets here.
                let (subject, object) = (f.subject.as_str(), f.object.as_str());
                // The same current edge: nothing to do (jobs may run twice).
                let exists: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM facts WHERE user_id = ?1 AND subject = ?2 AND predicate = ?3
                     AND object = ?4 COLLATE NOCASE AND valid_to_ms IS NULL)",
                    params![msg.user, subject, f.predicate, object],
                    |r| r.get(0),
                )?;
                if let Some(old) = &f.replaces {
                    // A correction names the value it replaces: that edge is closed.
                    tx.execute(
                        "UPDATE facts SET valid_to_ms = ?5 WHERE user_id = ?1 AND subject = ?2 AND predicate = ?3
                         AND object = ?4 COLLATE NOCASE AND valid_to_ms IS NULL",
                        params![msg.user, subject, f.predicate, old, msg.now_ms],
                    )?;
                }
                if exists {
                    continue;
                }
                if msg.single_valued.iter().any(|p| p == &f.predicate) {
                    // A correction supersedes the old value; the old edge is kept, closed.
                    tx.execute(
                        "UPDATE facts SET valid_to_ms = ?4 WHERE user_id = ?1 AND subject = ?2 AND predicate = ?3
                         AND valid_to_ms IS NULL",
                        params![msg.user, subject, f.predicate, msg.now_ms],
                    )?;
                }
                tx.execute(
                    "INSERT INTO facts (user_id, subject, predicate, object, confidence, source, valid_from_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![msg.user, subject, f.predicate, object, f.confidence as f64, msg.source, msg.now_ms],
                )?;
                stored += 1;
            }
            tx.commit()?;
            Ok(stored)
        })
    }
}

impl Handler<Current> for Worker {
    type Result = Result<Vec<Fact>, StoreError>;

    fn handle(&mut self, Current { user, closed }: Current, _: &mut Self::Context) -> Self::Result {
        self.conn.run("read facts", |c| {
            let mut stmt = c.prepare_cached(if closed {
                "SELECT subject, predicate, object, confidence, source, valid_from_ms, valid_to_ms
                 FROM facts WHERE user_id = ?1 AND valid_to_ms IS NOT NULL ORDER BY id"
            } else {
                "SELECT subject, predicate, object, confidence, source, valid_from_ms, valid_to_ms
                 FROM facts WHERE user_id = ?1 AND valid_to_ms IS NULL ORDER BY id"
            })?;
            let rows = stmt.query_map([user], |r| {
                Ok(Fact {
                    subject: r.get(0)?,
                    predicate: r.get(1)?,
                    object: r.get(2)?,
                    confidence: r.get::<_, f64>(3)? as f32,
                    source: r.get(4)?,
                    valid_from_ms: r.get(5)?,
                    valid_to_ms: r.get(6)?,
                })
            })?;
            rows.collect()
        })
    }
}

impl Handler<Forget> for Worker {
    type Result = Result<u64, StoreError>;

    fn handle(&mut self, Forget(user): Forget, _: &mut Self::Context) -> Self::Result {
        self.conn.run("forget facts", |c| {
            Ok(c.execute("DELETE FROM facts WHERE user_id = ?1", [user])? as u64)
        })
    }
}

pub struct SqliteFacts {
    worker: Addr<Worker>,
    stats: Arc<PoolStats>,
}

impl SqliteFacts {
    /// `threads` workers (WAL: reads run side by side; SQLite serialises the writes).
    pub fn start(db_path: PathBuf, threads: usize) -> Self {
        let threads = threads.max(1);
        let stats = Arc::new(PoolStats::default());
        stats.size.set(threads as u64);
        Self {
            worker: SyncArbiter::start(threads, move || Worker {
                conn: LazyConnection::new(STORE, db_path.clone()),
            }),
            stats,
        }
    }

    pub fn stats(&self) -> Arc<PoolStats> {
        self.stats.clone()
    }
}

#[async_trait]
impl FactStore for SqliteFacts {
    async fn upsert(
        &self,
        user: &str,
        facts: Vec<NewFact>,
        source: &str,
        single_valued: &[String],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let msg = Upsert {
            user: user.to_owned(),
            facts,
            source: source.to_owned(),
            single_valued: single_valued.to_vec(),
            now_ms,
        };
        call_pool(&self.worker, &self.stats, STORE, msg).await
    }
    async fn current(&self, user: &str) -> Result<Vec<Fact>, StoreError> {
        let read = Current {
            user: user.to_owned(),
            closed: false,
        };
        call_pool(&self.worker, &self.stats, STORE, read).await
    }
    async fn corrected(&self, user: &str) -> Result<Vec<Fact>, StoreError> {
        let read = Current {
            user: user.to_owned(),
            closed: true,
        };
        call_pool(&self.worker, &self.stats, STORE, read).await
    }
    async fn forget_user(&self, user: &str) -> Result<u64, StoreError> {
        call_pool(&self.worker, &self.stats, STORE, Forget(user.to_owned())).await
    }
}
