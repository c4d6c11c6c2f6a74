//! The memory store over Qdrant: add, search, list and forget, always filtered to one user.

use std::collections::BTreeMap;

use async_trait::async_trait;
use qdrant_client::Payload;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, DeletePointsBuilder, Direction, Filter, OrderByBuilder,
    PointStruct, QueryPointsBuilder, ScrollPointsBuilder, UpsertPointsBuilder,
};
use whisper_actors::ConversationKey;
use whisper_actors::memory::{Candidate, MemoryChunk, MemoryQuery, MemoryStore};
use whisper_actors::ports::StoreError;

use super::*;

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
                    // Twice the candidates: the keyword half is ranked among them (Qdrant's
                    // payload text index filters, it does not rank).
                    .limit(query.limit as u64 * 2)
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
        whisper_actors::memory::keyword_ranks(&mut out, &query.text);
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
