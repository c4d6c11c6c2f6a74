//! Long-term memory: types, the scope rule, re-ranking, and the context provider.
//!
//! Stores (SQLite embedded, Qdrant in server mode) only return candidates, by cosine similarity
//! and by keyword, within one user's partition and allowed scopes; the fusion, re-ranking and
//! formatting here are shared so every backend recalls the same way.

mod actor;
mod describe;
mod provider;
mod recall;
mod remember;
mod summarise;
pub mod terms;

pub use crate::text::chunk;
pub use actor::{ForgetMemories, ListMemories, MemoryActor, MemoryPool, Recall, Remember};
pub use describe::{DescribeImage, DescribeImageHandler, image_memory};
pub use provider::{MemoryProvider, mark_corrected};
pub use recall::{RankSettings, keyword_ranks, rank};
pub use remember::{MemorySettings, RememberTurn, RememberTurnHandler, importance, remember_turn};
pub use summarise::{Summarise, SummariseHandler};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

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

/// The vector of one memory a background job writes (a summary, an image's description):
/// embedded on the background line, behind live messages.
async fn embed_in_background(
    embedder: &dyn crate::ports::Embedder,
    text: &str,
) -> Result<Embedding, crate::jobs::JobError> {
    use crate::jobs::JobError;
    embedder
        .embed_background(vec![text.to_owned()])
        .await
        .map_err(|e| JobError::new(e.to_string()))?
        .pop()
        .ok_or_else(|| JobError::new("the embedder returned no vector"))
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
    /// Position among the store's keyword hits (0: best), if the text matched the query's words.
    pub keyword_rank: Option<u32>,
    /// Set by recall when a newer fact corrects what this memory says: how the prompt marks it.
    pub corrected_by: Option<String>,
}

#[derive(Clone, Debug)]
pub struct MemoryQuery {
    pub key: ConversationKey,
    pub scopes: AllowedScopes,
    pub vector: Embedding,
    /// The message itself, for the keyword half of the search.
    pub text: String,
    /// Candidates to return from each half before re-ranking.
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

/// "Newest first", the same in every store: by creation time, then (for memories made in the
/// same millisecond, like a summary and the reply it ends with) by group id, descending. No
/// store's own tie-break (insertion order, point ids) decides what a listing shows.
pub fn newest_first(a_ms: i64, a_group: &str, b_ms: i64, b_group: &str) -> std::cmp::Ordering {
    b_ms.cmp(&a_ms).then_with(|| b_group.cmp(a_group))
}

/// Memories as the model reads them: oldest first, each with its age, so what was said later
/// reads as later. Only the newest summary speaks for the conversation; older ones are marked
/// as earlier (a newer summary supersedes them).
pub fn describe_memories<'a>(memories: impl Iterator<Item = &'a Candidate>, now_ms: i64) -> String {
    let mut memories: Vec<&Candidate> = memories.collect();
    memories.sort_by_key(|c| c.created_at_ms);
    let newest_summary = memories
        .iter()
        .filter(|c| c.kind == MemoryKind::Summary)
        .map(|c| c.created_at_ms)
        .max();
    memories
        .into_iter()
        .map(|c| {
            let who = match c.kind {
                MemoryKind::Message => "the user said",
                MemoryKind::Reply => "you said",
                MemoryKind::Summary if Some(c.created_at_ms) == newest_summary => "summary",
                MemoryKind::Summary => "earlier summary, since superseded",
            };
            let age = describe_age(now_ms, c.created_at_ms);
            match &c.corrected_by {
                Some(now) => format!(
                    "- ({age}, out of date: since corrected, {now}) {who}: {}",
                    c.text
                ),
                None => format!("- ({age}) {who}: {}", c.text),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn describe_age(now_ms: i64, then_ms: i64) -> String {
    let days = (now_ms - then_ms).max(0) / 86_400_000;
    let plural = |n: i64, unit: &str| {
        if n == 1 {
            format!("a {unit} ago")
        } else {
            format!("{n} {unit}s ago")
        }
    };
    match days {
        0 => "today".into(),
        1 => "yesterday".into(),
        2..=13 => format!("{days} days ago"),
        14..=59 => plural(days / 7, "week"),
        60..=364 => plural(days / 30, "month"),
        _ => plural(days / 365, "year"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memories_read_oldest_first_and_older_summaries_are_marked() {
        let day = 86_400_000;
        let memory = |kind, text: &str, days_ago: i64| Candidate {
            group: text.into(),
            kind,
            scope: Scope::Direct,
            text: text.into(),
            importance: 0.5,
            created_at_ms: (100 - days_ago) * day,
            similarity: 0.9,
            keyword_rank: None,
            corrected_by: None,
        };
        let recalled = [
            memory(MemoryKind::Message, "these days it's ramen", 2),
            memory(MemoryKind::Summary, "they love bibimbap", 60),
            memory(MemoryKind::Message, "my favourite is bibimbap", 63),
            memory(MemoryKind::Summary, "they switched to ramen", 1),
        ];
        let text = describe_memories(recalled.iter(), 100 * day);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "- (2 months ago) the user said: my favourite is bibimbap",
                "- (2 months ago) earlier summary, since superseded: they love bibimbap",
                "- (2 days ago) the user said: these days it's ramen",
                "- (yesterday) summary: they switched to ramen",
            ]
        );
    }

    #[test]
    fn ages_read_as_people_say_them() {
        let day = 86_400_000;
        let at = |days: i64| describe_age(1_000 * day, (1_000 - days) * day);
        assert_eq!(at(0), "today");
        assert_eq!(at(1), "yesterday");
        assert_eq!(at(5), "5 days ago");
        assert_eq!(at(21), "3 weeks ago");
        assert_eq!(at(65), "2 months ago");
        assert_eq!(at(400), "a year ago");
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
