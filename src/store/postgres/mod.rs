//! History and user profiles in PostgreSQL (deadpool-postgres): the server-mode twin of the
//! SQLite history store, behind the same `HistoryStore` trait and the same contract tests.
//!
//! Migrations are versioned SQL applied at startup under an advisory lock, so several bot
//! processes starting at once migrate exactly once.

pub mod memory;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use whisper_actors::ports::{HistoryStore, Profile, StoreError, Turn};
use whisper_actors::stats::PoolStats;
use whisper_actors::{ConversationKey, Scope};

use crate::store::server::{Unreachable, redact, wait_for};

const STORE: &str = "postgres history";

/// Versioned schema steps; a step is never edited once released, only appended.
const MIGRATIONS: [(i32, &str); 2] = [
    (
        1,
        "CREATE TABLE turns (
         id BIGSERIAL PRIMARY KEY,
         character TEXT NOT NULL,
         user_id TEXT NOT NULL,
         scope TEXT NOT NULL,
         user_message TEXT NOT NULL,
         reply TEXT NOT NULL,
         created_at_ms BIGINT NOT NULL,
         replied_at_ms BIGINT NOT NULL
     );
     CREATE INDEX turns_by_conversation ON turns (character, user_id, scope, id);
     CREATE TABLE profiles (
         user_id TEXT PRIMARY KEY,
         display_name TEXT NOT NULL,
         first_seen_ms BIGINT NOT NULL,
         last_seen_ms BIGINT NOT NULL,
         message_count BIGINT NOT NULL
     );",
    ),
    (
        // A turn answered again after a crash (same Discord message) is stored once.
        2,
        "ALTER TABLE turns ADD COLUMN message_id BIGINT;
     CREATE UNIQUE INDEX turns_once ON turns (character, user_id, message_id)
         WHERE message_id IS NOT NULL;",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum PgOpenError {
    #[error("storage.postgres_url is not a valid PostgreSQL URL ({url}): {source}")]
    Url {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("cannot build the PostgreSQL pool: {0}")]
    Pool(String),
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    #[error("cannot migrate the PostgreSQL schema at {url}: {source}")]
    Migrate {
        url: String,
        source: tokio_postgres::Error,
    },
}

pub struct PgHistory {
    pool: Pool,
    stats: Arc<PoolStats>,
}

fn failed(operation: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Failed {
        store: STORE,
        operation,
        reason: e.to_string(),
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        store: STORE,
        reason: e.to_string(),
    }
}

/// One store's schema steps: its own ledger table and advisory lock, so stores sharing a
/// database migrate independently.
pub(crate) struct Ledger {
    pub lock: i64,
    pub table: &'static str,
    pub steps: &'static [(i32, &'static str)],
}

/// A pool to `url` (waiting up to `wait` for the server) with `ledger`'s pending steps applied,
/// once across processes (under the ledger's advisory lock, released at commit).
pub(crate) async fn connect_migrated(
    url: &str,
    pool_size: usize,
    wait: Duration,
    ledger: Ledger,
) -> Result<Pool, PgOpenError> {
    let config: tokio_postgres::Config = url.parse().map_err(|source| PgOpenError::Url {
        url: redact(url),
        source,
    })?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(pool_size.max(1))
        .build()
        .map_err(|e| PgOpenError::Pool(e.to_string()))?;
    let mut client = wait_for("postgres", url, wait, || pool.get()).await?;
    let migrate = |source| PgOpenError::Migrate {
        url: redact(url),
        source,
    };
    let tx = client.transaction().await.map_err(migrate)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ledger.lock])
        .await
        .map_err(migrate)?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} (
             version INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
        ledger.table
    ))
    .await
    .map_err(migrate)?;
    let applied: i32 = tx
        .query_one(
            &format!("SELECT COALESCE(MAX(version), 0) FROM {}", ledger.table),
            &[],
        )
        .await
        .map_err(migrate)?
        .get(0);
    for (version, sql) in ledger.steps.iter().filter(|(v, _)| *v > applied) {
        tx.batch_execute(sql).await.map_err(migrate)?;
        tx.execute(
            &format!("INSERT INTO {} (version) VALUES ($1)", ledger.table),
            &[version],
        )
        .await
        .map_err(migrate)?;
    }
    tx.commit().await.map_err(migrate)?;
    drop(client);
    Ok(pool)
}

