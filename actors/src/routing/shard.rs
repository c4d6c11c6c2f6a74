//! A shard: one arbiter thread owning the conversation actors of the users hashed to it.
//!
//! It starts a conversation on a user's first message, passivates it after `idle_timeout`
//! without traffic, and evicts the least recently used idle one when `max_conversations` is
//! reached. Passivation simply drops the shard's address: the actor finishes whatever is in its
//! mailbox and stops, and its state is reloaded from the store on the next message. A
//! conversation with messages in flight is never passivated or evicted.
//!
//! Re-sharding hands conversations over without reordering: after a resize ([`Rebalance`]) a
//! shard drops the idle conversations it no longer owns and keeps the busy ones as *releasing*
//! until their last routed message is answered. The new owner of a key, on its first message
//! during the transition, holds that message (and any after it) and asks every other shard to
//! [`Release`] the key; it starts the conversation (reloading history from the store, where the
//! old owner's last turn already is) only when all have answered. So one key never has two
//! conversations answering at once, and nothing routed is lost or answered twice.

use std::collections::HashMap;
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
use crate::routing::ring::HashRing;
use crate::stats::ShardStats;

#[derive(Clone, Debug)]
pub struct ShardSettings {
    pub idle_timeout: Duration,
    pub max_conversations: usize,
}

/// A user message routed to this shard. `handover`: the shards that may still hold the
/// key's conversation (a resize is in progress); they release it before this shard starts one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Route(pub UserMessage, pub Option<Arc<[Addr<Shard>]>>);

/// Answers once this shard holds no conversation of `key` with messages in flight (and no
/// longer routes any to it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release(pub ConversationKey);

/// A resize happened: `ring` is the new placement, and this shard is shard `me` in it (or not
/// in it at all when it is being removed).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Rebalance {
    pub ring: Arc<HashRing>,
    pub me: Option<u32>,
}

/// How many conversations this shard still hands over (0: the resize is done here).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Releasing;

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
    /// `None` while the key's previous shards release it: messages wait in `held`.
    addr: Option<Addr<ConversationActor>>,
    generation: u32,
    /// Messages routed and not yet finished, held ones included.
    pending: u32,
    last_active: Instant,
    held: Vec<UserMessage>,
}

/// A conversation this shard no longer owns, answering its last messages.
struct Leaving {
    entry: Entry,
    waiters: Vec<oneshot::Sender<()>>,
}

pub struct Shard {
    id: usize,
    deps: Arc<ConversationDeps>,
    stats: Arc<ShardStats>,
    /// `runtime.idle_timeout` and `max_conversations_per_shard`, live.
    settings: crate::live::Live<ShardSettings>,
    conversations: LruCache<ConversationKey, Entry>,
    leaving: HashMap<ConversationKey, Leaving>,
    /// Shared by all of this shard's conversations; set in `started`.
    link: Option<Arc<ShardLink>>,
    next_generation: u32,
    pending_total: usize,
    drain_waiters: Vec<oneshot::Sender<()>>,
}

impl Shard {
    pub fn new(
        id: usize,
        deps: Arc<ConversationDeps>,
        settings: crate::live::Live<ShardSettings>,
    ) -> Self {
        Self {
            id,
            stats: deps.stats.shard(id),
            deps,
            settings,
            conversations: LruCache::unbounded(),
            leaving: HashMap::new(),
            link: None,
            next_generation: 0,
            pending_total: 0,
            drain_waiters: Vec::new(),
        }
    }

    fn stats(&self) -> &ShardStats {
        &self.stats
    }

    /// A new entry for `key`: its conversation started at once, or (`waiting`) once the
    /// key's previous shards have released it.
    fn new_entry(
        &mut self,
        key: &ConversationKey,
        waiting: bool,
        ctx: &mut Context<Self>,
    ) -> Entry {
        self.make_room();
        self.next_generation = self.next_generation.wrapping_add(1);
        let mut entry = Entry {
            addr: None,
            generation: self.next_generation,
            pending: 0,
            last_active: Instant::now(),
            held: Vec::new(),
        };
        self.stats().live_conversations.inc();
        if !waiting {
            entry.addr = Some(self.spawn_conversation(key, entry.generation, ctx));
        }
        entry
    }

