//! Long-term memory: types, the scope rule, re-ranking, and the context provider.
//!
//! Stores (SQLite embedded, Qdrant in server mode) only return candidates by cosine similarity
//! within one user's partition and allowed scopes; the re-ranking and formatting here are shared
//! so every backend recalls the same way.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::context::{
    ContextPiece, ContextProvider, ContextRequest, PieceKind, ProviderError, Section,
};
use crate::key::{ConversationKey, Scope};
use crate::ports::{Embedding, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryKind {
    /// Something the user said.
    Message,
    /// Something the character replied.
    Reply,
    /// A summary of a past session.
    Summary,
}

impl MemoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryKind::Message => "message",
            MemoryKind::Reply => "reply",
            MemoryKind::Summary => "summary",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "message" => Some(MemoryKind::Message),
            "reply" => Some(MemoryKind::Reply),
            "summary" => Some(MemoryKind::Summary),
            _ => None,
        }
    }
}

/// One stored chunk. Long texts are split into chunks sharing a `group`; retrieval re-joins them.
#[derive(Clone, Debug)]
pub struct MemoryChunk {
    pub key: ConversationKey,
    pub scope: Scope,
    pub kind: MemoryKind,
    pub group: String,
    pub chunk: u32,
    pub text: String,
    pub importance: f32,
    pub created_at_ms: i64,
    pub vector: Embedding,
}

/// A candidate from a store: similarity only; ranking happens in [`rank`].
#[derive(Clone, Debug)]
pub struct Candidate {
    pub group: String,
    pub kind: MemoryKind,
    pub scope: Scope,
    /// The whole (re-joined) text.
    pub text: String,
    pub importance: f32,
    pub created_at_ms: i64,
    pub similarity: f32,
}

#[derive(Clone, Debug)]
pub struct MemoryQuery {
    pub key: ConversationKey,
    pub scopes: AllowedScopes,
    pub vector: Embedding,
    /// Candidates to return before re-ranking.
    pub limit: usize,
}

/// Which scopes' memories may be recalled where.
#[derive(Clone, Debug, PartialEq)]
pub enum AllowedScopes {
    /// Only this scope.
    Only(Scope),
    /// This DM plus every guild (the user's own guild memories follow them into DMs).
    DirectAndGuilds,
}

impl AllowedScopes {
    /// The default rule: DM memories stay in the DM; guild memories are recalled in that guild
    /// and in the user's DMs with the same character (if `guild_memories_in_dm`).
    pub fn for_scope(scope: &Scope, guild_memories_in_dm: bool) -> Self {
        match scope {
            Scope::Direct if guild_memories_in_dm => AllowedScopes::DirectAndGuilds,
            other => AllowedScopes::Only(other.clone()),
        }
    }

    pub fn allows(&self, scope: &Scope) -> bool {
        match self {
            AllowedScopes::Only(s) => s == scope,
            AllowedScopes::DirectAndGuilds => matches!(scope, Scope::Direct | Scope::Guild(_)),
        }
    }
}

#[async_trait]
pub trait MemoryStore: Send + Sync + 'static {
    async fn add(&self, chunks: Vec<MemoryChunk>) -> Result<(), StoreError>;
    /// Candidates by cosine similarity within `query.key`'s own memories and allowed scopes.
    async fn search(&self, query: MemoryQuery) -> Result<Vec<Candidate>, StoreError>;
    /// The newest `limit` memories of one conversation, re-joined, newest first.
    async fn list(&self, key: &ConversationKey, limit: usize)
    -> Result<Vec<Candidate>, StoreError>;
    /// Deletes every memory of `user` (all characters, all scopes) and its cache entries.
    async fn forget_user(&self, user: &str) -> Result<u64, StoreError>;
}

#[derive(Clone, Debug)]
pub struct RankSettings {
    pub top_k: usize,
    pub min_similarity: f32,
    pub recency_half_life: Duration,
    /// How much recency and importance can lower a score (0: ignored, 1: fully).
    pub recency_weight: f32,
    pub importance_weight: f32,
}

/// Similarity × recency decay × importance, deduplicated by text, best `top_k` first.
/// "Newest first", the same in every store: by creation time, then (for memories made in the
/// same millisecond, like a summary and the reply it ends with) by group id, descending. No
/// store's own tie-break (insertion order, point ids) decides what a listing shows.
pub fn newest_first(a_ms: i64, a_group: &str, b_ms: i64, b_group: &str) -> std::cmp::Ordering {
    b_ms.cmp(&a_ms).then_with(|| b_group.cmp(a_group))
}

