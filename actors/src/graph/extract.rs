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
Answer with JSON only, no prose: {\"facts\": [...]}. Each item: {\"subject\": \"user\" or an entity name, \
\"predicate\": snake_case relation such as name, lives_in, works_at, age, likes, has_sibling, \
has_pet, \"object\": entity or value, \"confidence\": number from 0 to 1}. Use \"user\" for \
the user themself. When the message corrects or updates something said before (\"forget X, now \
it's Y\", \"I moved to Z\", \"not X any more\"), add \"replaces\": the old value. Answer \
{\"facts\": []} when there is nothing durable.";

/// The schema extraction answers follow: `{"facts": [{subject, predicate, object, confidence,
/// replaces?}]}` (structured outputs need an object at the root). Lengths and counts are
/// bounded so the whole answer fits in the request's `max_tokens`: a grammar guarantees valid
/// JSON only if the answer is not cut off.
pub fn facts_schema() -> crate::ports::ResponseSchema {
    let fact = serde_json::json!({
        "type": "object",
        "properties": {
            "subject": {"type": "string", "minLength": 1, "maxLength": 32},
            "predicate": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$"},
            "object": {"type": "string", "minLength": 1, "maxLength": 32},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "replaces": {"type": "string", "maxLength": 32}
        },
        "required": ["subject", "predicate", "object", "confidence"],
        "additionalProperties": false
    });
    crate::ports::ResponseSchema {
        name: "facts",
        schema: serde_json::json!({
            "type": "object",
            // Bounded, so a small model that repeats itself still ends its answer in time.
            "properties": {"facts": {"type": "array", "items": fact, "maxItems": 3}},
            "required": ["facts"],
            "additionalProperties": false
        }),
    }
}

/// The facts in the model's answer (`{"facts": [...]}`, or a bare array, possibly wrapped in
/// prose by a server without structured outputs), and how many items were dropped as
/// off-schema. Only an answer with no JSON at all is an error: one bad item must not cost a
/// retry that takes an LLM slot again.
pub fn parse_facts(answer: &str) -> Result<(Vec<NewFact>, usize), String> {
    let value: serde_json::Value = serde_json::from_str(answer.trim())
        .or_else(|_| {
            let start = answer.find('[').ok_or("no JSON in the answer")?;
            let end = answer.rfind(']').ok_or("no JSON in the answer")?;
            serde_json::from_str(&answer[start..=end]).map_err(|_| "invalid facts JSON")
        })
        .map_err(|e: &str| e.to_owned())?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(mut object) => match object.remove("facts") {
            Some(serde_json::Value::Array(items)) => items,
            _ => return Err("no facts array in the answer".into()),
        },
        _ => return Err("no facts array in the answer".into()),
    };
    let total = items.len();
    let facts: Vec<NewFact> = items
        .into_iter()
        .filter_map(|item| serde_json::from_value::<NewFact>(item).ok())
        .filter(well_formed)
        .collect();
    let dropped = total - facts.len();
    Ok((facts, dropped))
}

/// A snake_case predicate, a subject and an object, a confidence in 0..1.
fn well_formed(f: &NewFact) -> bool {
    let snake = !f.predicate.is_empty()
        && f.predicate
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    snake
        && !f.subject.trim().is_empty()
        && !f.object.trim().is_empty()
        && (0.0..=1.0).contains(&f.confidence)
}

/// Whether the message itself says this: its object (and its subject, unless it is the user)
/// appear in the message. A small model's invention never reaches the graph.
pub fn grounded(fact: &NewFact, message: &str) -> bool {
    let message = message.to_lowercase();
    let said = |name: &str| crate::text::contains_words(&message, &name.trim().to_lowercase());
    said(&fact.object) && (fact.subject.trim().eq_ignore_ascii_case(USER) || said(&fact.subject))
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
            response_schema: Some(facts_schema()),
            ..ChatRequest::completion(
                self.model.clone(),
                vec![
                    ChatMessage::new(Role::System, EXTRACTION_PROMPT),
                    ChatMessage::new(Role::User, input.message.clone()),
                ],
                0.0,
                // The schema bounds the answer to about 480 characters: even at one token a
                // character (odd words) it ends before this.
                480,
            )
        };
        let answer = complete_in_background(&self.llm, request)
            .await
            .map_err(|e| JobError::new(e.to_string()))?;
        let (facts, dropped) = parse_facts(&answer).map_err(|e| {
            JobError::new(format!("{e}; the answer had {} characters", answer.len()))
        })?;
        if dropped > 0 {
            // Not quoted: the model's words come from the user's (logs never carry them).
            tracing::debug!(dropped, "off-schema facts dropped from the answer");
        }
        let facts: Vec<NewFact> = facts
            .into_iter()
            .filter(|f| f.confidence >= self.min_confidence && grounded(f, &input.message))
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
