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

use qdrant_client::Qdrant;
use qdrant_client::qdrant::{
    Condition, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, Distance, FieldType,
    Filter, ScrollPointsBuilder, VectorParamsBuilder,
};
use qdrant_client::{Payload, QdrantError};
use serde::{Deserialize, Serialize};
use whisper_actors::Scope;
use whisper_actors::memory::{AllowedScopes, Candidate, MemoryChunk, MemoryKind};
use whisper_actors::ports::StoreError;

use tracing::{debug, info, warn};

use crate::store::server::{Unreachable, wait_for};

mod backup;
mod store;
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
        keyword_rank: None,
        corrected_by: None,
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
