//! A shard: one arbiter thread owning the conversation actors of the users hashed to it.
//!
//! It starts a conversation on a user's first message, passivates it after `idle_timeout`
//! without traffic, and evicts the least recently used idle one when `max_conversations` is
//! reached. Passivation simply drops the shard's address: the actor finishes whatever is in its
//! mailbox and stops, and its state is reloaded from the store on the next message. A
//! conversation with messages in flight is never passivated or evicted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::WeakAddr;
use actix::prelude::*;
use lru::LruCache;
use tokio::sync::oneshot;
use tracing::{debug, error, warn};

use crate::conversation::{
    ConversationActor, ConversationDeps, ConversationEscalated, ShardLink, TurnFinished,
};
use crate::key::ConversationKey;
use crate::messages::UserMessage;
use crate::stats::ShardStats;

#[derive(Clone, Debug)]
pub struct ShardSettings {
    pub idle_timeout: Duration,
    pub max_conversations: usize,
}

/// A user message routed to this shard.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Route(pub UserMessage);

/// Drops every conversation actor of `user` (their warm caches go with them).
#[derive(Message)]
#[rtype(result = "Vec<WeakAddr<ConversationActor>>")]
pub struct ForgetUser(pub String);

/// Resolves once no message is in flight on this shard.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain(pub oneshot::Sender<()>);

/// Kept small: one per live conversation.
struct Entry {
    addr: Addr<ConversationActor>,
    generation: u32,
    pending: u32,
    last_active: Instant,
}

pub struct Shard {
    id: usize,
    deps: Arc<ConversationDeps>,
    settings: ShardSettings,
    conversations: LruCache<ConversationKey, Entry>,
    /// Shared by all of this shard's conversations; set in `started`.
    link: Option<Arc<ShardLink>>,
    next_generation: u32,
    pending_total: usize,
    drain_waiters: Vec<oneshot::Sender<()>>,
}

impl Shard {
    pub fn new(id: usize, deps: Arc<ConversationDeps>, settings: ShardSettings) -> Self {
        Self {
            id,
            deps,
            settings,
            conversations: LruCache::unbounded(),
            link: None,
            next_generation: 0,
            pending_total: 0,
            drain_waiters: Vec::new(),
        }
    }

    fn stats(&self) -> &ShardStats {
        &self.deps.stats.shards[self.id]
    }

    fn start_conversation(&mut self, key: &ConversationKey, ctx: &mut Context<Self>) -> Entry {
        self.make_room();
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let (id, deps, key2) = (self.id, &self.deps, key.clone());
        let link = self
            .link
            .get_or_insert_with(|| {
                let me = ctx.address();
                Arc::new(ShardLink {
                    shard: id,
                    deps: deps.clone(),
                    finished: me.clone().recipient(),
                    escalated: me.recipient(),
                })
            })
            .clone();
        let addr = Supervisor::start(move |_| ConversationActor::new(key2, generation, link));
        self.stats().started.inc();
        self.stats().live_conversations.inc();
        debug!(shard = self.id, %key, generation, "conversation started");
        Entry {
            addr,
            generation,
            pending: 0,
            last_active: Instant::now(),
        }
    }

    /// Evicts least recently used idle conversations until at most `limit` remain. Busy ones
    /// are never evicted, so a burst can overflow the limit until they finish.
    fn enforce_limit(&mut self, limit: usize) -> bool {
        while self.conversations.len() > limit {
            let victim = self
                .conversations
                .iter()
                .rev()
                .find(|(_, e)| e.pending == 0)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else { return false };
            if let Some(entry) = self.conversations.pop(&victim) {
                // Evicted conversations are idle ones: their session ends like a passivation.
                entry.addr.do_send(crate::conversation::GoingIdle);
            }
            self.stats().evicted.inc();
            self.stats().live_conversations.dec();
        }
        true
    }

    /// Makes room for one more conversation.
    fn make_room(&mut self) {
        let limit = self.settings.max_conversations.saturating_sub(1);
        if !self.enforce_limit(limit) {
            warn!(
                shard = self.id,
                live = self.conversations.len(),
                "every conversation is busy; exceeding max_conversations_per_shard until some finish"
            );
        }
    }

    fn passivate_idle(&mut self) {
        let now = Instant::now();
        let idle: Vec<ConversationKey> = self
            .conversations
            .iter()
            .rev()
            .take_while(|(_, e)| now.duration_since(e.last_active) >= self.settings.idle_timeout)
            .filter(|(_, e)| e.pending == 0)
            .map(|(k, _)| k.clone())
            .collect();
        for key in idle {
            if let Some(entry) = self.conversations.pop(&key) {
                entry.addr.do_send(crate::conversation::GoingIdle);
            }
            self.stats().passivated.inc();
            self.stats().live_conversations.dec();
            debug!(shard = self.id, %key, "conversation passivated");
        }
    }

