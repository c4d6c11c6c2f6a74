//! The conversation actor: one per `(character, user)`, living on its shard's arbiter.
//!
//! It owns the user's ordering guarantee (messages are answered strictly one after another, in
//! arrival order) and a warm cache of their recent history and profile, so a busy conversation
//! does not re-read the store on every message. Each turn runs as one future ([`turn`]);
//! a panic anywhere inside it is caught, the user gets a short apology, and the actor is
//! restarted by its supervisor with its mailbox and queue intact, so the next message works.
//! Repeated crashes within the policy window escalate to the shard, which gives up on this
//! incarnation; the user's next message starts a fresh one.

pub mod context;
pub mod prompt;
pub mod streaming;
pub mod turn;
mod warm;

use std::cell::Cell;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::FutureExt;
use tracing::{debug, error, info, warn};

use crate::conversation::context::ContextProvider;
use crate::key::{ConversationKey, Scope};
use crate::llm::LlmActor;
use crate::memory::MemoryStore;
use crate::messages::{FailureKind, ReplyStatus, ReplyUpdate, TurnSettled, UserMessage};
use crate::ports::{Embedder, HistoryStore};
use crate::stats::RuntimeStats;
use crate::supervision::{RestartDecision, RestartPolicy, RestartTracker, panic_message};

pub use turn::{TurnInput, TurnReport};
use warm::WarmState;

pub(crate) const CRASH_APOLOGY: &str =
    "Sorry, something went wrong on my side while answering. Please send that again.";
pub(crate) const ESCALATED_APOLOGY: &str =
    "Sorry, this conversation hit repeated errors and was reset. Please try again in a moment.";

/// Tuning shared by every conversation.
#[derive(Clone, Debug)]
pub struct ConversationSettings {
    pub edit_interval: Duration,
    pub token_budget: usize,
    pub image_tokens: usize,
    /// Turns kept in the warm cache and read from the store on a cold start.
    pub history_turns: usize,
    pub restart: RestartPolicy,
    pub memory_chunk_words: usize,
}

/// What every conversation needs, shared by all of them.
pub struct ConversationDeps {
    /// What "now" is for timestamps and the ages the prompt shows.
    pub clock: Arc<dyn crate::clock::Clock>,
    pub characters: crate::character::LiveCharacters,
    /// Embeds each incoming message once (classifier and memory search share the vector).
    pub embedder: Option<Arc<dyn Embedder>>,
    /// Where turns are remembered (with `embedder`).
    pub memory: Option<Arc<dyn MemoryStore>>,
    /// Durable background jobs (memories, summaries, fact extraction); without it (tests of the
    /// reply path alone) nothing is remembered after the reply.
    pub jobs: Option<Arc<crate::jobs::JobSystem>>,
    /// Ask the LLM for facts after full-path messages.
    pub extract_facts: bool,
    /// Summarise every this many turns (with jobs and memory).
    pub summarise_every: Option<u64>,
    /// When the conversation goes idle with at least this many turns not yet summarised,
    /// summarise them (0: never).
    pub summarise_when_idle: u64,
    pub providers: Vec<Arc<dyn ContextProvider>>,
    /// Tools the model may call on the full path.
    pub tools: Option<Arc<crate::tools::Toolbox>>,
    /// Per-user message limits (none: unlimited).
    pub limiter: Option<Arc<dyn crate::limits::RateLimiter>>,
    pub history: Arc<dyn HistoryStore>,
    pub llm: Addr<LlmActor>,
    /// Swapped whole by a reload; each turn reads the one in force when it starts.
    pub settings: arc_swap::ArcSwap<ConversationSettings>,
    /// `[context]` deadlines a reload set, by provider name (empty: the providers' own).
    pub deadlines: crate::live::Live<context::Deadlines>,
    pub stats: Arc<RuntimeStats>,
}

/// Sent to the shard after every message, whatever its outcome: the shard's pending counts,
/// idle clocks and drain all rely on exactly one per routed message.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct TurnFinished {
    pub key: ConversationKey,
    pub generation: u32,
}

/// Sent to the shard when the restart budget is spent.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ConversationEscalated {
    pub key: ConversationKey,
    pub generation: u32,
    pub cause: String,
}

/// How a conversation reaches its shard and the shared dependencies. One per shard, shared by its conversations through an
/// `Arc`: every `Recipient` clone allocates, and 100k idle actors feel each allocation.
pub struct ShardLink {
    pub shard: usize,
    pub stats: Arc<crate::stats::ShardStats>,
    pub deps: Arc<ConversationDeps>,
    pub finished: Recipient<TurnFinished>,
    pub escalated: Recipient<ConversationEscalated>,
}

