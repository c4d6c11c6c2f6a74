//! Vector memories in PostgreSQL with pgvector (`storage.memory = "postgres"`): the server
//! twin of the SQLite memory store, behind the same `MemoryStore` contract and scope rules.
//!
//! Search is exact (`ORDER BY embedding <=> $query`) within one user's rows, found by a btree
//! index on (user, character): a user's memories are few thousand at most, and an approximate
//! index over every user would trade recall for nothing. The keyword half is PostgreSQL full
//! text (a generated `tsvector` with a GIN index, ranked by `ts_rank`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use whisper_actors::memory::{
    AllowedScopes, Candidate, MemoryChunk, MemoryKind, MemoryQuery, MemoryStore, newest_first,
};
use whisper_actors::ports::StoreError;
use whisper_actors::stats::PoolStats;
use whisper_actors::{ConversationKey, Scope};

use super::PgOpenError;

const STORE: &str = "postgres memories";

/// Versioned schema steps of the memory tables (their own ledger: the history store's steps
/// are independent).
const MIGRATIONS: [(i32, &str); 1] = [(
    1,
    "CREATE EXTENSION IF NOT EXISTS vector;
     CREATE TABLE memories (
         id BIGSERIAL PRIMARY KEY,
         character TEXT NOT NULL,
         user_id TEXT NOT NULL,
         scope TEXT NOT NULL,
         kind TEXT NOT NULL,
         grp TEXT NOT NULL,
         chunk INTEGER NOT NULL,
         text TEXT NOT NULL,
         importance REAL NOT NULL,
         created_at_ms BIGINT NOT NULL,
         embedding vector NOT NULL,
         words tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
         UNIQUE (user_id, character, grp, chunk)
     );
     CREATE INDEX memories_by_owner ON memories (user_id, character);
     CREATE INDEX memories_words ON memories USING GIN (words);",
)];

fn failed(operation: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Failed {
        store: STORE,
        operation,
        reason: e.to_string(),
    }
}

fn unavailable(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable {
        store: STORE,
        reason: e.to_string(),
    }
}

/// pgvector's text form, `[0.1,0.2,...]`, sent as text and cast in SQL (no binary codec needed).
fn vector_text(v: &[f32]) -> String {
    let mut out = String::with_capacity(v.len() * 10 + 2);
    out.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&x.to_string());
    }
    out.push(']');
    out
}

/// The scopes a query may see, as SQL parameters: exact scope strings, and whether any guild
/// scope is allowed too.
fn scope_params(scopes: &AllowedScopes) -> (Vec<String>, bool) {
    match scopes {
        AllowedScopes::Only(scope) => (vec![scope.to_string()], false),
        AllowedScopes::DirectAndGuilds => (vec![Scope::Direct.to_string()], true),
    }
}

/// The keyword query: any of the message's search terms (letters and digits only, so nothing
/// is read as tsquery syntax).
fn tsquery(text: &str) -> Option<String> {
    let terms: Vec<String> = whisper_actors::memory::terms::query_terms(text)
        .into_iter()
        .map(|t| {
            t.chars()
                .filter(|c| c.is_alphanumeric())
                .collect::<String>()
        })
        .filter(|t| !t.is_empty())
        .collect();
    (!terms.is_empty()).then(|| terms.join(" | "))
}

/// Inserts `chunks` (a chunk already stored, as when a job runs again, is kept as it is).
async fn insert_chunks(
    tx: &deadpool_postgres::Transaction<'_>,
    chunks: &[MemoryChunk],
) -> Result<(), tokio_postgres::Error> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO memories (character, user_id, scope, kind, grp, chunk, text, importance, created_at_ms, embedding)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::vector)
             ON CONFLICT (user_id, character, grp, chunk) DO NOTHING",
        )
        .await?;
    for c in chunks {
        tx.execute(
            &insert,
            &[
                &&*c.key.character,
                &&*c.key.user,
                &c.scope.to_string(),
                &c.kind.as_str(),
                &c.group,
                &(c.chunk as i32),
                &c.text,
                &c.importance,
                &c.created_at_ms,
                &vector_text(&c.vector),
            ],
        )
        .await?;
    }
    Ok(())
}

pub struct PgMemory {
    pool: Pool,
    stats: Arc<PoolStats>,
}

