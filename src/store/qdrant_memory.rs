//! Vector memories in Qdrant (qdrant-client, gRPC), behind the same `MemoryStore` trait and
//! memory contract as the embedded store; ranking, scope rules and re-joining stay in the core
//! (`whisper_actors::memory`), so this adapter only stores and filters.
//!
//! One collection per character (`{prefix}_{character}`), cosine distance, payload indexes on
//! `user_id`, `scope`, `scope_kind`, `group` and `created_at_ms`. Point ids are UUIDs derived
//! from (user, character, group, chunk), so a job that runs twice writes each chunk once.
//!
//! The collections this deployment owns are exactly `{prefix}_{character}` for the configured
//! characters: another deployment's prefix that happens to start with ours
//! (`whisper_staging_aria` beside `whisper_aria`) is never read, exported, forgotten into or
//! replaced. Each collection and its payload indexes are ensured once per process, whoever
//! created them ("already exists" is success), so a collection left without an index by a crash
//! is repaired by the next start. Tested against a real server only where `QDRANT_URL` is set
//! (none can run here).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use qdrant_client::Qdrant;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Direction, Distance, FieldType, Filter, OrderByBuilder, PointStruct,
    QueryPointsBuilder, ScrollPointsBuilder, UpsertPointsBuilder, VectorParamsBuilder,
};
use qdrant_client::{Payload, QdrantError};
use serde::{Deserialize, Serialize};
use whisper_actors::memory::{
    AllowedScopes, Candidate, MemoryChunk, MemoryKind, MemoryQuery, MemoryStore,
};
use whisper_actors::ports::StoreError;
use whisper_actors::{ConversationKey, Scope};

use tracing::{debug, info, warn};

use super::server::{Unreachable, wait_for};

const STORE: &str = "qdrant memories";

#[derive(Debug, thiserror::Error)]
pub enum QdrantOpenError {
    #[error("invalid storage.qdrant_url: {0}")]
    Url(String),
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
}

fn failed(operation: &'static str) -> impl Fn(QdrantError) -> StoreError {
    move |e| StoreError::Failed {
        store: STORE,
        operation,
        reason: e.to_string(),
    }
}

/// What a point carries besides its vector.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    user_id: String,
    scope: String,
    /// "console", "dm" or "guild": the DM-and-guilds rule filters on it.
    scope_kind: String,
    kind: String,
    group: String,
    chunk: u32,
    text: String,
    importance: f32,
    created_at_ms: i64,
}

fn scope_kind(scope: &Scope) -> &'static str {
    match scope {
        Scope::Console => "console",
        Scope::Direct => "dm",
        Scope::Guild(_) => "guild",
    }
}

