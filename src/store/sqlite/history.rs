//! History and profiles in SQLite, served by a pool of `SyncArbiter` threads: the async
//! [`HistoryStore`] methods are messages to that pool.

use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;
use async_trait::async_trait;
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use whisper_actors::ports::{HistoryStore, Profile, StoreError, Turn};
use whisper_actors::stats::PoolStats;
use whisper_actors::{ConversationKey, Scope};

use super::{LazyConnection, call_pool};

const STORE: &str = "sqlite history";

struct Worker {
    conn: LazyConnection,
}

impl Actor for Worker {
    type Context = SyncContext<Self>;
}

#[derive(Message)]
#[rtype(result = "Result<Vec<Turn>, StoreError>")]
struct RecentTurns {
    key: ConversationKey,
    scope: Scope,
    limit: usize,
}

#[derive(Message)]
#[rtype(result = "Result<Option<Profile>, StoreError>")]
struct GetProfile {
    user: String,
}

#[derive(Message)]
#[rtype(result = "Result<(u64, u64), StoreError>")]
struct ForgetUser(String);

impl Handler<ForgetUser> for Worker {
    type Result = Result<(u64, u64), StoreError>;

    fn handle(&mut self, ForgetUser(user): ForgetUser, _: &mut Self::Context) -> Self::Result {
        self.conn.run("forget user", |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let turns = tx.execute("DELETE FROM turns WHERE user_id = ?1", [&user])?;
            let profiles = tx.execute("DELETE FROM profiles WHERE user_id = ?1", [&user])?;
            tx.commit()?;
            Ok((turns as u64, profiles as u64))
        })
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
struct RecordTurn {
    turn: Turn,
    display_name: String,
}

impl Handler<RecentTurns> for Worker {
    type Result = Result<Vec<Turn>, StoreError>;

    fn handle(&mut self, msg: RecentTurns, _: &mut Self::Context) -> Self::Result {
        let scope = msg.scope.to_string();
        self.conn.run("read history", |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT user_message, reply, created_at_ms, replied_at_ms FROM turns
                 WHERE character = ?1 AND user_id = ?2 AND scope = ?3
                 ORDER BY id DESC LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![&*msg.key.character, &*msg.key.user, scope, msg.limit as i64],
                |row| {
                    Ok(Turn {
                        key: msg.key.clone(),
                        scope: msg.scope.clone(),
                        user_message: row.get(0)?,
                        reply: row.get(1)?,
                        created_at_ms: row.get(2)?,
                        replied_at_ms: row.get(3)?,
                        message_id: None,
                    })
                },
            )?;
            let mut turns = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            turns.reverse();
            Ok(turns)
        })
    }
}

impl Handler<GetProfile> for Worker {
    type Result = Result<Option<Profile>, StoreError>;

    fn handle(&mut self, msg: GetProfile, _: &mut Self::Context) -> Self::Result {
        self.conn.run("read profile", |conn| {
            conn.prepare_cached(
                "SELECT display_name, first_seen_ms, last_seen_ms, message_count
                 FROM profiles WHERE user_id = ?1",
            )?
            .query_row([&msg.user], |row| {
                Ok(Profile {
                    user: msg.user.clone(),
                    display_name: row.get(0)?,
                    first_seen_ms: row.get(1)?,
                    last_seen_ms: row.get(2)?,
                    message_count: row.get::<_, i64>(3)? as u64,
                })
            })
            .optional()
        })
    }
}

impl Handler<RecordTurn> for Worker {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: RecordTurn, _: &mut Self::Context) -> Self::Result {
        let turn = msg.turn;
        self.conn.run("record turn", |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO turns (character, user_id, scope, user_message, reply, created_at_ms, replied_at_ms, message_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    &*turn.key.character,
                    &*turn.key.user,
                    turn.scope.to_string(),
                    turn.user_message,
                    turn.reply,
                    turn.created_at_ms,
                    turn.replied_at_ms,
                    turn.message_id.map(|id| id as i64)
                ])?;
            if inserted == 0 {
                // This message's turn is already stored (answered again after a crash).
                return tx.commit();
            }
            tx.prepare_cached(
                "INSERT INTO profiles (user_id, display_name, first_seen_ms, last_seen_ms, message_count)
                 VALUES (?1, ?2, ?3, ?4, 1)
                 ON CONFLICT (user_id) DO UPDATE SET
                     display_name = excluded.display_name,
                     last_seen_ms = excluded.last_seen_ms,
                     message_count = message_count + 1",
            )?
            .execute(params![&*turn.key.user, msg.display_name, turn.created_at_ms, turn.replied_at_ms])?;
            tx.commit()
        })
    }
}

/// The async face of the worker pool.
pub struct SqliteHistory {
    /// Swapped whole by [`SqliteHistory::resize`]: the old threads finish their queue.
    workers: whisper_actors::live::Live<Addr<Worker>>,
    stats: Arc<PoolStats>,
    db_path: PathBuf,
}

impl SqliteHistory {
    /// Starts `threads` workers on a `SyncArbiter`. Call [`prepare`] first; must run inside an
    /// actix `System`.
    pub fn start(db_path: PathBuf, threads: usize) -> Self {
        let stats = Arc::new(PoolStats::default());
        stats.size.set(threads as u64);
        Self {
            workers: whisper_actors::live::Live::new(Self::threads(&db_path, threads)),
            stats,
            db_path,
        }
    }

    fn threads(db_path: &std::path::Path, threads: usize) -> Addr<Worker> {
        let db_path = db_path.to_owned();
        SyncArbiter::start(threads.max(1), move || Worker {
            conn: LazyConnection::new(STORE, db_path.clone()),
        })
    }

    /// Serves from `threads` new worker threads; the old ones answer what they hold and exit
    /// once their last request is answered (a SyncArbiter ends with its last address).
    pub fn resize(&self, threads: usize) {
        self.workers.set(Self::threads(&self.db_path, threads));
        self.stats.size.set(threads.max(1) as u64);
    }

    pub fn stats(&self) -> Arc<PoolStats> {
        self.stats.clone()
    }
}

#[async_trait]
impl HistoryStore for SqliteHistory {
    async fn recent_turns(
        &self,
        key: &ConversationKey,
        scope: &Scope,
        limit: usize,
    ) -> Result<Vec<Turn>, StoreError> {
        call_pool(
            &self.workers.get(),
            &self.stats,
            STORE,
            RecentTurns {
                key: key.clone(),
                scope: scope.clone(),
                limit,
            },
        )
        .await
    }

    async fn profile(&self, user: &str) -> Result<Option<Profile>, StoreError> {
        call_pool(
            &self.workers.get(),
            &self.stats,
            STORE,
            GetProfile {
                user: user.to_owned(),
            },
        )
        .await
    }

    async fn record_turn(&self, turn: &Turn, display_name: &str) -> Result<(), StoreError> {
        call_pool(
            &self.workers.get(),
            &self.stats,
            STORE,
            RecordTurn {
                turn: turn.clone(),
                display_name: display_name.to_owned(),
            },
        )
        .await
    }

    async fn forget_user(&self, user: &str) -> Result<(u64, u64), StoreError> {
        call_pool(
            &self.workers.get(),
            &self.stats,
            STORE,
            ForgetUser(user.to_owned()),
        )
        .await
    }
}