pub fn rank(
    mut candidates: Vec<Candidate>,
    settings: &RankSettings,
    now_ms: i64,
) -> Vec<(f32, Candidate)> {
    let half_life_ms = settings.recency_half_life.as_millis().max(1) as f64;
    let mut scored: Vec<(f32, Candidate)> = candidates
        .drain(..)
        .filter(|c| c.similarity >= settings.min_similarity)
        .map(|c| {
            let age = (now_ms - c.created_at_ms).max(0) as f64;
            let decay = 0.5f64.powf(age / half_life_ms) as f32;
            let recency = 1.0 - settings.recency_weight + settings.recency_weight * decay;
            let importance = 1.0 - settings.importance_weight
                + settings.importance_weight * c.importance.clamp(0.0, 1.0);
            (c.similarity * recency * importance, c)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut seen = std::collections::HashSet::new();
    scored.retain(|(_, c)| seen.insert(c.text.trim().to_lowercase()));
    scored.truncate(settings.top_k);
    scored
}

/// Splits text into chunks of at most `max_words` words (the embedder truncates long input).
pub fn chunk(text: &str, max_words: usize) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return Vec::new();
    }
    words
        .chunks(max_words.max(1))
        .map(|c| c.join(" "))
        .collect()
}

/// Memories as the model reads them: one line each, with their age and who said it.
pub fn describe_memories<'a>(memories: impl Iterator<Item = &'a Candidate>, now_ms: i64) -> String {
    memories
        .map(|c| {
            let who = match c.kind {
                MemoryKind::Message => "the user said",
                MemoryKind::Reply => "you said",
                MemoryKind::Summary => "summary",
            };
            format!(
                "- ({}) {who}: {}",
                describe_age(now_ms, c.created_at_ms),
                c.text
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn describe_age(now_ms: i64, then_ms: i64) -> String {
    let days = (now_ms - then_ms).max(0) / 86_400_000;
    match days {
        0 => "today".into(),
        1 => "yesterday".into(),
        n => format!("{n} days ago"),
    }
}

/// Recalls the user's memories relevant to the message.
pub struct MemoryProvider {
    pub store: Arc<dyn MemoryStore>,
    pub rank: RankSettings,
    pub guild_memories_in_dm: bool,
    pub deadline: Duration,
}

#[async_trait]
impl ContextProvider for MemoryProvider {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn kind(&self) -> PieceKind {
        PieceKind::Section
    }
    fn deadline(&self) -> Duration {
        self.deadline
    }
    async fn fetch(&self, request: &ContextRequest) -> Result<ContextPiece, ProviderError> {
        let Some(vector) = request.embedding.clone().await else {
            return Err(ProviderError::Other("no embedding for the message".into()));
        };
        let candidates = self
            .store
            .search(MemoryQuery {
                key: request.key.clone(),
                scopes: AllowedScopes::for_scope(&request.scope, self.guild_memories_in_dm),
                vector,
                limit: self.rank.top_k * 4,
            })
            .await?;
        let now = crate::conversation::pipeline::unix_ms();
        let ranked = rank(candidates, &self.rank, now);
        let body = if ranked.is_empty() {
            "Nothing relevant yet.".to_owned()
        } else {
            describe_memories(ranked.iter().map(|(_, c)| c), now)
        };
        Ok(ContextPiece::Section(Section {
            title: "What you remember about this user".into(),
            body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(text: &str, similarity: f32, age_days: i64, importance: f32) -> Candidate {
        Candidate {
            group: text.into(),
            kind: MemoryKind::Message,
            scope: Scope::Direct,
            text: text.into(),
            importance,
            created_at_ms: 100 * 86_400_000 - age_days * 86_400_000,
            similarity,
        }
    }

    fn settings() -> RankSettings {
        RankSettings {
            top_k: 3,
            min_similarity: 0.2,
            recency_half_life: Duration::from_secs(30 * 86_400),
            recency_weight: 0.3,
            importance_weight: 0.3,
        }
    }

    #[test]
    fn ranking_weighs_recency_and_importance_and_dedups() {
        let now = 100 * 86_400_000;
        let ranked = rank(
            vec![
                candidate("old but similar", 0.80, 365, 0.5),
                candidate("recent and similar", 0.78, 1, 0.5),
                candidate("Recent and similar", 0.77, 1, 0.5),
                candidate("unrelated", 0.1, 0, 1.0),
                candidate("important", 0.70, 1, 1.0),
            ],
            &settings(),
            now,
        );
        let texts: Vec<&str> = ranked.iter().map(|(_, c)| c.text.as_str()).collect();
        assert_eq!(
            texts,
            vec!["important", "recent and similar", "old but similar"]
        );
    }

    #[test]
    fn the_scope_rule() {
        let dm = AllowedScopes::for_scope(&Scope::Direct, true);
        assert!(dm.allows(&Scope::Direct) && dm.allows(&Scope::Guild(7)));
        let guild = AllowedScopes::for_scope(&Scope::Guild(7), true);
        assert!(guild.allows(&Scope::Guild(7)));
        assert!(
            !guild.allows(&Scope::Direct),
            "a DM never leaks into a guild"
        );
        assert!(!guild.allows(&Scope::Guild(8)));
        assert!(!AllowedScopes::for_scope(&Scope::Direct, false).allows(&Scope::Guild(7)));
    }

    #[test]
    fn long_texts_are_chunked() {
        let text = (0..25)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let chunks = chunk(&text, 10);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.join(" "), text);
    }
}

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
    match (kind, personal) {
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
            crate::ring::key_hash(&turn.key.user, text)
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
        .embed(to_embed)
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

/// The `remember_turn` job. Idempotent: chunks are keyed by a group derived from the turn, and
/// a re-run after a crash replaces nothing it already stored (see the store's `add`).
pub struct RememberTurnHandler {
    pub store: Arc<dyn MemoryStore>,
    pub embedder: Arc<dyn crate::ports::Embedder>,
    pub chunk_words: usize,
}

#[async_trait]
impl crate::jobs::JobHandler for RememberTurnHandler {
    fn kind(&self) -> &'static str {
        "remember_turn"
    }

    async fn run(&self, job: &crate::jobs::Job) -> Result<(), crate::jobs::JobError> {
        let input: RememberTurn = serde_json::from_str(&job.payload)
            .map_err(|e| crate::jobs::JobError::new(format!("bad payload: {e}")))?;
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

/// Payload of a `summarise` job: summarise the last `turns` turns of a conversation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summarise {
    pub key: ConversationKey,
    pub scope: Scope,
    pub turns: usize,
    pub at_ms: i64,
}

const SUMMARY_PROMPT: &str = "Summarise this conversation between a user and an AI character \
in two or three sentences, from the character's point of view, keeping what matters for later: \
facts about the user, plans, feelings, promises. Answer with the summary only.";

/// The `summarise` job: asks the LLM (background lane) for a summary of recent turns and stores
/// it as a `summary` memory, recalled like any other memory.
pub struct SummariseHandler {
    pub history: Arc<dyn crate::ports::HistoryStore>,
    pub store: Arc<dyn MemoryStore>,
    pub embedder: Arc<dyn crate::ports::Embedder>,
    pub llm: actix::Addr<crate::llm::LlmActor>,
    pub model: Option<String>,
}

#[async_trait]
impl crate::jobs::JobHandler for SummariseHandler {
    fn kind(&self) -> &'static str {
        "summarise"
    }

    async fn run(&self, job: &crate::jobs::Job) -> Result<(), crate::jobs::JobError> {
        use crate::jobs::JobError;
        use crate::ports::{ChatMessage, ChatRequest, Role};
        let input: Summarise = serde_json::from_str(&job.payload)
            .map_err(|e| JobError::new(format!("bad payload: {e}")))?;
        let turns = self
            .history
            .recent_turns(&input.key, &input.scope, input.turns)
            .await
            .map_err(|e| JobError::new(e.to_string()))?;
        if turns.is_empty() {
            return Ok(());
        }
        let transcript = turns
            .iter()
            .map(|t| format!("User: {}\nCharacter: {}", t.user_message, t.reply))
            .collect::<Vec<_>>()
            .join("\n");
        let request = ChatRequest {
            model: self.model.clone(),
            messages: vec![
                ChatMessage::new(Role::System, SUMMARY_PROMPT),
                ChatMessage::new(Role::User, transcript),
            ],
            temperature: 0.2,
            top_p: None,
            frequency_penalty: None,
            presence_penalty: None,
            max_tokens: 160,
            tools: Vec::new(),
            tool_choice: Default::default(),
        };
        let summary = crate::llm::complete_in_background(&self.llm, request)
            .await
            .map_err(|e| JobError::new(e.to_string()))?;
        let summary = summary.trim().to_owned();
        if summary.is_empty() {
            return Err(JobError::new("empty summary"));
        }
        let vector = self
            .embedder
            .embed(vec![summary.clone()])
            .await
            .map_err(|e| JobError::new(e.to_string()))?
            .pop()
            .ok_or_else(|| JobError::new("no vector for the summary"))?;
        self.store
            .add(vec![MemoryChunk {
                key: input.key.clone(),
                scope: input.scope.clone(),
                kind: MemoryKind::Summary,
                // One summary per job: a re-run after a crash stores nothing twice.
                group: format!("summary:{}", job.id),
                chunk: 0,
                text: summary,
                importance: importance(MemoryKind::Summary, ""),
                created_at_ms: input.at_ms,
                vector,
            }])
            .await
            .map_err(|e| JobError::new(e.to_string()))
    }
}
