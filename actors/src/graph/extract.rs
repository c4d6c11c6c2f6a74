//! The fact extraction job: the model reads a message and answers JSON facts.

use std::sync::Arc;

use actix::Addr;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::*;
use crate::jobs::{Job, JobError, JobHandler};
use crate::llm::{LlmActor, complete_in_background};
use crate::ports::{ChatMessage, ChatRequest, Role};

/// Payload of an `extract_facts` job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExtractFacts {
    pub user: String,
    pub message: String,
    pub at_ms: i64,
}

impl crate::jobs::Payload for ExtractFacts {
    const KIND: crate::jobs::JobKind = crate::jobs::JobKind::ExtractFacts;
}

const EXTRACTION_PROMPT: &str = "You extract durable facts about the user from their message. \
Answer with a JSON array only, no prose. Each item: {\"subject\": \"user\" or an entity name, \
\"predicate\": snake_case relation such as name, lives_in, works_at, age, likes, has_sibling, \
has_pet, \"object\": entity or value, \"confidence\": number from 0 to 1}. Use \"user\" for \
the user themself. When the message corrects or updates something said before (\"forget X, now \
it's Y\", \"I moved to Z\", \"not X any more\"), add \"replaces\": the old value. Answer [] \
when there is nothing durable.";

/// Parses and validates the model's answer; anything off-schema is an error (nothing is stored
/// half-parsed).
pub fn parse_facts(answer: &str) -> Result<Vec<NewFact>, String> {
    let start = answer.find('[').ok_or("no JSON array in the answer")?;
    let end = answer.rfind(']').ok_or("no JSON array in the answer")?;
    let facts: Vec<NewFact> = serde_json::from_str(&answer[start..=end])
        .map_err(|e| format!("invalid facts JSON: {e}"))?;
    for f in &facts {
        let snake = !f.predicate.is_empty()
            && f.predicate
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !snake {
            // Not quoted: the model's words come from the user's (logs never carry them).
            return Err(format!(
                "a predicate ({} chars) is not snake_case",
                f.predicate.chars().count()
            ));
        }
        if f.subject.trim().is_empty() || f.object.trim().is_empty() {
            return Err("empty subject or object".into());
        }
        if !(0.0..=1.0).contains(&f.confidence) {
            return Err(format!("confidence {} out of 0..1", f.confidence));
        }
    }
    Ok(facts)
}

/// The `extract_facts` job: asks the LLM (through the LlmActor's admission), validates, stores.
pub struct FactExtraction {
    pub llm: Addr<LlmActor>,
    pub store: Arc<dyn FactStore>,
    pub model: Option<String>,
    pub single_valued: Vec<String>,
    pub min_confidence: f32,
}

#[async_trait]
impl JobHandler for FactExtraction {
    fn kind(&self) -> crate::jobs::JobKind {
        <ExtractFacts as crate::jobs::Payload>::KIND
    }

    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let input: ExtractFacts = job.payload()?;
        let request = ChatRequest {
            model: self.model.clone(),
            messages: vec![
                ChatMessage::new(Role::System, EXTRACTION_PROMPT),
                ChatMessage::new(Role::User, input.message.clone()),
            ],
            temperature: 0.0,
            top_p: None,
            frequency_penalty: None,
            presence_penalty: None,
            max_tokens: 256,
            tools: Vec::new(),
            tool_choice: Default::default(),
        };
        let answer = complete_in_background(&self.llm, request)
            .await
            .map_err(|e| JobError::new(e.to_string()))?;
        let facts: Vec<NewFact> = parse_facts(&answer)
            .map_err(|e| JobError::new(format!("{e}; the answer had {} characters", answer.len())))?
            .into_iter()
            .filter(|f| f.confidence >= self.min_confidence)
            .collect();
        let stored = self
            .store
            .upsert(
                &input.user,
                facts,
                &input.message,
                &self.single_valued,
                input.at_ms,
            )
            .await
            .map_err(|e| JobError::new(e.to_string()))?;
        info!(user = %input.user, stored, "facts extracted");
        Ok(())
    }
}
