//! Facts about the user: a small per-user graph of (subject) -[predicate]-> (object) edges with
//! confidence, source message and a validity interval. A correction closes the old edge rather
//! than deleting it; single-valued predicates keep one current value.
//!
//! Selection for the prompt (current facts about the user, facts about entities named in the
//! message, and their neighbours up to two hops) is done here over the user's current edges, so
//! every store recalls the same way. Extraction is a background job that asks the LLM for JSON.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::context::{
    ContextPiece, ContextProvider, ContextRequest, PieceKind, ProviderError, Section,
};
use crate::jobs::{Job, JobError, JobHandler};
use crate::llm::{LlmActor, complete_in_background};
use crate::ports::{ChatMessage, ChatRequest, Role, StoreError};

/// The user themself, as a subject.
pub const USER: &str = "user";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    pub subject: String,
    pub predicate: String,
    pub object: String,
    pub confidence: f32,
    pub source: String,
    pub valid_from_ms: i64,
    pub valid_to_ms: Option<i64>,
}

/// A fact as extracted, before it meets the graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewFact {
    pub subject: String,
    pub predicate: String,
    pub object: String,
    pub confidence: f32,
}

#[async_trait]
pub trait FactStore: Send + Sync + 'static {
    /// Adds facts; for single-valued predicates a different current value is closed (its
    /// `valid_to_ms` set), the same value is kept.
    async fn upsert(
        &self,
        user: &str,
        facts: Vec<NewFact>,
        source: &str,
        single_valued: &[String],
        now_ms: i64,
    ) -> Result<usize, StoreError>;
    /// All current (not closed) facts of the user.
    async fn current(&self, user: &str) -> Result<Vec<Fact>, StoreError>;
    async fn forget_user(&self, user: &str) -> Result<u64, StoreError>;
}

/// Facts as the model (and the user) reads them: "- Ana lives in Porto", one per line.
pub fn describe_facts(facts: &[Fact]) -> String {
    facts
        .iter()
        .map(|f| {
            format!(
                "- {} {} {}",
                f.subject,
                f.predicate.replace('_', " "),
                f.object
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn mentions(text: &str, name: &str) -> bool {
    let name = name.to_lowercase();
    !name.is_empty()
        && text.match_indices(&name).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + name.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
}

/// Facts for the prompt: everything current about the user, plus edges around entities the
/// message names, up to `hops` away.
pub fn select(facts: &[Fact], message: &str, hops: usize) -> Vec<Fact> {
    neighbourhood(facts, message, hops, true)
}

/// Facts around one entity (the `lookup_facts` tool): the edges that touch it and their
/// neighbours up to `hops` away. "user", "me" or "I" mean the user themself.
pub fn about(facts: &[Fact], entity: &str, hops: usize) -> Vec<Fact> {
    let entity = entity.trim();
    if ["user", "me", "i", "myself"].contains(&entity.to_lowercase().as_str()) {
        return facts
            .iter()
            .filter(|f| f.subject == USER)
            .cloned()
            .collect();
    }
    neighbourhood(facts, entity, hops, false)
}

fn neighbourhood(facts: &[Fact], message: &str, hops: usize, with_user: bool) -> Vec<Fact> {
    let text = message.to_lowercase();
    let mut selected: Vec<usize> = (0..facts.len())
        .filter(|&i| with_user && facts[i].subject == USER)
        .collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut frontier: VecDeque<(String, usize)> = VecDeque::new();
    for f in facts {
        for entity in [&f.subject, &f.object] {
            if entity != USER && mentions(&text, entity) && seen.insert(entity.to_lowercase()) {
                frontier.push_back((entity.to_lowercase(), 0));
            }
        }
    }
    while let Some((entity, depth)) = frontier.pop_front() {
        for (i, f) in facts.iter().enumerate() {
            let (s, o) = (f.subject.to_lowercase(), f.object.to_lowercase());
            if s == entity || o == entity {
                if !selected.contains(&i) {
                    selected.push(i);
                }
                let other = if s == entity { o } else { s };
                if depth + 1 < hops && other != USER && seen.insert(other.clone()) {
                    frontier.push_back((other, depth + 1));
                }
            }
        }
    }
    selected.into_iter().map(|i| facts[i].clone()).collect()
}

pub struct FactProvider {
    pub store: Arc<dyn FactStore>,
    pub hops: usize,
    pub deadline: Duration,
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
        let selected = select(&facts, &request.text, self.hops);
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

/// Payload of an `extract_facts` job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExtractFacts {
    pub user: String,
    pub message: String,
    pub at_ms: i64,
}

const EXTRACTION_PROMPT: &str = "You extract durable facts about the user from their message. \
Answer with a JSON array only, no prose. Each item: {\"subject\": \"user\" or an entity name, \
\"predicate\": snake_case relation such as name, lives_in, works_at, age, likes, has_sibling, \
has_pet, \"object\": entity or value, \"confidence\": number from 0 to 1}. Use \"user\" for \
the user themself. Answer [] when there is nothing durable.";

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
    fn kind(&self) -> &'static str {
        "extract_facts"
    }

    async fn run(&self, job: &Job) -> Result<(), JobError> {
        let input: ExtractFacts = serde_json::from_str(&job.payload)
            .map_err(|e| JobError::new(format!("bad payload: {e}")))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(s: &str, p: &str, o: &str) -> Fact {
        Fact {
            subject: s.into(),
            predicate: p.into(),
            object: o.into(),
            confidence: 1.0,
            source: String::new(),
            valid_from_ms: 0,
            valid_to_ms: None,
        }
    }

    #[test]
    fn selection_follows_named_entities_two_hops() {
        let facts = vec![
            fact(USER, "lives_in", "Lisbon"),
            fact(USER, "has_sibling", "Ana"),
            fact("Ana", "lives_in", "Porto"),
            fact("Porto", "is_in", "Portugal"),
            fact("Portugal", "uses", "Euro"),
            fact("Bob", "likes", "Chess"),
        ];
        let picked = select(&facts, "How is Ana doing?", 2);
        let objects: Vec<&str> = picked.iter().map(|f| f.object.as_str()).collect();
        assert_eq!(objects, vec!["Lisbon", "Ana", "Porto", "Portugal"]);
        assert!(!objects.contains(&"Euro"), "three hops away");
        assert!(!objects.contains(&"Chess"), "not mentioned");
        assert_eq!(select(&facts, "Anathema", 2).len(), 2, "whole words only");
    }

    #[test]
    fn extraction_output_is_validated() {
        let ok = parse_facts("Sure! [{\"subject\":\"user\",\"predicate\":\"lives_in\",\"object\":\"Lisbon\",\"confidence\":0.9}]").unwrap();
        assert_eq!(ok[0].object, "Lisbon");
        assert!(parse_facts("I think you live in Lisbon").is_err());
        assert!(parse_facts("[{\"subject\":\"user\",\"predicate\":\"Lives In\",\"object\":\"x\",\"confidence\":0.9}]").is_err());
        assert!(
            parse_facts(
                "[{\"subject\":\"user\",\"predicate\":\"x\",\"object\":\"y\",\"confidence\":3}]"
            )
            .is_err()
        );
        assert!(parse_facts("[{\"subject\":\"user\",\"predicate\":\"x\"}]").is_err());
    }
}