    fn release_drain_waiters(&mut self) {
        if self.pending_total == 0 {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

impl Actor for Shard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let sweep = (self.settings.idle_timeout / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(30));
        ctx.run_interval(sweep, |shard, _| shard.passivate_idle());
    }
}

impl Supervised for Shard {
    fn restarting(&mut self, _: &mut Self::Context) {
        error!(
            shard = self.id,
            live = self.conversations.len(),
            "shard restarting; its conversations will reload from the store"
        );
        self.deps.stats.shards[self.id].restarts.inc();
        self.deps.stats.shards[self.id].live_conversations.set(0);
        self.conversations.clear();
    }
}

impl Handler<Route> for Shard {
    type Result = ();

    fn handle(&mut self, Route(msg): Route, ctx: &mut Self::Context) {
        let (reply_to, key, message_id) = (msg.reply_to.clone(), msg.key.clone(), msg.message_id);
        let routed = crate::supervision::catch("Shard", ctx, |ctx| self.route(msg, ctx));
        if routed.is_none() {
            // The shard restarts fresh; the message that broke it gets an answer.
            self.deps.stats.supervision.shard.inc();
            reply_to.do_send(crate::messages::ReplyUpdate {
                message_id,
                key,
                text: crate::conversation::CRASH_APOLOGY.to_owned(),
                status: crate::messages::ReplyStatus::Failed(crate::messages::FailureKind::Crashed),
            });
        }
    }
}

impl Handler<crate::pool::InjectPanic> for Shard {
    type Result = Result<(), crate::ports::StoreError>;

    fn handle(&mut self, _: crate::pool::InjectPanic, ctx: &mut Self::Context) -> Self::Result {
        let caught = crate::supervision::catch("Shard", ctx, |_| panic!("injected into a Shard"));
        self.deps.stats.supervision.shard.inc();
        caught.unwrap_or_else(|| Err(crate::pool::panicked("Shard", "injected")))
    }
}

impl Shard {
    fn route(&mut self, msg: UserMessage, ctx: &mut Context<Self>) {
        if !self.conversations.contains(&msg.key) {
            let entry = self.start_conversation(&msg.key, ctx);
            self.conversations.put(msg.key.clone(), entry);
        }
        let entry = self
            .conversations
            .get_mut(&msg.key)
            .expect("inserted above");
        entry.pending += 1;
        entry.last_active = Instant::now();
        self.pending_total += 1;
        self.deps.stats.shards[self.id].pending_messages.inc();
        entry.addr.do_send(msg);
    }
}

impl Handler<TurnFinished> for Shard {
    type Result = ();

    fn handle(&mut self, msg: TurnFinished, _: &mut Self::Context) {
        self.pending_total = self.pending_total.saturating_sub(1);
        self.stats().pending_messages.dec();
        if let Some(entry) = self.conversations.get_mut(&msg.key)
            && entry.generation == msg.generation
        {
            entry.pending = entry.pending.saturating_sub(1);
            entry.last_active = Instant::now();
        }
        // Back under the limit once an overflowing burst goes idle.
        if self.conversations.len() > self.settings.max_conversations {
            self.enforce_limit(self.settings.max_conversations);
        }
        self.release_drain_waiters();
    }
}

impl Handler<ConversationEscalated> for Shard {
    type Result = ();

    fn handle(&mut self, msg: ConversationEscalated, _: &mut Self::Context) {
        let matches = self
            .conversations
            .peek(&msg.key)
            .is_some_and(|e| e.generation == msg.generation);
        if matches {
            self.conversations.pop(&msg.key);
            self.stats().live_conversations.dec();
        }
        error!(shard = self.id, key = %msg.key, cause = %msg.cause, "conversation escalated: dropped; the next message starts a fresh one");
    }
}

impl Handler<Drain> for Shard {
    type Result = ();

    fn handle(&mut self, Drain(done): Drain, _: &mut Self::Context) {
        self.drain_waiters.push(done);
        self.release_drain_waiters();
    }
}

impl Handler<ForgetUser> for Shard {
    type Result = Vec<WeakAddr<ConversationActor>>;

    /// Drops the user's conversations; answers weak addresses that stay upgradable while an
    /// actor still finishes a turn it had started.
    fn handle(&mut self, ForgetUser(user): ForgetUser, _: &mut Self::Context) -> Self::Result {
        let keys: Vec<ConversationKey> = self
            .conversations
            .iter()
            .filter(|(k, _)| *k.user == *user)
            .map(|(k, _)| k.clone())
            .collect();
        let mut leaving = Vec::with_capacity(keys.len());
        for key in &keys {
            if let Some(entry) = self.conversations.pop(key) {
                leaving.push(entry.addr.downgrade());
            }
            self.stats().live_conversations.dec();
        }
        leaving
    }
}