    fn spawn_conversation(
        &mut self,
        key: &ConversationKey,
        generation: u32,
        ctx: &mut Context<Self>,
    ) -> Addr<ConversationActor> {
        let (id, deps, stats, key2) = (self.id, &self.deps, &self.stats, key.clone());
        let link = self
            .link
            .get_or_insert_with(|| {
                let me = ctx.address();
                Arc::new(ShardLink {
                    shard: id,
                    stats: stats.clone(),
                    deps: deps.clone(),
                    finished: me.clone().recipient(),
                    escalated: me.recipient(),
                })
            })
            .clone();
        let addr = Supervisor::start(move |_| ConversationActor::new(key2, generation, link));
        self.stats().started.inc();
        debug!(shard = self.id, %key, generation, "conversation started");
        addr
    }

    /// The previous shards released `key`: start its conversation and hand it what was held.
    fn released(&mut self, key: ConversationKey, generation: u32, ctx: &mut Context<Self>) {
        let entry = self
            .conversations
            .peek(&key)
            .is_some_and(|e| e.generation == generation && e.addr.is_none());
        let in_leaving = self
            .leaving
            .get(&key)
            .is_some_and(|l| l.entry.generation == generation && l.entry.addr.is_none());
        if !entry && !in_leaving {
            return;
        }
        let addr = self.spawn_conversation(&key, generation, ctx);
        let slot = if entry {
            self.conversations.peek_mut(&key).expect("checked above")
        } else {
            &mut self.leaving.get_mut(&key).expect("checked above").entry
        };
        for msg in slot.held.drain(..) {
            addr.do_send(msg);
        }
        slot.addr = Some(addr);
        debug!(shard = self.id, %key, "conversation handed over");
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
            if let Some(addr) = self.conversations.pop(&victim).and_then(|e| e.addr) {
                // Evicted conversations are idle ones: their session ends like a passivation.
                addr.do_send(crate::conversation::GoingIdle);
            }
            self.stats().evicted.inc();
            self.stats().live_conversations.dec();
        }
        true
    }

    /// Makes room for one more conversation.
    fn make_room(&mut self) {
        let limit = self.settings.get().max_conversations.saturating_sub(1);
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
        let idle_timeout = self.settings.get().idle_timeout;
        let idle: Vec<ConversationKey> = self
            .conversations
            .iter()
            .rev()
            .take_while(|(_, e)| now.duration_since(e.last_active) >= idle_timeout)
            .filter(|(_, e)| e.pending == 0)
            .map(|(k, _)| k.clone())
            .collect();
        for key in idle {
            if let Some(addr) = self.conversations.pop(&key).and_then(|e| e.addr) {
                addr.do_send(crate::conversation::GoingIdle);
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
        // The sweep runs at least every 5 s, so a shorter idle timeout set by a reload is
        // honoured within that.
        let sweep = (self.settings.get().idle_timeout / 4)
            .min(Duration::from_secs(5))
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
        self.stats.restarts.inc();
        self.stats.live_conversations.set(0);
        self.conversations.clear();
        for (_, leaving) in self.leaving.drain() {
            for waiter in leaving.waiters {
                let _ = waiter.send(());
            }
        }
    }
}

impl Handler<Route> for Shard {
    type Result = ();

    fn handle(&mut self, Route(msg, handover): Route, ctx: &mut Self::Context) {
        let (reply_to, key, message_id) = (msg.reply_to.clone(), msg.key.clone(), msg.message_id);
        let settled = msg.settled.clone();
        let routed = crate::supervision::catch("Shard", ctx, |ctx| self.route(msg, handover, ctx));
        if routed.is_none() {
            // The shard restarts fresh; the message that broke it gets an answer.
            self.deps.stats.supervision.shard.inc();
            reply_to.do_send(crate::messages::ReplyUpdate {
                message_id,
                key: key.clone(),
                text: crate::conversation::CRASH_APOLOGY.to_owned(),
                status: crate::messages::ReplyStatus::Failed(crate::messages::FailureKind::Crashed),
            });
            if let Some(settled) = settled {
                settled.do_send(crate::messages::TurnSettled { message_id, key });
            }
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
    fn route(
        &mut self,
        msg: UserMessage,
        handover: Option<Arc<[Addr<Shard>]>>,
        ctx: &mut Context<Self>,
    ) {
        self.pending_total += 1;
        self.stats.pending_messages.inc();
        // A key this shard is handing over keeps answering here until it is released
        // (a message routed just before the resize).
        if let Some(leaving) = self.leaving.get_mut(&msg.key) {
            leaving.entry.pending += 1;
            match &leaving.entry.addr {
                Some(addr) => addr.do_send(msg),
                None => leaving.entry.held.push(msg),
            }
            return;
        }
        if !self.conversations.contains(&msg.key) {
            let others: Vec<Addr<Shard>> = handover
                .iter()
                .flat_map(|shards| shards.iter())
                .filter(|s| **s != ctx.address())
                .cloned()
                .collect();
            let entry = self.new_entry(&msg.key, !others.is_empty(), ctx);
            if !others.is_empty() {
                let (key, generation) = (msg.key.clone(), entry.generation);
                let asks = others
                    .into_iter()
                    .map(move |s| s.send(Release(key.clone())));
                let key = msg.key.clone();
                ctx.spawn(
                    actix::fut::wrap_future(futures::future::join_all(asks))
                        .map(move |_, shard: &mut Shard, ctx| shard.released(key, generation, ctx)),
                );
            }
            self.conversations.put(msg.key.clone(), entry);
        }
        let entry = self
            .conversations
            .get_mut(&msg.key)
            .expect("inserted above");
        entry.pending += 1;
        entry.last_active = Instant::now();
        match &entry.addr {
            Some(addr) => addr.do_send(msg),
            None => entry.held.push(msg),
        }
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
        } else if let Some(leaving) = self.leaving.get_mut(&msg.key)
            && leaving.entry.generation == msg.generation
        {
            leaving.entry.pending = leaving.entry.pending.saturating_sub(1);
            if leaving.entry.pending == 0 {
                let done = self.leaving.remove(&msg.key).expect("present");
                self.stats.live_conversations.dec();
                for waiter in done.waiters {
                    let _ = waiter.send(());
                }
            }
        }
        // Back under the limit once an overflowing burst goes idle.
        let max = self.settings.get().max_conversations;
        if self.conversations.len() > max {
            self.enforce_limit(max);
        }
        self.release_drain_waiters();
    }
}

impl Handler<Release> for Shard {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, Release(key): Release, _: &mut Self::Context) -> Self::Result {
        if let Some(entry) = self.conversations.pop(&key) {
            if entry.pending == 0 {
                // Idle: dropping the address lets the actor stop; its history is in the store.
                self.stats.live_conversations.dec();
                return Box::pin(async {});
            }
            self.leaving.insert(
                key.clone(),
                Leaving {
                    entry,
                    waiters: Vec::new(),
                },
            );
        }
        match self.leaving.get_mut(&key) {
            Some(leaving) => {
                let (tx, rx) = oneshot::channel();
                leaving.waiters.push(tx);
                Box::pin(async move {
                    let _ = rx.await;
                })
            }
            None => Box::pin(async {}),
        }
    }
}

impl Handler<Rebalance> for Shard {
    type Result = usize;

    /// Drops the idle conversations the new ring puts elsewhere and keeps the busy ones as
    /// leaving, so their new owner's [`Release`] waits for exactly those.
    fn handle(&mut self, m: Rebalance, _: &mut Self::Context) -> usize {
        let moved: Vec<ConversationKey> = self
            .conversations
            .iter()
            .filter(|(k, _)| m.me != Some(m.ring.shard_for(&k.character, &k.user)))
            .map(|(k, _)| k.clone())
            .collect();
        let mut kept = 0usize;
        let count = moved.len();
        for key in moved {
            let entry = self.conversations.pop(&key).expect("listed above");
            if entry.pending == 0 {
                self.stats.live_conversations.dec();
            } else {
                kept += 1;
                self.leaving.insert(
                    key,
                    Leaving {
                        entry,
                        waiters: Vec::new(),
                    },
                );
            }
        }
        debug!(
            shard = self.id,
            moved = count,
            handing_over = kept,
            "rebalanced"
        );
        count
    }
}

impl Handler<Releasing> for Shard {
    type Result = usize;

    fn handle(&mut self, _: Releasing, _: &mut Self::Context) -> usize {
        self.leaving.len()
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
        if self
            .leaving
            .get(&msg.key)
            .is_some_and(|l| l.entry.generation == msg.generation)
        {
            let done = self.leaving.remove(&msg.key).expect("present");
            self.stats().live_conversations.dec();
            for waiter in done.waiters {
                let _ = waiter.send(());
            }
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
            if let Some(addr) = self.conversations.pop(key).and_then(|e| e.addr) {
                leaving.push(addr.downgrade());
            }
            self.stats().live_conversations.dec();
        }
        // Conversations being handed over are forgotten too (they finish what they hold).
        for (key, handed) in &self.leaving {
            if *key.user == *user
                && let Some(addr) = &handed.entry.addr
            {
                leaving.push(addr.downgrade());
            }
        }
        leaving
    }
}