impl PgHistory {
    /// A new connection limit: more connections open on demand; extra idle ones close.
    pub fn resize(&self, connections: usize) {
        self.pool.resize(connections.max(1));
        self.stats.size.set(connections.max(1) as u64);
    }

    /// Connects (waiting up to `wait` for the server), then applies pending migrations.
    pub async fn connect(url: &str, pool_size: usize, wait: Duration) -> Result<Self, PgOpenError> {
        let pool = connect_migrated(
            url,
            pool_size,
            wait,
            Ledger {
                lock: 727274,
                table: "whisper_migrations",
                steps: &MIGRATIONS,
            },
        )
        .await?;
        let stats = Arc::new(PoolStats::default());
        stats.size.set(pool_size.max(1) as u64);
        Ok(Self { pool, stats })
    }

    /// Pool size, requests in flight and errors, for status.
    pub fn stats(&self) -> Arc<PoolStats> {
        self.stats.clone()
    }

    /// Runs one store call, counted in the pool's stats.
    async fn counted<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.stats.queue_depth.inc();
        let result = call.await;
        self.stats.queue_depth.dec();
        if result.is_err() {
            self.stats.errors.inc();
        }
        result
    }
}

#[async_trait]
impl HistoryStore for PgHistory {
    async fn recent_turns(
        &self,
        key: &ConversationKey,
        scope: &Scope,
        limit: usize,
    ) -> Result<Vec<Turn>, StoreError> {
        self.counted(self.read_turns(key, scope, limit)).await
    }

    async fn profile(&self, user: &str) -> Result<Option<Profile>, StoreError> {
        self.counted(self.read_profile(user)).await
    }

    async fn record_turn(&self, turn: &Turn, display_name: &str) -> Result<(), StoreError> {
        self.counted(self.write_turn(turn, display_name)).await
    }

    async fn forget_user(&self, user: &str) -> Result<(u64, u64), StoreError> {
        self.counted(self.delete_user(user)).await
    }
}

