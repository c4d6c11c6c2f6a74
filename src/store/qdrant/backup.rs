//! Backup and restore of the Qdrant memories: every point of our own collections, as rows.

use qdrant_client::Payload;
use qdrant_client::qdrant::ScrollPointsBuilder;
use whisper_actors::memory::MemoryStore;
use whisper_actors::ports::StoreError;

use super::*;

/// Backup and restore in the portable format (`crate::backup`): every point of every collection
/// of this prefix, as the embedded `memories` table's columns (vector in base64, f32 LE).
impl QdrantMemory {
    /// (collection, character) of every collection this deployment owns, that exists.
    pub(super) async fn own_collections(&self) -> Result<Vec<(String, String)>, StoreError> {
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
        for (collection, _) in self.own_collections().await? {
            self.client.delete_collection(&collection).await?;
            self.known
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&collection);
        }
        let mut chunks = Vec::new();
        for row in rows.iter().filter(|r| r["table"] == "memories") {
            chunks.push(crate::backup::chunk_from_row(row)?);
            if chunks.len() == 256 {
                self.add(std::mem::take(&mut chunks)).await?;
            }
        }
        self.add(chunks).await?;
        Ok(())
    }
}