pub struct QdrantMemory {
    client: Qdrant,
    prefix: String,
    /// The configured characters: their collections are this deployment's.
    characters: Vec<String>,
    /// Collections known to exist with their indexes ensured by this process: a search should
    /// not cost an extra round trip to ask.
    known: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Whether Qdrant refused to create something because it is already there (a concurrent
/// writer won the race, or an earlier run made it): for an "ensure", that is success.
fn already_exists(error: &QdrantError) -> bool {
    error.to_string().to_lowercase().contains("already exists")
}

/// The collections of `names` this deployment owns: exactly `{prefix}_{character}` for the
/// configured characters (never `{prefix}_{other}_{character}` of a longer prefix).
pub fn owned_collections<'a>(
    prefix: &str,
    characters: &[String],
    names: impl IntoIterator<Item = &'a str>,
) -> Vec<(String, String)> {
    let mut owned: Vec<(String, String)> = names
        .into_iter()
        .filter_map(|name| {
            characters
                .iter()
                .find(|c| name == format!("{prefix}_{c}"))
                .map(|c| (name.to_owned(), c.clone()))
        })
        .collect();
    owned.sort();
    owned
}

impl QdrantMemory {
    pub async fn connect(
        url: &str,
        prefix: &str,
        characters: Vec<String>,
        wait: Duration,
    ) -> Result<Self, QdrantOpenError> {
        // The client's own version check prints to standard output (which is the chat's reply
        // stream when piped); the server's version is logged here instead.
        let client = Qdrant::from_url(url)
            .skip_compatibility_check()
            .build()
            .map_err(|e| QdrantOpenError::Url(e.to_string()))?;
        let health = wait_for("qdrant", url, wait, || client.health_check()).await?;
        info!(version = %health.version, "connected to Qdrant");
        if !health.version.starts_with("1.") {
            warn!(version = %health.version, "this Qdrant major version is untested with qdrant-client 1.x");
        }
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
            characters,
            known: Default::default(),
        })
    }

    /// The Qdrant `storage.qdrant_*` names, for the configured characters.
    pub async fn from_storage(
        s: &crate::config::StorageSection,
        characters: Vec<String>,
    ) -> Result<Self, QdrantOpenError> {
        Self::connect(
            s.qdrant_url.expose(),
            &s.qdrant_prefix,
            characters,
            s.connect_timeout,
        )
        .await
    }

    fn collection(&self, character: &str) -> String {
        format!("{}_{character}", self.prefix)
    }

    fn is_known(&self, collection: &str) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(collection)
    }

    /// Whether the collection exists; a first look at an existing one also ensures its payload
    /// indexes (listing needs the `created_at_ms` one).
    async fn exists(&self, collection: &str) -> Result<bool, StoreError> {
        if self.is_known(collection) {
            return Ok(true);
        }
        let exists = self
            .client
            .collection_exists(collection)
            .await
            .map_err(failed("check collection"))?;
        if exists {
            self.ensure_indexes(collection).await?;
            self.remember(collection);
        }
        Ok(exists)
    }

    fn remember(&self, collection: &str) {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(collection.to_owned());
    }

    /// Creates the character's collection (sized by the embedding model's vectors) and its
    /// payload indexes the first time something is stored for it.
    async fn ensure(&self, collection: &str, dimensions: u64) -> Result<(), StoreError> {
        if self.exists(collection).await? {
            return Ok(());
        }
        match self
            .client
            .create_collection(
                CreateCollectionBuilder::new(collection)
                    .vectors_config(VectorParamsBuilder::new(dimensions, Distance::Cosine)),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if already_exists(&e) => {
                debug!(collection, "collection created meanwhile by another writer");
            }
            Err(e) => return Err(failed("create collection")(e)),
        }
        self.ensure_indexes(collection).await?;
        self.remember(collection);
        Ok(())
    }

    /// Creates the payload indexes (creating an existing one succeeds, so this repairs a
    /// collection whose creation was cut short).
    async fn ensure_indexes(&self, collection: &str) -> Result<(), StoreError> {
        for (field, kind) in [
            ("user_id", FieldType::Keyword),
            ("scope", FieldType::Keyword),
            ("scope_kind", FieldType::Keyword),
            ("group", FieldType::Keyword),
            ("created_at_ms", FieldType::Integer),
        ] {
            match self
                .client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(collection, field, kind).wait(true),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if already_exists(&e) => {}
                Err(e) => return Err(failed("create payload index")(e)),
            }
        }
        Ok(())
    }

    fn scope_filter(user: &str, scopes: &AllowedScopes) -> Filter {
        let scope = match scopes {
            AllowedScopes::Only(scope) => Condition::matches("scope", scope.to_string()),
            AllowedScopes::DirectAndGuilds => {
                Condition::matches("scope_kind", vec!["dm".to_owned(), "guild".to_owned()])
            }
        };
        Filter::must([Condition::matches("user_id", user.to_owned()), scope])
    }

    /// Every chunk of the given groups, re-joined in chunk order.
    async fn groups(
        &self,
        collection: &str,
        user: &str,
        groups: Vec<String>,
    ) -> Result<BTreeMap<String, (Stored, String)>, StoreError> {
        let mut joined: BTreeMap<String, Vec<Stored>> = BTreeMap::new();
        if groups.is_empty() {
            return Ok(BTreeMap::new());
        }
        let response = self
            .client
            .scroll(
                ScrollPointsBuilder::new(collection)
                    .filter(Filter::must([
                        Condition::matches("user_id", user.to_owned()),
                        Condition::matches("group", groups),
                    ]))
                    .limit(1024)
                    .with_payload(true),
            )
            .await
            .map_err(failed("read chunks"))?;
        for point in response.result {
            let stored: Stored = Payload::from(point.payload)
                .deserialize()
                .map_err(failed("read chunks"))?;
            joined.entry(stored.group.clone()).or_default().push(stored);
        }
        Ok(joined
            .into_iter()
            .filter_map(|(group, mut chunks)| {
                chunks.sort_by_key(|c| c.chunk);
                let text = chunks
                    .iter()
                    .map(|c| c.text.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                chunks
                    .into_iter()
                    .next()
                    .map(|first| (group, (first, text)))
            })
            .collect())
    }
}