/// Backup and restore in the portable format (`crate::backup`): rows as JSON objects keyed by
/// column name, tagged with their table.
impl PgHistory {
    pub async fn export_rows(
        &self,
        table: &str,
        columns: &[&str],
    ) -> anyhow::Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        let client = self.pool.get().await.map_err(unavailable)?;
        let order = if table == "profiles" { "user_id" } else { "id" };
        let sql = format!(
            "SELECT row_to_json(t)::text FROM (SELECT {} FROM {table} ORDER BY {order}) t",
            columns.join(", ")
        );
        let rows = client.query(&sql, &[]).await?;
        rows.iter()
            .map(|row| {
                let mut object: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(row.get::<_, &str>(0))?;
                object.insert("table".into(), serde_json::Value::from(table));
                Ok(object)
            })
            .collect()
    }

    /// Replaces every row of `tables` in one transaction.
    pub async fn import_rows(
        &self,
        tables: &[(&str, &[&str])],
        rows: &[serde_json::Map<String, serde_json::Value>],
    ) -> anyhow::Result<()> {
        let mut client = self.pool.get().await.map_err(unavailable)?;
        let tx = client.transaction().await?;
        for (table, columns) in tables {
            tx.execute(&format!("DELETE FROM {table}"), &[]).await?;
            let mine: Vec<&serde_json::Map<String, serde_json::Value>> =
                rows.iter().filter(|r| r["table"] == *table).collect();
            let json = serde_json::to_string(&mine)?;
            let columns = columns.join(", ");
            tx.execute(
                &format!(
                    "INSERT INTO {table} ({columns}) SELECT {columns}
                     FROM json_populate_recordset(NULL::{table}, $1::text::json)"
                ),
                &[&json],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl PgHistory {
    async fn read_turns(
        &self,
        key: &ConversationKey,
        scope: &Scope,
        limit: usize,
    ) -> Result<Vec<Turn>, StoreError> {
        let client = self.pool.get().await.map_err(unavailable)?;
        let rows = client
            .query(
                "SELECT user_message, reply, created_at_ms, replied_at_ms FROM turns
                 WHERE character = $1 AND user_id = $2 AND scope = $3
                 ORDER BY id DESC LIMIT $4",
                &[
                    &&*key.character,
                    &&*key.user,
                    &scope.to_string(),
                    &(limit as i64),
                ],
            )
            .await
            .map_err(failed("read history"))?;
        let mut turns: Vec<Turn> = rows
            .iter()
            .map(|row| Turn {
                key: key.clone(),
                scope: scope.clone(),
                user_message: row.get(0),
                reply: row.get(1),
                created_at_ms: row.get(2),
                replied_at_ms: row.get(3),
                message_id: None,
            })
            .collect();
        turns.reverse();
        Ok(turns)
    }

    async fn read_profile(&self, user: &str) -> Result<Option<Profile>, StoreError> {
        let client = self.pool.get().await.map_err(unavailable)?;
        let row = client
            .query_opt(
                "SELECT display_name, first_seen_ms, last_seen_ms, message_count
                 FROM profiles WHERE user_id = $1",
                &[&user],
            )
            .await
            .map_err(failed("read profile"))?;
        Ok(row.map(|row| Profile {
            user: user.to_owned(),
            display_name: row.get(0),
            first_seen_ms: row.get(1),
            last_seen_ms: row.get(2),
            message_count: row.get::<_, i64>(3) as u64,
        }))
    }

    async fn write_turn(&self, turn: &Turn, display_name: &str) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(unavailable)?;
        let tx = client.transaction().await.map_err(failed("record turn"))?;
        let inserted = tx
            .execute(
                "INSERT INTO turns (character, user_id, scope, user_message, reply, created_at_ms, replied_at_ms, message_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (character, user_id, message_id) WHERE message_id IS NOT NULL DO NOTHING",
                &[
                    &&*turn.key.character,
                    &&*turn.key.user,
                    &turn.scope.to_string(),
                    &turn.user_message,
                    &turn.reply,
                    &turn.created_at_ms,
                    &turn.replied_at_ms,
                    &turn.message_id.map(|id| id as i64),
                ],
            )
            .await
            .map_err(failed("record turn"))?;
        if inserted == 0 {
            // This message's turn is already stored (answered again after a crash).
            return tx.commit().await.map_err(failed("record turn"));
        }
        tx.execute(
            "INSERT INTO profiles (user_id, display_name, first_seen_ms, last_seen_ms, message_count)
             VALUES ($1, $2, $3, $4, 1)
             ON CONFLICT (user_id) DO UPDATE SET
                 display_name = EXCLUDED.display_name,
                 last_seen_ms = EXCLUDED.last_seen_ms,
                 message_count = profiles.message_count + 1",
            &[
                &&*turn.key.user,
                &display_name,
                &turn.created_at_ms,
                &turn.replied_at_ms,
            ],
        )
        .await
        .map_err(failed("update profile"))?;
        tx.commit().await.map_err(failed("record turn"))
    }

    async fn delete_user(&self, user: &str) -> Result<(u64, u64), StoreError> {
        let mut client = self.pool.get().await.map_err(unavailable)?;
        let tx = client.transaction().await.map_err(failed("forget user"))?;
        let turns = tx
            .execute("DELETE FROM turns WHERE user_id = $1", &[&user])
            .await
            .map_err(failed("forget user"))?;
        let profiles = tx
            .execute("DELETE FROM profiles WHERE user_id = $1", &[&user])
            .await
            .map_err(failed("forget user"))?;
        tx.commit().await.map_err(failed("forget user"))?;
        Ok((turns, profiles))
    }
}