/// Restart bookkeeping, allocated on the first crash only (most conversations never crash).
struct Crashes {
    tracker: RestartTracker,
    last_cause: String,
    /// A restart backoff is pending: messages wait in the queue until it ends.
    backoff: Option<Duration>,
    /// The restart budget is spent; the shard has been told and will drop this actor.
    escalated: bool,
}

struct InFlight {
    message_id: u64,
    reply_to: Recipient<ReplyUpdate>,
    settled: Option<Recipient<TurnSettled>>,
    final_sent: Rc<Cell<bool>>,
}

pub struct ConversationActor {
    key: ConversationKey,
    generation: u32,
    link: Arc<ShardLink>,
    queue: VecDeque<UserMessage>,
    current: Option<InFlight>,
    warm: WarmState,
    crashes: Option<Box<Crashes>>,
    /// Turns since the last summary, in the scope of the latest one.
    unsummarised: Option<(Scope, u16)>,
}

impl ConversationActor {
    pub fn new(key: ConversationKey, generation: u32, link: Arc<ShardLink>) -> Self {
        Self {
            key,
            generation,
            link,
            queue: VecDeque::new(),
            current: None,
            warm: WarmState::default(),
            crashes: None,
            unsummarised: None,
        }
    }

    fn notify_finished(&self) {
        self.link.finished.do_send(TurnFinished {
            key: self.key.clone(),
            generation: self.generation,
        });
    }

    fn fail(&self, msg: &UserMessage, kind: FailureKind, text: &str) {
        self.link.deps.stats.pipeline.failed_replies.inc();
        msg.reply_to.do_send(ReplyUpdate {
            message_id: msg.message_id,
            key: self.key.clone(),
            text: text.to_owned(),
            status: ReplyStatus::Failed(kind),
        });
        self.settle(msg.message_id, msg.settled.as_ref());
        self.notify_finished();
    }

    fn settle(&self, message_id: u64, settled: Option<&Recipient<TurnSettled>>) {
        if let Some(settled) = settled {
            settled.do_send(TurnSettled {
                message_id,
                key: self.key.clone(),
            });
        }
    }

    /// Starts the next queued message unless one is running or a restart backoff is pending.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.current.is_some() || self.crashes.as_ref().is_some_and(|c| c.backoff.is_some()) {
            return;
        }
        let Some(msg) = self.queue.pop_front() else {
            // An idle actor keeps no queue buffer: 4 slots of UserMessage would be a quarter
            // of its memory.
            if self.queue.capacity() > 0 {
                self.queue = VecDeque::new();
            }
            return;
        };
        let characters = self.link.deps.characters.load();
        let Some(character) = characters.get(&self.key.character).cloned() else {
            // The router validates characters, so this is only reachable by a direct send.
            self.fail(&msg, FailureKind::LlmFailed, "Unknown character.");
            return self.pump(ctx);
        };
        let final_sent = Rc::new(Cell::new(false));
        self.current = Some(InFlight {
            message_id: msg.message_id,
            reply_to: msg.reply_to.clone(),
            settled: msg.settled.clone(),
            final_sent: final_sent.clone(),
        });
        let input = TurnInput {
            cached_history: self.warm.history_for(&self.key, &msg.scope),
            cached_profile: self.warm.profile.clone().map(|p| p.map(|p| *p)),
            character,
            message: msg,
            final_sent,
        };
        let turn = AssertUnwindSafe(turn::run_turn(self.link.deps.clone(), input)).catch_unwind();
        ctx.spawn(turn.into_actor(self).map(|result, act, ctx| match result {
            Ok(report) => act.finish(report, ctx),
            Err(payload) => act.crashed(panic_message(payload.as_ref()), ctx),
        }));
    }

    fn finish(&mut self, report: TurnReport, ctx: &mut Context<Self>) {
        // The turn is stored (`run_turn` returns after persisting it).
        if let Some(inflight) = self.current.take() {
            self.settle(inflight.message_id, inflight.settled.as_ref());
        }
        let limit = self.link.deps.settings.load().history_turns;
        if let Some(turns) = report.loaded_history {
            self.warm.set_history(&report.scope, turns);
        }
        if let Some(profile) = report.loaded_profile {
            self.warm.profile = Some(profile.map(Box::new));
        }
        if report.summarised {
            self.unsummarised = None;
        } else if report.completed.is_some() {
            self.unsummarised = match self.unsummarised.take() {
                Some((scope, n)) if scope == report.scope => Some((scope, n.saturating_add(1))),
                // A new scope: its turns are summarised on their own.
                _ => Some((report.scope.clone(), 1)),
            };
        }
        if let Some(turn) = report.completed {
            let replied_at_ms = turn.replied_at_ms;
            self.warm.push_turn(&report.scope, turn, limit);
            if let Some(Some(profile)) = &mut self.warm.profile {
                profile.message_count += 1;
                profile.last_seen_ms = replied_at_ms;
                profile.display_name = report.display_name;
            } else {
                // First message ever, or the profile was unavailable: read it again next time.
                self.warm.profile = None;
            }
        }
        self.notify_finished();
        self.pump(ctx);
    }

    /// Decides restart or escalation (so counters are current before anyone hears of the
    /// crash), apologises for the message in flight and stops; the supervisor restarts the
    /// actor in place with the same mailbox.
    fn crashed(&mut self, cause: String, ctx: &mut Context<Self>) {
        let stats = &self.link.stats;
        let policy = &self.link.deps.settings.load().restart;
        let crashes = self.crashes.get_or_insert_with(|| {
            Box::new(Crashes {
                tracker: RestartTracker::new(policy.clone()),
                last_cause: String::new(),
                backoff: None,
                escalated: false,
            })
        });
        let decision = crashes.tracker.on_failure(Instant::now());
        crashes.last_cause.clone_from(&cause);
        match decision {
            RestartDecision::Restart { attempt, backoff } => {
                stats.restarts.inc();
                warn!(key = %self.key, attempt, ?backoff, %cause, "conversation actor panicked while answering; restarting");
                crashes.backoff = Some(backoff);
            }
            RestartDecision::Escalate { failures } => {
                stats.escalations.inc();
                error!(key = %self.key, failures, %cause, "conversation actor exceeded its restart budget; escalating to its shard");
                crashes.escalated = true;
            }
        }
        if let Some(inflight) = self.current.take() {
            if !inflight.final_sent.get() {
                self.link.deps.stats.pipeline.failed_replies.inc();
                inflight.reply_to.do_send(ReplyUpdate {
                    message_id: inflight.message_id,
                    key: self.key.clone(),
                    text: CRASH_APOLOGY.to_owned(),
                    status: ReplyStatus::Failed(FailureKind::Crashed),
                });
            }
            self.settle(inflight.message_id, inflight.settled.as_ref());
            self.notify_finished();
        }
        ctx.stop();
    }
}