fn candidate(first: &Stored, text: String, similarity: f32) -> Option<Candidate> {
    Some(Candidate {
        group: first.group.clone(),
        kind: MemoryKind::parse(&first.kind)?,
        scope: first.scope.parse().ok()?,
        text,
        importance: first.importance,
        created_at_ms: first.created_at_ms,
        similarity,
    })
}

fn point_id(chunk: &MemoryChunk) -> String {
    // A stable UUID-shaped id from the chunk's identity (xxh3-128 of it).
    let key = format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}",
        chunk.key.user, chunk.key.character, chunk.group, chunk.chunk
    );
    let h = xxhash_rust::xxh3::xxh3_128(key.as_bytes());
    let hex = format!("{h:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Backup and restore in the portable format (`crate::backup`): every point of every collection
/// of this prefix, as the embedded `memories` table's columns (vector in base64, f32 LE).
impl QdrantMemory {
    /// (collection, character) of every collection this deployment owns, that exists.
    async fn own_collections(&self) -> Result<Vec<(String, String)>, StoreError> {
        let listed = self
            .client
            .list_collections()
            .await
            .map_err(failed("list collections"))?
            .collections;
        Ok(owned_collections(
            &self.prefix,
            &self.characters,
            listed.iter().map(|c| c.name.as_str()),
        ))
    }

    pub async fn export_rows(
        &self,
    ) -> anyhow::Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        use base64::Engine as _;
        let mut rows = Vec::new();
        for (collection, character) in self.own_collections().await? {
            let mut offset = None;
            loop {
                let mut request = ScrollPointsBuilder::new(&collection)
                    .limit(256)
                    .with_payload(true)
                    .with_vectors(true);
                if let Some(at) = offset.take() {
                    request = request.offset(at);
                }
                let page = self.client.scroll(request).await?;
                for point in page.result {
                    let vector = match point.vectors.and_then(|v| v.get_vector()) {
                        Some(qdrant_client::qdrant::vector_output::Vector::Dense(d)) => d.data,
                        _ => anyhow::bail!("a point in {collection} has no dense vector"),
                    };
                    let stored: Stored = Payload::from(point.payload).deserialize()?;
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    let row = serde_json::json!({
                        "table": "memories",
                        "character": character,
                        "user_id": stored.user_id,
                        "scope": stored.scope,
                        "kind": stored.kind,
                        "grp": stored.group,
                        "chunk": stored.chunk,
                        "text": stored.text,
                        "importance": stored.importance,
                        "created_at_ms": stored.created_at_ms,
                        "vector": base64::engine::general_purpose::STANDARD.encode(bytes),
                    });
                    if let serde_json::Value::Object(object) = row {
                        rows.push(object);
                    }
                }
                match page.next_page_offset {
                    Some(next) => offset = Some(next),
                    None => break,
                }
            }
        }
        // Points scroll in id order (a hash): the backup lists them in the one defined order.
        crate::backup::sort_memory_rows(&mut rows);
        Ok(rows)
    }

    /// Replaces every collection of this prefix with the rows' points.
    pub async fn import_rows(
        &self,
        rows: &[serde_json::Map<String, serde_json::Value>],
    ) -> anyhow::Result<()> {
        use base64::Engine as _;
        for (collection, _) in self.own_collections().await? {
            self.client.delete_collection(&collection).await?;
            self.known
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&collection);
        }
        let mut chunks = Vec::new();
        for row in rows.iter().filter(|r| r["table"] == "memories") {
            let text = |k: &str| row.get(k).and_then(|v| v.as_str()).unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD.decode(text("vector"))?;
            let vector: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            chunks.push(MemoryChunk {
                key: ConversationKey::new(text("character"), text("user_id")),
                scope: text("scope").parse().map_err(|e| anyhow::anyhow!("{e}"))?,
                kind: MemoryKind::parse(text("kind"))
                    .ok_or_else(|| anyhow::anyhow!("unknown memory kind {}", text("kind")))?,
                group: text("grp").to_owned(),
                chunk: row.get("chunk").and_then(|v| v.as_u64()).unwrap_or(0) as u32,
                text: text("text").to_owned(),
                importance: row
                    .get("importance")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(0.0) as f32,
                created_at_ms: row
                    .get("created_at_ms")
                    .and_then(|v| v.as_i64())
                    .unwrap_or(0),
                vector: vector.into(),
            });
            if chunks.len() == 256 {
                self.add(std::mem::take(&mut chunks)).await?;
            }
        }
        self.add(chunks).await?;
        Ok(())
    }
}

