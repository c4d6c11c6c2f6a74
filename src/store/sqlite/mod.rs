//! The embedded database: one SQLite file in the data directory holds history, memories,
//! facts and the job queue. This module owns its schema (versioned migrations applied once at
//! startup) and the connection every store's workers share the handling of.
//!
//! rusqlite is blocking, so it never runs on a shard's arbiter: each store's worker threads
//! (`SyncArbiter`) own one connection each (WAL mode, so readers do not block the writer).

pub mod facts;
pub mod history;
pub mod jobs;
pub mod memory;

pub use history::SqliteHistory;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::prelude::*;
use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};
use tracing::error;
use whisper_actors::ports::StoreError;
use whisper_actors::stats::PoolStats;
use whisper_actors::supervision::panic_message;

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            "CREATE TABLE turns (
             id INTEGER PRIMARY KEY,
             character TEXT NOT NULL,
             user_id TEXT NOT NULL,
             scope TEXT NOT NULL,
             user_message TEXT NOT NULL,
             reply TEXT NOT NULL,
             created_at_ms INTEGER NOT NULL,
             replied_at_ms INTEGER NOT NULL
         );
         CREATE INDEX turns_by_conversation ON turns (character, user_id, scope, id);
         CREATE TABLE profiles (
             user_id TEXT PRIMARY KEY,
             display_name TEXT NOT NULL,
             first_seen_ms INTEGER NOT NULL,
             last_seen_ms INTEGER NOT NULL,
             message_count INTEGER NOT NULL
         );",
        ),
        M::up(
            "CREATE TABLE memories (
             id INTEGER PRIMARY KEY,
             character TEXT NOT NULL,
             user_id TEXT NOT NULL,
             scope TEXT NOT NULL,
             kind TEXT NOT NULL,
             grp TEXT NOT NULL,
             chunk INTEGER NOT NULL,
             text TEXT NOT NULL,
             importance REAL NOT NULL,
             created_at_ms INTEGER NOT NULL,
             vector BLOB NOT NULL
         );
         CREATE INDEX memories_by_user ON memories (user_id, character);
         CREATE UNIQUE INDEX memories_unique ON memories (user_id, character, grp, chunk);",
        ),
        M::up(
            "CREATE TABLE jobs (
             id TEXT PRIMARY KEY,
             kind TEXT NOT NULL,
             user_id TEXT NOT NULL,
             payload TEXT NOT NULL,
             state TEXT NOT NULL CHECK (state IN ('ready', 'leased', 'dead')),
             attempts INTEGER NOT NULL DEFAULT 0,
             run_at_ms INTEGER NOT NULL,
             lease_until_ms INTEGER,
             last_error TEXT,
             created_at_ms INTEGER NOT NULL
         );
         CREATE INDEX jobs_due ON jobs (state, run_at_ms);
         CREATE INDEX jobs_by_user ON jobs (user_id);
         CREATE TABLE facts (
             id INTEGER PRIMARY KEY,
             user_id TEXT NOT NULL,
             subject TEXT NOT NULL,
             predicate TEXT NOT NULL,
             object TEXT NOT NULL,
             confidence REAL NOT NULL,
             source TEXT NOT NULL,
             valid_from_ms INTEGER NOT NULL,
             valid_to_ms INTEGER
         );
         CREATE INDEX facts_current ON facts (user_id, valid_to_ms);",
        ),
        // Keyword search over memories (hybrid recall). `owner` is one token per (character,
        // user): the hex of both ids, ending in a digit so the stemmer leaves it alone, so a search intersects with the user's own rows in the
        // index instead of filtering every user's hits. Triggers keep it in step with
        // `memories`, whoever writes there (the store, a restore, forget).
        M::up(
            "CREATE VIRTUAL TABLE memories_fts USING fts5(owner, text, tokenize = 'porter unicode61');
         INSERT INTO memories_fts (rowid, owner, text)
             SELECT id, 'o' || lower(hex(character)) || 'x' || lower(hex(user_id)) || '0', text FROM memories;
         CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN
             INSERT INTO memories_fts (rowid, owner, text)
             VALUES (new.id, 'o' || lower(hex(new.character)) || 'x' || lower(hex(new.user_id)) || '0', new.text);
         END;
         CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN
             DELETE FROM memories_fts WHERE rowid = old.id;
         END;",
        ),
        // A turn answered again after a crash (same Discord message) is stored once.
        M::up(
            "ALTER TABLE turns ADD COLUMN message_id INTEGER;
         CREATE UNIQUE INDEX turns_once ON turns (character, user_id, message_id)
             WHERE message_id IS NOT NULL;",
        ),
    ])
}

