//! The fact context provider: what the graph knows that the message touches.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::conversation::context::{
    ContextPiece, ContextProvider, ContextRequest, PieceKind, ProviderError, Section,
};

pub struct FactProvider {
    pub store: Arc<dyn FactStore>,
    /// `facts.hops` and `facts.token_budget`, live.
    pub tuning: crate::live::Live<FactTuning>,
    pub deadline: Duration,
}

/// How far and how much of the graph a prompt gets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FactTuning {
    pub hops: usize,
    pub token_budget: usize,
}

#[async_trait]
impl ContextProvider for FactProvider {
    fn name(&self) -> &'static str {
        "facts"
    }
    fn kind(&self) -> PieceKind {
        PieceKind::Section
    }
    fn deadline(&self) -> Duration {
        self.deadline
    }
    async fn fetch(&self, request: &ContextRequest) -> Result<ContextPiece, ProviderError> {
        let facts = self.store.current(&request.key.user).await?;
        let tuning = *self.tuning.get();
        let selected = select(&facts, &request.text, tuning.hops, tuning.token_budget);
        let body = if selected.is_empty() {
            "None known yet.".to_owned()
        } else {
            describe_facts(&selected)
        };
        Ok(ContextPiece::Section(Section {
            title: "Facts about the user".into(),
            body,
        }))
    }
}