impl PgMemory {
    /// Connects (waiting up to `wait` for the server), creates the pgvector extension and the
    /// tables if needed, once across processes.
    pub async fn connect(url: &str, pool_size: usize, wait: Duration) -> Result<Self, PgOpenError> {
        let pool = super::connect_migrated(
            url,
            pool_size,
            wait,
            super::Ledger {
                lock: 727275,
                table: "whisper_memory_migrations",
                steps: &MIGRATIONS,
            },
        )
        .await?;
        let stats = Arc::new(PoolStats::default());
        stats.size.set(pool_size.max(1) as u64);
        Ok(Self { pool, stats })
    }

    pub fn stats(&self) -> Arc<PoolStats> {
        self.stats.clone()
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            self.stats.errors.inc();
            unavailable(e)
        })
    }

    /// Whole memories (chunks re-joined in order) of `groups`, by group.
    async fn groups(
        &self,
        client: &deadpool_postgres::Object,
        key: &ConversationKey,
        groups: &[String],
    ) -> Result<BTreeMap<String, Candidate>, StoreError> {
        let rows = client
            .query(
                "SELECT grp, kind, scope, text, importance, created_at_ms FROM memories
                 WHERE user_id = $1 AND character = $2 AND grp = ANY($3)
                 ORDER BY grp, chunk",
                &[&&*key.user, &&*key.character, &groups],
            )
            .await
            .map_err(failed("read memories"))?;
        let mut out: BTreeMap<String, Candidate> = BTreeMap::new();
        for row in rows {
            let group: String = row.get(0);
            let text: String = row.get(3);
            if let Some(c) = out.get_mut(&group) {
                c.text.push(' ');
                c.text.push_str(&text);
                continue;
            }
            let (Some(kind), Ok(scope)) = (
                MemoryKind::parse(row.get::<_, &str>(1)),
                row.get::<_, &str>(2).parse::<Scope>(),
            ) else {
                continue;
            };
            out.insert(
                group.clone(),
                Candidate {
                    group,
                    kind,
                    scope,
                    text,
                    importance: row.get(4),
                    created_at_ms: row.get(5),
                    similarity: 0.0,
                    keyword_rank: None,
                    corrected_by: None,
                },
            );
        }
        Ok(out)
    }
}

#[async_trait]
impl MemoryStore for PgMemory {
    async fn add(&self, chunks: Vec<MemoryChunk>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(failed("store memories"))?;
        insert_chunks(&tx, &chunks)
            .await
            .map_err(failed("store memories"))?;
        tx.commit().await.map_err(failed("store memories"))
    }