/// Failures opening or migrating the database: fatal at startup, with the path in the message.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open SQLite database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot migrate SQLite database {}: {source}", path.display())]
    Migrate {
        path: PathBuf,
        source: rusqlite_migration::Error,
    },
}

/// Every store opens its own connections to the one file. Write transactions must be
/// `BEGIN IMMEDIATE`: a deferred one that reads first cannot upgrade to a writer once another
/// connection has committed (WAL answers SQLITE_BUSY at once, without waiting out the timeout).
pub(crate) fn open_connection(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Deleted rows are overwritten with zeros, not left in free pages: "forget me" must leave
    // no bytes of the user behind in the file.
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(conn)
}

/// Copies the write-ahead log into the database and truncates it to nothing, so no page
/// version written before a delete survives in `-wal` (run after "forget me").
pub fn checkpoint(path: &Path) -> Result<(), rusqlite::Error> {
    let conn = open_connection(path)?;
    for _ in 0..50 {
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
        Some("the write-ahead log stayed busy; it is truncated at the next checkpoint".into()),
    ))
}

/// Creates the data directory and database and applies pending migrations.
pub fn prepare(data_dir: &Path) -> Result<PathBuf, OpenError> {
    std::fs::create_dir_all(data_dir).map_err(|source| OpenError::DataDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let path = data_dir.join("whisperengine.db");
    let mut conn = open_connection(&path).map_err(|source| OpenError::Open {
        path: path.clone(),
        source,
    })?;
    migrations()
        .to_latest(&mut conn)
        .map_err(|source| OpenError::Migrate {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

/// Sends a message to a store's worker pool, keeping its queue-depth and error counts (shown by
/// `status`). A stopped pool is reported as the store being unavailable.
pub(crate) async fn call_pool<W, M, T>(
    workers: &Addr<W>,
    stats: &PoolStats,
    store: &'static str,
    msg: M,
) -> Result<T, StoreError>
where
    W: Actor<Context = SyncContext<W>> + Handler<M>,
    M: Message<Result = Result<T, StoreError>> + Send + 'static,
    T: Send + 'static,
{
    stats.queue_depth.inc();
    let result = workers.send(msg).await;
    stats.queue_depth.dec();
    let result = result.unwrap_or_else(|_| {
        Err(StoreError::Unavailable {
            store,
            reason: "worker pool stopped".into(),
        })
    });
    if result.is_err() {
        stats.errors.inc();
    }
    result
}

/// A store worker's connection, opened on first use and reopened after a panic. SQLite errors
/// and panics become `StoreError`s naming the store and operation, so a bad row can never take
/// a pool thread down. Shared by every SQLite store's workers.
pub(crate) struct LazyConnection {
    store: &'static str,
    path: PathBuf,
    conn: Option<Connection>,
}

impl LazyConnection {
    pub(crate) fn new(store: &'static str, path: PathBuf) -> Self {
        Self {
            store,
            path,
            conn: None,
        }
    }

    pub(crate) fn run<T>(
        &mut self,
        operation: &'static str,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let store = self.store;
        if self.conn.is_none() {
            let conn = open_connection(&self.path).map_err(|e| StoreError::Unavailable {
                store,
                reason: format!("{}: {e}", self.path.display()),
            })?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("opened above");
        match catch_unwind(AssertUnwindSafe(|| f(conn))) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::Failed {
                store,
                operation,
                reason: e.to_string(),
            }),
            Err(payload) => {
                let reason = panic_message(payload.as_ref());
                error!(store, operation, %reason, "SQLite worker panicked; reopening its connection");
                self.conn = None;
                Err(StoreError::Failed {
                    store,
                    operation,
                    reason,
                })
            }
        }
    }
}