#[async_trait]
impl MemoryStore for QdrantMemory {
    async fn add(&self, chunks: Vec<MemoryChunk>) -> Result<(), StoreError> {
        let mut by_collection: BTreeMap<String, (u64, Vec<PointStruct>)> = BTreeMap::new();
        for chunk in chunks {
            let stored = Stored {
                user_id: chunk.key.user.to_string(),
                scope: chunk.scope.to_string(),
                scope_kind: scope_kind(&chunk.scope).to_owned(),
                kind: chunk.kind.as_str().to_owned(),
                group: chunk.group.clone(),
                chunk: chunk.chunk,
                text: chunk.text.clone(),
                importance: chunk.importance,
                created_at_ms: chunk.created_at_ms,
            };
            let payload = Payload::try_from(serde_json::to_value(&stored).map_err(|e| {
                StoreError::Failed {
                    store: STORE,
                    operation: "store memories",
                    reason: e.to_string(),
                }
            })?)
            .map_err(failed("store memories"))?;
            let dimensions = chunk.vector.len() as u64;
            by_collection
                .entry(self.collection(&chunk.key.character))
                .or_insert_with(|| (dimensions, Vec::new()))
                .1
                .push(PointStruct::new(
                    point_id(&chunk),
                    chunk.vector.to_vec(),
                    payload,
                ));
        }
        for (collection, (dimensions, points)) in by_collection {
            self.ensure(&collection, dimensions).await?;
            self.client
                .upsert_points(UpsertPointsBuilder::new(&collection, points).wait(true))
                .await
                .map_err(failed("store memories"))?;
        }
        Ok(())
    }

