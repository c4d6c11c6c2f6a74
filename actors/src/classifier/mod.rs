//! The semantic fast track: is this message simple small talk that can skip the expensive path?
//!
//! Pure logic over one embedding: the nearest example phrase decides the intent; a `fast` intent
//! must also clear its own threshold, the message must be short, and it must not mention
//! anything the bot should remember (configurable guard phrases). Everything else is `full`.
//! The [`ClassifierActor`] owns the intent set so it is loaded once and shared by all shards.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::conversation::context::{
    ContextPiece, ContextProvider, ContextRequest, PieceKind, ProviderError,
};

use crate::ports::Embedding;
use crate::vector::{dot, normalize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    Fast,
    Full,
}

#[derive(Clone)]
pub struct Intent {
    pub name: String,
    pub route: Route,
    pub threshold: f32,
    /// Unit-length example vectors.
    pub examples: Vec<Embedding>,
}

#[derive(Clone)]
pub struct IntentSet {
    pub intents: Vec<Intent>,
    /// Lower-case phrases that force the full path.
    pub guards: Vec<String>,
    pub max_fast_words: usize,
}

/// The classifier's decision, with its reason for the per-message log line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub route: Route,
    pub intent: Option<String>,
    pub score: f32,
    pub reason: &'static str,
}

impl Verdict {
    pub fn full(reason: &'static str) -> Self {
        Verdict {
            route: Route::Full,
            intent: None,
            score: 0.0,
            reason,
        }
    }
}

impl IntentSet {
    pub fn classify(&self, text: &str, vector: &[f32]) -> Verdict {
        let lower = text.to_lowercase();
        if lower.split_whitespace().count() > self.max_fast_words {
            return Verdict::full("long message");
        }
        if self
            .guards
            .iter()
            .any(|g| crate::text::contains_words(&lower, g))
        {
            return Verdict::full("refers to something to remember");
        }
        let query = normalize(vector);
        let best = self
            .intents
            .iter()
            .filter_map(|intent| {
                let score = intent
                    .examples
                    .iter()
                    .map(|e| dot(&query, e))
                    .fold(f32::MIN, f32::max);
                (score > f32::MIN).then_some((intent, score))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((intent, score)) if intent.route == Route::Fast && score >= intent.threshold => {
                Verdict {
                    route: Route::Fast,
                    intent: Some(intent.name.clone()),
                    score,
                    reason: "matched a fast intent",
                }
            }
            Some((intent, score)) => Verdict {
                route: Route::Full,
                intent: Some(intent.name.clone()),
                score,
                reason: if intent.route == Route::Full {
                    "matched a full intent"
                } else {
                    "below threshold"
                },
            },
            None => Verdict::full("no intents"),
        }
    }
}

/// The classifier as a context provider: it awaits the shared embedding and asks the actor.
pub struct ClassifierProvider {
    pub classifier: crate::pool::Pool<ClassifierActor>,
    pub deadline: Duration,
}

#[async_trait]
impl ContextProvider for ClassifierProvider {
    fn name(&self) -> &'static str {
        "classifier"
    }
    fn kind(&self) -> PieceKind {
        PieceKind::Route
    }
    fn deadline(&self) -> Duration {
        self.deadline
    }
    async fn fetch(&self, request: &ContextRequest) -> Result<ContextPiece, ProviderError> {
        let Some(vector) = request.embedding.clone().await else {
            return Ok(ContextPiece::Route(Verdict::full("no embedding")));
        };
        let verdict = self
            .classifier
            .ask(Classify {
                text: request.text.clone(),
                vector,
            })
            .await
            .map_err(|_| ProviderError::Other("classifier actor stopped".into()))?;
        Ok(ContextPiece::Route(verdict))
    }
}

/// Owns a copy of the intent set; classification takes microseconds, so a pool of one
/// (`pools.classifier`) serves every shard on a small bot.
pub struct ClassifierActor {
    /// Shared by the pool's members; a reload of the intents file swaps it.
    intents: crate::live::Live<IntentSet>,
    restarts: Option<(Arc<crate::stats::RuntimeStats>, crate::pool::MemberRestarts)>,
}

impl ClassifierActor {
    pub fn new(intents: impl Into<crate::live::Live<IntentSet>>) -> Self {
        Self {
            intents: intents.into(),
            restarts: None,
        }
    }

    /// A pool member: restarts under its pool's policy, counted by kind in `stats` and in the
    /// pool (both shown by status).
    pub fn counted(
        intents: crate::live::Live<IntentSet>,
        stats: Arc<crate::stats::RuntimeStats>,
        pool: crate::pool::MemberRestarts,
    ) -> Self {
        Self {
            intents,
            restarts: Some((stats, pool)),
        }
    }
}

impl Actor for ClassifierActor {
    type Context = Context<Self>;
}

impl Supervised for ClassifierActor {
    fn restarting(&mut self, ctx: &mut Self::Context) {
        if let Some((stats, pool)) = &mut self.restarts {
            stats.supervision.classifier.inc();
            pool.restarting(ctx);
        }
        tracing::warn!("classifier actor restarted");
    }
}

#[derive(Message)]
#[rtype(result = "Verdict")]
pub struct Classify {
    pub text: String,
    pub vector: Embedding,
}

impl Handler<Classify> for ClassifierActor {
    type Result = MessageResult<Classify>;

    fn handle(&mut self, msg: Classify, ctx: &mut Self::Context) -> Self::Result {
        // A classifier failure only costs the fast track: the message takes the full path.
        MessageResult(
            crate::supervision::catch("ClassifierActor", ctx, |_| {
                self.intents.get().classify(&msg.text, &msg.vector)
            })
            .unwrap_or_else(|| Verdict::full("classifier failed")),
        )
    }
}

impl Handler<crate::pool::InjectPanic> for ClassifierActor {
    type Result = Result<(), crate::ports::StoreError>;

    fn handle(&mut self, _: crate::pool::InjectPanic, ctx: &mut Self::Context) -> Self::Result {
        crate::supervision::catch("ClassifierActor", ctx, |_| {
            panic!("injected into the ClassifierActor")
        })
        .unwrap_or_else(|| Err(crate::pool::panicked("ClassifierActor", "injected")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> IntentSet {
        IntentSet {
            intents: vec![
                Intent {
                    name: "greeting".into(),
                    route: Route::Fast,
                    threshold: 0.8,
                    examples: vec![normalize(&[1.0, 0.0])],
                },
                Intent {
                    name: "context".into(),
                    route: Route::Full,
                    threshold: 0.0,
                    examples: vec![normalize(&[0.0, 1.0])],
                },
            ],
            guards: vec!["remember".into(), "ago".into()],
            max_fast_words: 4,
        }
    }

    #[test]
    fn nearest_intent_and_threshold_decide() {
        let s = set();
        assert_eq!(s.classify("hi", &[1.0, 0.1]).route, Route::Fast);
        assert_eq!(
            s.classify("hi", &[1.0, 0.9]).route,
            Route::Full,
            "below threshold"
        );
        assert_eq!(
            s.classify("ok", &[0.1, 1.0]).route,
            Route::Full,
            "nearest is a full intent"
        );
    }

    #[test]
    fn guards_and_length_force_the_full_path() {
        let s = set();
        assert_eq!(
            s.classify("hi, remember me?", &[1.0, 0.0]).reason,
            "refers to something to remember"
        );
        assert_eq!(
            s.classify("hi from Chicago", &[1.0, 0.0]).route,
            Route::Fast,
            "whole words only"
        );
        assert_eq!(
            s.classify("hi there my good old friend", &[1.0, 0.0])
                .reason,
            "long message"
        );
    }
}
