//! Context providers and their parallel, deadline-bounded retrieval.
//!
//! Every provider is asked at once and each gets its own deadline. The reply is built from
//! whatever arrived in time: a slow or failing store costs that section of the prompt, never the
//! reply. Providers return typed pieces so the conversation actor can cache the ones that only
//! change when it changes them (history, profile) and skip re-reading them on warm actors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{FuturesUnordered, StreamExt};
use tracing::{Instrument, debug, info_span, warn};

use crate::classifier::{Route, Verdict};
use crate::key::{ConversationKey, Scope};
use crate::ports::{Embedding, HistoryStore, Profile, StoreError, Turn};

/// What a provider is asked for.
#[derive(Clone, Debug)]
pub struct ContextRequest {
    pub key: ConversationKey,
    pub scope: Scope,
    /// Where the message was written (see [`crate::UserMessage::channel`]).
    pub channel: Option<u64>,
    /// The transport's id of the message being answered.
    pub message_id: u64,
    pub text: String,
    /// The message's embedding, computed once and awaited by every provider that needs it
    /// (classifier, memory search); `None` when no embedder is configured or it failed.
    pub embedding: SharedEmbedding,
}

/// A shared, lazily awaited embedding of the incoming message.
pub type SharedEmbedding = Shared<BoxFuture<'static, Option<Embedding>>>;

/// An embedding that is already known to be absent.
pub fn no_embedding() -> SharedEmbedding {
    futures::future::ready(None).boxed().shared()
}

/// A titled block of text for the system prompt (memories, facts... in later providers).
#[derive(Clone, Debug, PartialEq)]
pub struct Section {
    pub title: String,
    pub body: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ContextPiece {
    History(Vec<Turn>),
    Profile(Option<Profile>),
    Section(Section),
    /// The fast-track classifier's verdict.
    Route(Verdict),
}

/// Which kind of piece a provider yields; history and profile are cached by warm actors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    History,
    Profile,
    Section,
    Route,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

#[async_trait]
pub trait ContextProvider: Send + Sync + 'static {
    /// Short stable name for logs, metrics and `Timings::degraded`.
    fn name(&self) -> &'static str;
    fn kind(&self) -> PieceKind;
    /// How long this provider may take before the reply goes on without it.
    fn deadline(&self) -> Duration;
    async fn fetch(&self, request: &ContextRequest) -> Result<ContextPiece, ProviderError>;
}

/// How one provider fared.
#[derive(Debug)]
pub enum ProviderOutcome {
    Ready {
        elapsed: Duration,
    },
    Failed {
        elapsed: Duration,
        error: String,
    },
    TimedOut {
        deadline: Duration,
    },
    /// Not awaited: the fast track did not need it.
    Skipped,
}

#[derive(Debug, Default)]
pub struct Gathered {
    pub pieces: Vec<ContextPiece>,
    pub verdict: Option<Verdict>,
    pub outcomes: Vec<(&'static str, ProviderOutcome)>,
    pub elapsed: Duration,
}

impl Gathered {
    pub fn is_fast(&self) -> bool {
        self.verdict
            .as_ref()
            .is_some_and(|v| v.route == Route::Fast)
    }

