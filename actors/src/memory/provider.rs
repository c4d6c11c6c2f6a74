//! The memory context provider: hybrid recall for the prompt, with what newer facts have
//! corrected marked as out of date.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::warn;

use crate::conversation::context::{
    ContextPiece, ContextProvider, ContextRequest, PieceKind, ProviderError, Section,
};
use crate::graph::{Fact, FactStore, describe_facts};

use super::terms::words;
use super::*;

/// Candidates asked of each half of the store's search (vector, keyword), at least: enough
/// for the fusion to lift a memory one ranking alone puts low. Exact search over a user's
/// partition costs the same for 40 as for 20.
const CANDIDATES: usize = 40;

/// Recalls the user's memories relevant to the message.
pub struct MemoryProvider {
    pub store: Arc<dyn MemoryStore>,
    /// Where corrections are known: a memory stating a value whose fact was since closed is
    /// marked out of date. None (no fact graph): memories are shown as they were said.
    pub facts: Option<Arc<dyn FactStore>>,
    /// `[memory]` ranking, live.
    pub rank: crate::live::Live<RankSettings>,
    pub guild_memories_in_dm: bool,
    pub deadline: Duration,
    pub clock: Arc<dyn crate::clock::Clock>,
}

impl MemoryProvider {
    /// The ranked memories for `text`, corrections marked: what the prompt shows, and what the
    /// memory benchmark measures.
    pub async fn recall(
        &self,
        key: &crate::key::ConversationKey,
        scope: &crate::key::Scope,
        text: &str,
        vector: crate::ports::Embedding,
    ) -> Result<Vec<(f32, Candidate)>, StoreError> {
        let settings = self.rank.get();
        let search = self.store.search(MemoryQuery {
            key: key.clone(),
            scopes: AllowedScopes::for_scope(scope, self.guild_memories_in_dm),
            vector,
            text: text.to_owned(),
            limit: (settings.top_k * 4).max(CANDIDATES),
        });
        let corrections = async {
            let Some(facts) = &self.facts else {
                return None;
            };
            let user = &key.user;
            match futures::future::try_join(facts.corrected(user), facts.current(user)).await {
                Ok(both) => Some(both),
                Err(e) => {
                    warn!(error = %e, "no corrections for recalled memories: the fact graph failed");
                    None
                }
            }
        };
        let (candidates, corrections) = futures::future::join(search, corrections).await;
        let mut ranked = rank(candidates?, &settings, text, self.clock.now_ms());
        if let Some((corrected, current)) = corrections {
            mark_corrected(&mut ranked, &corrected, &current);
        }
        Ok(ranked)
    }
}

/// Marks every memory that states a value a later fact closed (said before the correction,
/// naming the old value and not the new one) with what holds now.
pub fn mark_corrected(memories: &mut [(f32, Candidate)], corrected: &[Fact], current: &[Fact]) {
    for (_, memory) in memories.iter_mut() {
        let text = words(&memory.text);
        let text: Vec<&str> = text.iter().map(|w| w.text.as_str()).collect();
        for old in corrected {
            let Some(closed_at) = old.valid_to_ms else {
                continue;
            };
            if memory.created_at_ms >= closed_at || !mentions(&text, &old.object) {
                continue;
            }
            let now: Vec<&Fact> = current
                .iter()
                .filter(|f| {
                    f.subject.eq_ignore_ascii_case(&old.subject) && f.predicate == old.predicate
                })
                .collect();
            if now.iter().any(|f| mentions(&text, &f.object)) {
                // It names what holds now as well: a correction itself, or still true.
                continue;
            }
            memory.corrected_by = Some(match now.first() {
                Some(f) => format!(
                    "now: {}",
                    describe_facts(&[(*f).clone()]).trim_start_matches("- ")
                ),
                None => format!(
                    "no longer: {}",
                    describe_facts(std::slice::from_ref(old)).trim_start_matches("- ")
                ),
            });
            break;
        }
    }
}

/// Whether the words of `phrase` appear in `text` in order, as whole words.
fn mentions(text: &[&str], phrase: &str) -> bool {
    let phrase = words(phrase);
    let phrase: Vec<&str> = phrase.iter().map(|w| w.text.as_str()).collect();
    !phrase.is_empty() && text.windows(phrase.len()).any(|w| w == phrase.as_slice())
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
        let ranked = self
            .recall(&request.key, &request.scope, &request.text, vector)
            .await?;
        let now = self.clock.now_ms();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Scope;

    fn memory(text: &str, at: i64) -> (f32, Candidate) {
        (
            1.0,
            Candidate {
                group: text.into(),
                kind: MemoryKind::Message,
                scope: Scope::Direct,
                text: text.into(),
                importance: 0.5,
                created_at_ms: at,
                similarity: 0.9,
                keyword_rank: None,
                corrected_by: None,
            },
        )
    }

    fn fact(o: &str, from: i64, to: Option<i64>) -> Fact {
        Fact {
            subject: "user".into(),
            predicate: "favourite_food".into(),
            object: o.into(),
            confidence: 0.9,
            source: "m".into(),
            valid_from_ms: from,
            valid_to_ms: to,
        }
    }

    #[test]
    fn a_memory_of_a_corrected_value_says_what_holds_now() {
        let mut memories = vec![
            memory("my favourite food is bibimbap", 10),
            memory("forget bibimbap, these days it's ramen", 50),
            memory("bibimbapful is not a word", 10),
            memory("I ate bibimbap after the correction", 60),
        ];
        let corrected = [fact("bibimbap", 10, Some(50))];
        let current = [fact("ramen", 50, None)];
        mark_corrected(&mut memories, &corrected, &current);
        let marks: Vec<Option<&str>> = memories
            .iter()
            .map(|(_, c)| c.corrected_by.as_deref())
            .collect();
        assert_eq!(
            marks,
            [Some("now: user favourite food ramen"), None, None, None]
        );
        let text = describe_memories(memories.iter().map(|(_, c)| c).take(1), 20);
        assert!(
            text.contains("out of date: since corrected, now: user favourite food ramen"),
            "{text}"
        );
    }
}
