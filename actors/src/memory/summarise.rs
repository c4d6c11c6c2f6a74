//! The summary job: every few turns (or when a conversation idles) the model condenses them into one memory.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::key::{ConversationKey, Scope};

use super::*;

/// Payload of a `summarise` job: summarise the last `turns` turns of a conversation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summarise {
    pub key: ConversationKey,
    pub scope: Scope,
    pub turns: usize,
    pub at_ms: i64,
}

impl crate::jobs::Payload for Summarise {
    const KIND: crate::jobs::JobKind = crate::jobs::JobKind::Summarise;
}

/// The schema summary answers follow: `{"summary": "..."}`.
pub fn summary_schema() -> crate::ports::ResponseSchema {
    crate::ports::ResponseSchema {
        name: "summary",
        schema: serde_json::json!({
            "type": "object",
            // Bounded to fit the request's max_tokens, so the answer is never cut off.
            "properties": {"summary": {"type": "string", "minLength": 1, "maxLength": 500}},
            "required": ["summary"],
            "additionalProperties": false
        }),
    }
}

/// The summary from the model's answer: the `summary` field of a structured answer, or (a
/// server without structured outputs) the text itself.
pub fn parse_summary(answer: &str) -> Option<String> {
    let text = match serde_json::from_str::<serde_json::Value>(answer.trim()) {
        Ok(value) => value.get("summary")?.as_str()?.to_owned(),
        Err(_) => answer.to_owned(),
    };
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

const SUMMARY_PROMPT: &str = "Summarise this conversation between a user and an AI character \
in two or three sentences, from the character's point of view, keeping what matters for later: \
facts about the user, plans, feelings, promises. Answer as JSON: {\"summary\": \"...\"}.";

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
    fn kind(&self) -> crate::jobs::JobKind {
        <Summarise as crate::jobs::Payload>::KIND
    }

    async fn run(&self, job: &crate::jobs::Job) -> Result<(), crate::jobs::JobError> {
        use crate::jobs::JobError;
        use crate::ports::{ChatMessage, ChatRequest, Role};
        let input: Summarise = job.payload()?;
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
            response_schema: Some(summary_schema()),
            ..ChatRequest::completion(
                self.model.clone(),
                vec![
                    ChatMessage::new(Role::System, SUMMARY_PROMPT),
                    ChatMessage::new(Role::User, transcript),
                ],
                0.2,
                200,
            )
        };
        let summary = crate::llm::complete_in_background(&self.llm, request)
            .await
            .map_err(|e| JobError::new(e.to_string()))?;
        let Some(summary) = parse_summary(&summary) else {
            return Err(JobError::new("empty summary"));
        };
        let vector = embed_in_background(self.embedder.as_ref(), &summary).await?;
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
