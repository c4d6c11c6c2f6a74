//! Vector memories in SQLite: vectors as BLOBs, searched exactly in Rust over the user's own
//! partition, which is cached in memory (normalised, so a dot product is the cosine); and the
//! same texts in an FTS5 index for the keyword half of hybrid recall.
//!
//! Exact search over one user's few thousand memories takes well under a millisecond and needs
//! no index to maintain; it also makes isolation structural: a query only ever sees the rows
//! loaded for its own (character, user).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use async_trait::async_trait;
use lru::LruCache;
use rusqlite::{Connection, TransactionBehavior, params};
use whisper_actors::memory::{
    Candidate, MemoryChunk, MemoryKind, MemoryQuery, MemoryStore, newest_first,
};
use whisper_actors::ports::{Embedding, StoreError};
use whisper_actors::stats::PoolStats;
use whisper_actors::vector::{dot, normalize};
use whisper_actors::{ConversationKey, Scope};

use super::{LazyConnection, call_pool};

const STORE: &str = "sqlite memories";

#[derive(Clone)]
struct Row {
    id: i64,
    scope: Scope,
    kind: MemoryKind,
    group: Arc<str>,
    chunk: u32,
    text: Arc<str>,
    importance: f32,
    created_at_ms: i64,
    vector: Embedding,
}

type Partition = Arc<Vec<Row>>;
type Cache = Arc<Mutex<LruCache<ConversationKey, Partition>>>;

fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_blob(b: &[u8]) -> Embedding {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn load_partition(conn: &Connection, key: &ConversationKey) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(
        "SELECT scope, kind, grp, chunk, text, importance, created_at_ms, vector, id
         FROM memories WHERE user_id = ?1 AND character = ?2 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![&*key.user, &*key.character], |r| {
        let scope: String = r.get(0)?;
        let kind: String = r.get(1)?;
        let blob: Vec<u8> = r.get(7)?;
        Ok(Row {
            id: r.get(8)?,
            scope: scope.parse().unwrap_or(Scope::Console),
            kind: MemoryKind::parse(&kind).unwrap_or(MemoryKind::Message),
            group: Arc::from(r.get::<_, String>(2)?),
            chunk: r.get(3)?,
            text: Arc::from(r.get::<_, String>(4)?),
            importance: r.get::<_, f64>(5)? as f32,
            created_at_ms: r.get(6)?,
            vector: normalize(&from_blob(&blob)),
        })
    })?;
    rows.collect()
}

struct Worker {
    conn: LazyConnection,
    cache: Cache,
}

impl Worker {
    fn run<T>(
        &mut self,
        operation: &'static str,
        f: impl FnOnce(&mut Connection, &Cache) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let cache = self.cache.clone();
        self.conn.run(operation, |conn| f(conn, &cache))
    }

    fn partition(
        conn: &Connection,
        cache: &Cache,
        key: &ConversationKey,
    ) -> rusqlite::Result<Partition> {
        // The load and the put happen under the cache lock, and so do a write's commit and its
        // cache update: a first search racing a first write then either loads the new rows or
        // finds the write already applied, never both (rows twice) nor neither (rows missing).
        let mut cache = cache.lock().expect("cache lock");
        if let Some(p) = cache.get(key) {
            return Ok(p.clone());
        }
        let partition = Arc::new(load_partition(conn, key)?);
        cache.put(key.clone(), partition.clone());
        Ok(partition)
    }
}

impl Actor for Worker {
    type Context = SyncContext<Self>;
}

#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
struct Add(Vec<MemoryChunk>);

#[derive(Message)]
#[rtype(result = "Result<Vec<Candidate>, StoreError>")]
struct Search(MemoryQuery);

impl Handler<Add> for Worker {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, Add(chunks): Add, _: &mut Self::Context) -> Self::Result {
        self.run("store memories", |conn, cache| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut inserted: Vec<Option<i64>> = Vec::with_capacity(chunks.len());
            {
                // OR IGNORE: a job that runs again after a crash finds its chunks already there.
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO memories (character, user_id, scope, kind, grp, chunk, text, importance, created_at_ms, vector)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                for c in &chunks {
                    let n = insert.execute(params![
                        &*c.key.character,
                        &*c.key.user,
                        c.scope.to_string(),
                        c.kind.as_str(),
                        c.group,
                        c.chunk,
                        c.text,
                        c.importance as f64,
                        c.created_at_ms,
                        to_blob(&c.vector),
                    ])?;
                    inserted.push((n == 1).then(|| tx.last_insert_rowid()));
                }
            }
            // Keep a cached partition current (copy-on-write: searches in flight keep theirs);
            // see `partition` for why the commit happens under the cache lock.
            let mut cache = cache.lock().expect("cache lock");
            tx.commit()?;
            for (c, id) in chunks.into_iter().zip(inserted) {
                let Some(id) = id else {
                    continue;
                };
                if let Some(partition) = cache.get_mut(&c.key) {
                    Arc::make_mut(partition).push(Row {
                        id,
                        scope: c.scope,
                        kind: c.kind,
                        group: Arc::from(c.group),
                        chunk: c.chunk,
                        text: Arc::from(c.text),
                        importance: c.importance,
                        created_at_ms: c.created_at_ms,
                        vector: normalize(&c.vector),
                    });
                }
            }
            Ok(())
        })
    }
}

