//! How a finished turn becomes memories: chunking, importance, embedding, storing.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::ports::Embedding;

use super::*;

/// How turns become memories.
#[derive(Clone, Debug)]
pub struct MemorySettings {
    pub rank: RankSettings,
    pub guild_memories_in_dm: bool,
    pub deadline: Duration,
    /// Long texts are split into chunks of this many words before embedding.
    pub chunk_words: usize,
    /// Summarise a conversation every this many turns (0: never).
    pub summarise_every: u64,
    /// Summarise when a conversation goes idle with at least this many turns not yet
    /// summarised (0: never).
    pub idle_summary_min_turns: u64,
}

/// A rough importance: first-person statements ("my sister...", "I work...") matter more than
/// chit-chat, and what the user said more than what the character answered.
pub fn importance(kind: MemoryKind, text: &str) -> f32 {
    let lower = format!(" {} ", text.to_lowercase());
    let personal = [
        " my ", " i am ", " i'm ", " i live", " i work", " i have ", " i like", " i love",
        " i hate",
    ]
    .iter()
    .any(|p| lower.contains(p));
    // A question states nothing about the user; recalled, it only crowds out what does.
    let asks = text.trim_end().ends_with('?');
    match (kind, personal) {
        (MemoryKind::Message, _) if asks => 0.4,
        (MemoryKind::Message, true) => 0.9,
        (MemoryKind::Message, false) => 0.6,
        (MemoryKind::Summary, _) => 0.8,
        (MemoryKind::Reply, _) => 0.3,
    }
}

/// Turns a completed turn into memory chunks (the user's message and the reply), embedding
/// what is not embedded yet: the user's message vector is reused when it is a single chunk.
pub async fn remember_turn(
    store: &dyn MemoryStore,
    embedder: &dyn crate::ports::Embedder,
    turn: &crate::ports::Turn,
    message_vector: Option<Embedding>,
    chunk_words: usize,
) -> Result<usize, String> {
    let mut texts = Vec::new();
    for (kind, text, at) in [
        (MemoryKind::Message, &turn.user_message, turn.created_at_ms),
        (MemoryKind::Reply, &turn.reply, turn.replied_at_ms),
    ] {
        let group = format!(
            "{}:{}:{}",
            kind.as_str(),
            at,
            crate::routing::ring::key_hash(&turn.key.user, text)
        );
        for (i, piece) in chunk(text, chunk_words).into_iter().enumerate() {
            texts.push((
                kind,
                group.clone(),
                i as u32,
                piece,
                at,
                importance(kind, text),
            ));
        }
    }
    let reuse =
        message_vector.filter(|_| texts.iter().filter(|t| t.0 == MemoryKind::Message).count() == 1);
    let to_embed: Vec<String> = texts
        .iter()
        .filter(|t| !(reuse.is_some() && t.0 == MemoryKind::Message))
        .map(|t| t.3.clone())
        .collect();
    let mut embedded = embedder
        .embed_background(to_embed)
        .await
        .map_err(|e| e.to_string())?
        .into_iter();
    let chunks: Vec<MemoryChunk> = texts
        .into_iter()
        .map(|(kind, group, chunk, text, created_at_ms, importance)| {
            let vector = match (&reuse, kind) {
                (Some(v), MemoryKind::Message) => v.clone(),
                _ => embedded.next().expect("one vector per embedded text"),
            };
            MemoryChunk {
                key: turn.key.clone(),
                scope: turn.scope.clone(),
                kind,
                group,
                chunk,
                text,
                importance,
                created_at_ms,
                vector,
            }
        })
        .collect();
    let count = chunks.len();
    store.add(chunks).await.map_err(|e| e.to_string())?;
    Ok(count)
}

/// Payload of a `remember_turn` job: the turn, and the message's vector so it is not embedded
/// a second time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RememberTurn {
    pub turn: crate::ports::Turn,
    pub message_vector: Option<Embedding>,
}

impl crate::jobs::Payload for RememberTurn {
    const KIND: crate::jobs::JobKind = crate::jobs::JobKind::RememberTurn;
}

/// The `remember_turn` job. Idempotent: chunks are keyed by a group derived from the turn, and
/// a re-run after a crash replaces nothing it already stored (see the store's `add`).
pub struct RememberTurnHandler {
    pub store: Arc<dyn MemoryStore>,
    pub embedder: Arc<dyn crate::ports::Embedder>,
    pub chunk_words: usize,
}

#[async_trait]
impl crate::jobs::JobHandler for RememberTurnHandler {
    fn kind(&self) -> crate::jobs::JobKind {
        <RememberTurn as crate::jobs::Payload>::KIND
    }

    async fn run(&self, job: &crate::jobs::Job) -> Result<(), crate::jobs::JobError> {
        let input: RememberTurn = job.payload()?;
        remember_turn(
            self.store.as_ref(),
            self.embedder.as_ref(),
            &input.turn,
            input.message_vector,
            self.chunk_words,
        )
        .await
        .map(|_| ())
        .map_err(crate::jobs::JobError::new)
    }
}