    /// Names of providers that did not contribute.
    pub fn degraded(&self) -> Vec<String> {
        self.outcomes
            .iter()
            .filter(|(_, o)| {
                matches!(
                    o,
                    ProviderOutcome::Failed { .. } | ProviderOutcome::TimedOut { .. }
                )
            })
            .map(|(name, _)| (*name).to_owned())
            .collect()
    }
}

/// Deadlines by provider name (`history`, `profile`, `classifier`, `memory`, `facts`) that
/// override the providers' own: the `[context]` deadlines a reload changed.
pub type Deadlines = std::collections::HashMap<&'static str, std::time::Duration>;

/// Queries all `providers` concurrently, each bounded by its own deadline.
pub async fn gather(providers: &[Arc<dyn ContextProvider>], request: &ContextRequest) -> Gathered {
    gather_within(providers, request, &Deadlines::new()).await
}

/// [`gather`], with `deadlines` in force where they name a provider.
pub async fn gather_within(
    providers: &[Arc<dyn ContextProvider>],
    request: &ContextRequest,
    deadlines: &Deadlines,
) -> Gathered {
    let start = Instant::now();
    let mut pending: FuturesUnordered<_> = providers
        .iter()
        .enumerate()
        .map(|(index, provider)| {
            let span = info_span!("context_provider", provider = provider.name());
            async move {
                let deadline = deadlines
                    .get(provider.name())
                    .copied()
                    .unwrap_or_else(|| provider.deadline());
                let began = Instant::now();
                let outcome = tokio::time::timeout(deadline, provider.fetch(request)).await;
                (index, outcome, began.elapsed(), deadline)
            }
            .instrument(span)
        })
        .collect();

    let mut gathered = Gathered::default();
    let mut finished = vec![false; providers.len()];
    while let Some((index, result, elapsed, deadline)) = pending.next().await {
        finished[index] = true;
        let name = providers[index].name();
        let outcome = match result {
            Ok(Ok(piece)) => {
                debug!(provider = name, ?elapsed, "context ready");
                if let ContextPiece::Route(verdict) = &piece {
                    gathered.verdict = Some(verdict.clone());
                }
                gathered.pieces.push(piece);
                ProviderOutcome::Ready { elapsed }
            }
            Ok(Err(error)) => {
                warn!(provider = name, %error, key = %request.key, "context provider failed; replying without it");
                ProviderOutcome::Failed {
                    elapsed,
                    error: error.to_string(),
                }
            }
            Err(_) => {
                warn!(provider = name, ?deadline, key = %request.key, "context provider missed its deadline; replying without it");
                ProviderOutcome::TimedOut { deadline }
            }
        };
        gathered.outcomes.push((name, outcome));
        // Speculative execution: once the classifier says "fast", only what the fast path
        // uses (history, profile) is awaited; memory and fact lookups are dropped mid-flight.
        if gathered.is_fast()
            && providers
                .iter()
                .zip(&finished)
                .all(|(p, done)| *done || p.kind() == PieceKind::Section)
        {
            break;
        }
    }
    for (provider, done) in providers.iter().zip(&finished) {
        if !done {
            gathered
                .outcomes
                .push((provider.name(), ProviderOutcome::Skipped));
        }
    }
    gathered.elapsed = start.elapsed();
    gathered
}

/// The recent turns of this conversation, in this scope only.
pub struct HistoryProvider {
    pub store: Arc<dyn HistoryStore>,
    pub limit: usize,
    pub deadline: Duration,
}

#[async_trait]
impl ContextProvider for HistoryProvider {
    fn name(&self) -> &'static str {
        "history"
    }
    fn kind(&self) -> PieceKind {
        PieceKind::History
    }
    fn deadline(&self) -> Duration {
        self.deadline
    }
    async fn fetch(&self, request: &ContextRequest) -> Result<ContextPiece, ProviderError> {
        let turns = self
            .store
            .recent_turns(&request.key, &request.scope, self.limit)
            .await?;
        Ok(ContextPiece::History(turns))
    }
}

/// First seen, message count and display name.
pub struct ProfileProvider {
    pub store: Arc<dyn HistoryStore>,
    pub deadline: Duration,
}

#[async_trait]
impl ContextProvider for ProfileProvider {
    fn name(&self) -> &'static str {
        "profile"
    }
    fn kind(&self) -> PieceKind {
        PieceKind::Profile
    }
    fn deadline(&self) -> Duration {
        self.deadline
    }
    async fn fetch(&self, request: &ContextRequest) -> Result<ContextPiece, ProviderError> {
        Ok(ContextPiece::Profile(
            self.store.profile(&request.key.user).await?,
        ))
    }
}