impl Handler<Search> for Worker {
    type Result = Result<Vec<Candidate>, StoreError>;

    fn handle(&mut self, Search(query): Search, _: &mut Self::Context) -> Self::Result {
        self.run("search memories", |conn, cache| {
            let partition = Self::partition(conn, cache, &query.key)?;
            let q = normalize(&query.vector);
            // Best chunk per group, within the allowed scopes.
            let mut best: HashMap<&str, f32> = HashMap::new();
            for row in partition.iter().filter(|r| query.scopes.allows(&r.scope)) {
                let sim = dot(&q, &row.vector);
                let entry = best.entry(&row.group).or_insert(f32::MIN);
                *entry = entry.max(sim);
            }
            let mut groups: Vec<(&str, f32)> = best.iter().map(|(g, s)| (*g, *s)).collect();
            groups.sort_by(|a, b| b.1.total_cmp(&a.1));
            groups.truncate(query.limit);

            // The keyword half: the index's best hits among this user's rows. A hit outside the
            // loaded partition or its allowed scopes is dropped here, so isolation does not rest
            // on the owner token alone.
            let by_id: HashMap<i64, &Row> = partition.iter().map(|r| (r.id, r)).collect();
            let mut keyword: Vec<&str> = Vec::new();
            if let Some(expression) = match_expression(&query.key, &query.text) {
                let mut stmt = conn.prepare_cached(
                    "SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?1
                     ORDER BY bm25(memories_fts, 0.0, 1.0) LIMIT ?2",
                )?;
                let ids = stmt.query_map(params![expression, query.limit as i64 * 2], |r| {
                    r.get::<_, i64>(0)
                })?;
                for id in ids {
                    let Some(row) = by_id.get(&id?) else { continue };
                    if query.scopes.allows(&row.scope)
                        && !keyword.contains(&&*row.group)
                        && keyword.len() < query.limit
                    {
                        keyword.push(&row.group);
                    }
                }
            }
            for g in &keyword {
                if !groups.iter().any(|(group, _)| group == g) {
                    groups.push((g, best[g]));
                }
            }
            Ok(groups
                .into_iter()
                .map(|(group, similarity)| {
                    let mut chunks: Vec<&Row> =
                        partition.iter().filter(|r| &*r.group == group).collect();
                    chunks.sort_by_key(|r| r.chunk);
                    let first = chunks[0];
                    Candidate {
                        group: group.to_owned(),
                        kind: first.kind,
                        scope: first.scope.clone(),
                        text: chunks
                            .iter()
                            .map(|r| &*r.text)
                            .collect::<Vec<_>>()
                            .join(" "),
                        importance: first.importance,
                        created_at_ms: first.created_at_ms,
                        similarity,
                        keyword_rank: keyword.iter().position(|g| *g == group).map(|p| p as u32),
                        corrected_by: None,
                    }
                })
                .collect())
        })
    }
}

/// The FTS5 query for `text` within one user's memories: their owner token AND any of the
/// message's search terms, each quoted so no word is read as FTS syntax. None: no terms.
fn match_expression(key: &ConversationKey, text: &str) -> Option<String> {
    let terms = whisper_actors::memory::terms::query_terms(text);
    if terms.is_empty() {
        return None;
    }
    let any: Vec<String> = terms
        .iter()
        .map(|t| format!("\"{}\"", t.replace('"', "")))
        .collect();
    Some(format!(
        "owner : \"{}\" AND text : ({})",
        owner_token(key),
        any.join(" OR ")
    ))
}

/// The same token the migration's triggers write: the lowercase hex of the character and user
/// ids, ending in a digit (no stemmer rule touches it).
fn owner_token(key: &ConversationKey) -> String {
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    format!("o{}x{}0", hex(&key.character), hex(&key.user))
}