impl Actor for ConversationActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(crashes) = &self.crashes else { return };
        if crashes.escalated {
            let cause = crashes.last_cause.clone();
            for msg in std::mem::take(&mut self.queue) {
                self.fail(&msg, FailureKind::Escalated, ESCALATED_APOLOGY);
            }
            self.link.escalated.do_send(ConversationEscalated {
                key: self.key.clone(),
                generation: self.generation,
                cause,
            });
            return;
        }
        if let Some(backoff) = crashes.backoff {
            ctx.run_later(backoff, |act, ctx| {
                if let Some(crashes) = &mut act.crashes {
                    crashes.backoff = None;
                }
                act.pump(ctx);
            });
        }
    }
}

impl Supervised for ConversationActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        // State is reloaded from the store: the crash may have come from bad cached state.
        // The restart/escalate decision was already taken in `crashed`.
        self.warm = WarmState::default();
        self.current = None;
    }
}

/// From the shard, as it passivates this conversation: the session is over, so its turns not
/// yet summarised become a durable summary job (the actor stops once it is enqueued).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct GoingIdle;

impl Handler<GoingIdle> for ConversationActor {
    type Result = ();

    fn handle(&mut self, _: GoingIdle, ctx: &mut Self::Context) {
        let deps = &self.link.deps;
        let min = deps.summarise_when_idle;
        let Some((scope, turns)) = self.unsummarised.take() else {
            return;
        };
        let (Some(jobs), true) = (deps.jobs.clone(), deps.memory.is_some()) else {
            return;
        };
        if min == 0 || u64::from(turns) < min {
            return;
        }
        let at_ms = deps.clock.now_ms();
        let payload = crate::memory::Summarise {
            key: self.key.clone(),
            scope,
            turns: turns as usize,
            at_ms,
        };
        let id = format!("idle:{}:{}:{at_ms}", self.key.character, self.key.user);
        let job = crate::jobs::NewJob::of(&id, self.key.user.to_string(), &payload);
        let (key, stats) = (self.key.clone(), deps.stats.clone());
        ctx.spawn(
            async move {
                match jobs.submit(job).await {
                    Ok(_) => debug!(%key, turns, "idle conversation queued for a summary"),
                    Err(error) => {
                        stats.pipeline.store_write_failures.inc();
                        error!(%key, %error, "could not enqueue the idle summary");
                    }
                }
            }
            .into_actor(self),
        );
    }
}

impl Handler<UserMessage> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: UserMessage, ctx: &mut Self::Context) {
        if self.crashes.as_ref().is_some_and(|c| c.escalated) {
            info!(key = %self.key, "message for an escalated conversation; the shard will start a fresh one");
            self.fail(&msg, FailureKind::Escalated, ESCALATED_APOLOGY);
            return;
        }
        self.queue.push_back(msg);
        self.pump(ctx);
    }
}
