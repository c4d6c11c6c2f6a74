//! The memory context provider: recall for the prompt.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::conversation::context::{
    ContextPiece, ContextProvider, ContextRequest, PieceKind, ProviderError, Section,
};

use super::*;

/// Recalls the user's memories relevant to the message.
pub struct MemoryProvider {
    pub store: Arc<dyn MemoryStore>,
    pub rank: RankSettings,
    pub guild_memories_in_dm: bool,
    pub deadline: Duration,
    pub clock: Arc<dyn crate::clock::Clock>,
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
        let now = self.clock.now_ms();
        let ranked = rank(candidates, &self.rank, now);
        let body = if ranked.is_empty() {
            "Nothing relevant yet.".to_owned()
        } else {
            format!(
                "Oldest first; where two disagree, the later one holds, and the facts about the \
                 user are current.\n{}",
                describe_memories(ranked.iter().map(|(_, c)| c), now)
            )
        };
        Ok(ContextPiece::Section(Section {
            title: "What you remember about this user".into(),
            body,
        }))
    }
}