#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
struct Forget(String);

impl Handler<Forget> for Worker {
    type Result = Result<u64, StoreError>;

    fn handle(&mut self, Forget(user): Forget, _: &mut Self::Context) -> Self::Result {
        self.run("forget user", |conn, cache| {
            let deleted = conn.execute("DELETE FROM memories WHERE user_id = ?1", [&user])?;
            // FTS5 only marks deleted rows in newer segments; merging every segment rewrites the
            // index without the user's words, and secure_delete zeroes the pages it frees.
            conn.execute(
                "INSERT INTO memories_fts (memories_fts) VALUES ('optimize')",
                [],
            )?;
            let mut cache = cache.lock().expect("cache lock");
            let keys: Vec<ConversationKey> = cache
                .iter()
                .filter(|(k, _)| *k.user == *user)
                .map(|(k, _)| k.clone())
                .collect();
            for key in keys {
                cache.pop(&key);
            }
            Ok(deleted as u64)
        })
    }
}

#[derive(Message)]
#[rtype(result = "Result<Vec<Candidate>, StoreError>")]
struct List(ConversationKey, usize);

impl Handler<List> for Worker {
    type Result = Result<Vec<Candidate>, StoreError>;

    fn handle(&mut self, List(key, limit): List, _: &mut Self::Context) -> Self::Result {
        self.run("list memories", |conn, cache| {
            let partition = Self::partition(conn, cache, &key)?;
            let mut newest: Vec<(i64, &str)> = Vec::new();
            for row in partition.iter() {
                if !newest.iter().any(|(_, g)| *g == &*row.group) {
                    newest.push((row.created_at_ms, &row.group));
                }
            }
            // The same "newest first" as every store, ties included (not insertion order).
            newest.sort_by(|a, b| newest_first(a.0, a.1, b.0, b.1));
            let groups: Vec<&str> = newest.into_iter().take(limit).map(|(_, g)| g).collect();
            Ok(groups
                .into_iter()
                .map(|group| {
                    let mut chunks: Vec<&Row> =
                        partition.iter().filter(|r| &*r.group == group).collect();
                    chunks.sort_by_key(|r| r.chunk);
                    Candidate {
                        group: group.to_owned(),
                        kind: chunks[0].kind,
                        scope: chunks[0].scope.clone(),
                        text: chunks
                            .iter()
                            .map(|r| &*r.text)
                            .collect::<Vec<_>>()
                            .join(" "),
                        importance: chunks[0].importance,
                        created_at_ms: chunks[0].created_at_ms,
                        similarity: 1.0,
                        keyword_rank: None,
                        corrected_by: None,
                    }
                })
                .collect())
        })
    }
}

/// The memory pool's async face.
pub struct SqliteMemory {
    workers: Addr<Worker>,
    stats: Arc<PoolStats>,
}

impl SqliteMemory {
    /// Starts `threads` workers sharing a cache of `cached_users` partitions. Call
    /// `sqlite::prepare` first; must run inside an actix `System`.
    pub fn start(db_path: PathBuf, threads: usize, cached_users: usize) -> Self {
        let cache: Cache = Arc::new(Mutex::new(LruCache::new(
            NonZeroUsize::new(cached_users.max(1)).expect("non-zero"),
        )));
        let stats = Arc::new(PoolStats::default());
        stats.size.set(threads as u64);
        let workers = SyncArbiter::start(threads, move || Worker {
            conn: LazyConnection::new(STORE, db_path.clone()),
            cache: cache.clone(),
        });
        Self { workers, stats }
    }

    pub fn stats(&self) -> Arc<PoolStats> {
        self.stats.clone()
    }
}

#[async_trait]
impl MemoryStore for SqliteMemory {
    async fn add(&self, chunks: Vec<MemoryChunk>) -> Result<(), StoreError> {
        call_pool(&self.workers, &self.stats, STORE, Add(chunks)).await
    }

    async fn search(&self, query: MemoryQuery) -> Result<Vec<Candidate>, StoreError> {
        call_pool(&self.workers, &self.stats, STORE, Search(query)).await
    }

    async fn list(
        &self,
        key: &ConversationKey,
        limit: usize,
    ) -> Result<Vec<Candidate>, StoreError> {
        call_pool(&self.workers, &self.stats, STORE, List(key.clone(), limit)).await
    }

    async fn forget_user(&self, user: &str) -> Result<u64, StoreError> {
        call_pool(&self.workers, &self.stats, STORE, Forget(user.to_owned())).await
    }
}