    async fn search(&self, query: MemoryQuery) -> Result<Vec<Candidate>, StoreError> {
        let client = self.client().await?;
        let (scopes, any_guild) = scope_params(&query.scopes);
        let limit = query.limit as i64;
        // Best chunk per group by cosine, within the user's own rows and allowed scopes.
        let vector_rows = client
            .query(
                "SELECT grp, max(1 - (embedding <=> $3::text::vector)) AS similarity
                 FROM memories
                 WHERE user_id = $1 AND character = $2
                   AND (scope = ANY($4) OR ($5 AND scope LIKE 'guild:%'))
                 GROUP BY grp ORDER BY similarity DESC LIMIT $6",
                &[
                    &&*query.key.user,
                    &&*query.key.character,
                    &vector_text(&query.vector),
                    &scopes,
                    &any_guild,
                    &limit,
                ],
            )
            .await
            .map_err(failed("search memories"))?;
        let mut similarity: BTreeMap<String, f32> = vector_rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, f64>(1) as f32))
            .collect();
        let mut keyword: Vec<String> = Vec::new();
        if let Some(q) = tsquery(&query.text) {
            let rows = client
                .query(
                    "SELECT grp, max(ts_rank(words, q)) AS rank, max(1 - (embedding <=> $3::text::vector))
                     FROM memories, to_tsquery('english', $6) q
                     WHERE user_id = $1 AND character = $2 AND words @@ q
                       AND (scope = ANY($4) OR ($5 AND scope LIKE 'guild:%'))
                     GROUP BY grp ORDER BY rank DESC LIMIT $7",
                    &[
                        &&*query.key.user,
                        &&*query.key.character,
                        &vector_text(&query.vector),
                        &scopes,
                        &any_guild,
                        &q,
                        &limit,
                    ],
                )
                .await
                .map_err(failed("search memories"))?;
            for row in rows {
                let group: String = row.get(0);
                similarity
                    .entry(group.clone())
                    .or_insert(row.get::<_, f64>(2) as f32);
                keyword.push(group);
            }
        }
        let groups: Vec<String> = similarity.keys().cloned().collect();
        let mut whole = self.groups(&client, &query.key, &groups).await?;
        let mut out: Vec<Candidate> = groups
            .into_iter()
            .filter_map(|g| {
                let mut c = whole.remove(&g)?;
                c.similarity = similarity[&g];
                c.keyword_rank = keyword.iter().position(|k| *k == g).map(|p| p as u32);
                Some(c)
            })
            .collect();
        out.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        Ok(out)
    }

    async fn list(
        &self,
        key: &ConversationKey,
        limit: usize,
    ) -> Result<Vec<Candidate>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT grp FROM memories WHERE user_id = $1 AND character = $2
                 GROUP BY grp ORDER BY min(created_at_ms) DESC, grp DESC LIMIT $3",
                &[&&*key.user, &&*key.character, &(limit as i64)],
            )
            .await
            .map_err(failed("list memories"))?;
        let groups: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let mut whole = self.groups(&client, key, &groups).await?;
        let mut out: Vec<Candidate> = groups
            .into_iter()
            .filter_map(|g| {
                let mut c = whole.remove(&g)?;
                c.similarity = 1.0;
                Some(c)
            })
            .collect();
        out.sort_by(|a, b| newest_first(a.created_at_ms, &a.group, b.created_at_ms, &b.group));
        Ok(out)
    }

    async fn forget_user(&self, user: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let deleted = client
            .execute("DELETE FROM memories WHERE user_id = $1", &[&user])
            .await
            .map_err(failed("forget memories"))?;
        // The deleted rows' bytes stay in their pages until a vacuum reclaims them; a plain
        // VACUUM makes the space reusable without locking the table.
        client
            .batch_execute("VACUUM memories")
            .await
            .map_err(failed("forget memories"))?;
        Ok(deleted)
    }
}

/// Backup and restore in the portable format (`crate::backup`): the embedded `memories`
/// table's columns, vector in base64 (f32 little-endian).
impl PgMemory {
    pub async fn export_rows(
        &self,
    ) -> anyhow::Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        use base64::Engine as _;
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT character, user_id, scope, kind, grp, chunk, text, importance, created_at_ms,
                        embedding::text
                 FROM memories ORDER BY id",
                &[],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let vector: String = row.get(9);
            let values: Vec<f32> = vector
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .filter(|v| !v.is_empty())
                .map(|v| v.trim().parse::<f32>())
                .collect::<Result<_, _>>()?;
            let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
            let object = serde_json::json!({
                "table": "memories",
                "character": row.get::<_, String>(0),
                "user_id": row.get::<_, String>(1),
                "scope": row.get::<_, String>(2),
                "kind": row.get::<_, String>(3),
                "grp": row.get::<_, String>(4),
                "chunk": row.get::<_, i32>(5),
                "text": row.get::<_, String>(6),
                "importance": row.get::<_, f32>(7),
                "created_at_ms": row.get::<_, i64>(8),
                "vector": base64::engine::general_purpose::STANDARD.encode(bytes),
            });
            if let serde_json::Value::Object(object) = object {
                out.push(object);
            }
        }
        crate::backup::sort_memory_rows(&mut out);
        Ok(out)
    }

    /// Replaces every memory with the rows' (one transaction: a failed restore keeps the old).
    pub async fn import_rows(
        &self,
        rows: &[serde_json::Map<String, serde_json::Value>],
    ) -> anyhow::Result<()> {
        let chunks: Vec<MemoryChunk> = rows
            .iter()
            .filter(|r| r["table"] == "memories")
            .map(crate::backup::chunk_from_row)
            .collect::<anyhow::Result<_>>()?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("DELETE FROM memories", &[]).await?;
        insert_chunks(&tx, &chunks).await?;
        tx.commit().await?;
        Ok(())
    }
}