    async fn search(&self, query: MemoryQuery) -> Result<Vec<Candidate>, StoreError> {
        let collection = self.collection(&query.key.character);
        if !self.exists(&collection).await? {
            return Ok(Vec::new());
        }
        let response = self
            .client
            .query(
                QueryPointsBuilder::new(&collection)
                    .query(query.vector.to_vec())
                    .filter(Self::scope_filter(&query.key.user, &query.scopes))
                    .limit(query.limit as u64)
                    .with_payload(true),
            )
            .await
            .map_err(failed("search memories"))?;
        // The best chunk's score stands for its whole group.
        let mut best: BTreeMap<String, f32> = BTreeMap::new();
        for point in &response.result {
            let stored: Stored = Payload::from(point.payload.clone())
                .deserialize()
                .map_err(failed("search memories"))?;
            let score = best.entry(stored.group).or_insert(point.score);
            *score = score.max(point.score);
        }
        let groups = self
            .groups(&collection, &query.key.user, best.keys().cloned().collect())
            .await?;
        let mut out: Vec<Candidate> = groups
            .into_iter()
            .filter_map(|(group, (first, text))| candidate(&first, text, best[&group]))
            .collect();
        out.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        Ok(out)
    }

    async fn list(
        &self,
        key: &ConversationKey,
        limit: usize,
    ) -> Result<Vec<Candidate>, StoreError> {
        let collection = self.collection(&key.character);
        if !self.exists(&collection).await? {
            return Ok(Vec::new());
        }
        let response = self
            .client
            .scroll(
                ScrollPointsBuilder::new(&collection)
                    .filter(Filter::must([Condition::matches(
                        "user_id",
                        key.user.to_string(),
                    )]))
                    .order_by(
                        OrderByBuilder::new("created_at_ms").direction(Direction::Desc as i32),
                    )
                    .limit((limit * 8).max(limit) as u32)
                    .with_payload(true),
            )
            .await
            .map_err(failed("list memories"))?;
        let mut newest: Vec<(i64, String)> = Vec::new();
        for point in response.result {
            let stored: Stored = Payload::from(point.payload)
                .deserialize()
                .map_err(failed("list memories"))?;
            if !newest.iter().any(|(_, g)| *g == stored.group) {
                newest.push((stored.created_at_ms, stored.group));
            }
        }
        // The same "newest first" as every store, ties included.
        newest.sort_by(|a, b| whisper_actors::memory::newest_first(a.0, &a.1, b.0, &b.1));
        let mut groups: Vec<String> = newest.into_iter().map(|(_, g)| g).collect();
        groups.truncate(limit);
        let joined = self.groups(&collection, &key.user, groups.clone()).await?;
        Ok(groups
            .iter()
            .filter_map(|g| joined.get(g))
            .filter_map(|(first, text)| candidate(first, text.clone(), 1.0))
            .collect())
    }

    async fn forget_user(&self, user: &str) -> Result<u64, StoreError> {
        let mut deleted = 0;
        for (name, _) in self.own_collections().await? {
            let collection = qdrant_client::qdrant::CollectionDescription { name };
            let filter = Filter::must([Condition::matches("user_id", user.to_owned())]);
            let counted = self
                .client
                .count(
                    CountPointsBuilder::new(&collection.name)
                        .filter(filter.clone())
                        .exact(true),
                )
                .await
                .map_err(failed("forget user"))?;
            deleted += counted.result.map_or(0, |r| r.count);
            self.client
                .delete_points(
                    DeletePointsBuilder::new(&collection.name)
                        .points(filter)
                        .wait(true),
                )
                .await
                .map_err(failed("forget user"))?;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_exact_collections_are_ours() {
        let characters = vec!["aria".to_owned(), "marlowe".to_owned()];
        let listed = [
            "whisper_aria",
            "whisper_staging_aria",
            "whisper_marlowe",
            "whisperx_aria",
            "whisper_",
            "other_aria",
            "whisper_removed",
        ];
        assert_eq!(
            owned_collections("whisper", &characters, listed),
            [
                ("whisper_aria".to_owned(), "aria".to_owned()),
                ("whisper_marlowe".to_owned(), "marlowe".to_owned())
            ]
        );
        assert_eq!(
            owned_collections("whisper_staging", &characters, listed),
            [("whisper_staging_aria".to_owned(), "aria".to_owned())]
        );
    }
}
