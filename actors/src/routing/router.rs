//! The ShardRouter: maps `(character, user)` to a shard on the consistent-hash ring.
//!
//! It is a cheap, cloneable handle rather than an actor: routing is a pure function of the key,
//! and putting it behind a mailbox would funnel every message in the process through one thread.
//! Transports call [`ShardRouter::route`] directly from wherever they run.
//!
//! The placement (ring and shard addresses) is swapped whole on a resize: every clone of the
//! router sees the new one at its next message. During the hand-over that follows, messages
//! carry the shards that may still hold a key's conversation (see [`crate::routing::shard`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix::{Addr, WeakAddr};
use arc_swap::ArcSwap;

use crate::character::CharacterSet;
use crate::conversation::ConversationActor;
use crate::key::ConversationKey;
use crate::messages::UserMessage;
use crate::routing::ring::HashRing;
use crate::routing::shard::{ForgetUser, Route, Shard};
use crate::stats::RuntimeStats;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RouteError {
    #[error("unknown character {0:?}")]
    UnknownCharacter(String),
    #[error("the runtime is shutting down")]
    ShuttingDown,
    #[error("shard {0} is not running")]
    ShardDown(usize),
}

/// Where keys go: the ring, its shards, and (while a resize hands conversations over) every
/// shard that may still hold one.
pub(crate) struct Placement {
    pub ring: Arc<HashRing>,
    pub shards: Arc<[Addr<Shard>]>,
    pub handover: Option<Arc<[Addr<Shard>]>>,
}

#[derive(Clone)]
pub struct ShardRouter {
    placement: Arc<ArcSwap<Placement>>,
    characters: crate::character::LiveCharacters,
    stats: Arc<RuntimeStats>,
    accepting: Arc<AtomicBool>,
}

impl ShardRouter {
    pub(crate) fn new(
        ring: HashRing,
        shards: Vec<Addr<Shard>>,
        characters: crate::character::LiveCharacters,
        stats: Arc<RuntimeStats>,
    ) -> Self {
        Self {
            placement: Arc::new(ArcSwap::from_pointee(Placement {
                ring: Arc::new(ring),
                shards: shards.into(),
                handover: None,
            })),
            characters,
            stats,
            accepting: Arc::new(AtomicBool::new(true)),
        }
    }

    pub(crate) fn placement(&self) -> Arc<Placement> {
        self.placement.load_full()
    }

    pub(crate) fn set_placement(&self, placement: Placement) {
        self.placement.store(Arc::new(placement));
    }

    pub fn shard_of(&self, key: &ConversationKey) -> usize {
        self.placement
            .load()
            .ring
            .shard_for(&key.character, &key.user) as usize
    }

    /// The characters in force now (a reload may swap them).
    pub fn characters(&self) -> Arc<CharacterSet> {
        self.characters.load_full()
    }

    /// Hands a message to its conversation. Returns at once; the reply arrives at
    /// `msg.reply_to`. Messages from one sender to one user keep their order.
    pub fn route(&self, mut msg: UserMessage) -> Result<(), RouteError> {
        if !self.accepting.load(Ordering::Acquire) {
            return Err(RouteError::ShuttingDown);
        }
        let characters = self.characters.load();
        let Some(character) = characters.interned_id(&msg.key.character) else {
            return Err(RouteError::UnknownCharacter(msg.key.character.to_string()));
        };
        msg.key.character = character.clone();
        drop(characters);
        let placement = self.placement.load();
        let shard = placement.ring.shard_for(&msg.key.character, &msg.key.user) as usize;
        let addr = &placement.shards[shard];
        if !addr.connected() {
            return Err(RouteError::ShardDown(shard));
        }
        self.stats.pipeline.messages.inc();
        addr.do_send(Route(msg, placement.handover.clone()));
        Ok(())
    }

    /// Drops the user's conversation actors on every shard (their cached history and profile
    /// with them). Part of "forget me"; the stores are cleared by the caller, after
    /// [`Forgotten::finished`], so a turn still in flight cannot write behind the delete.
    pub async fn forget_user(&self, user: &str) -> Forgotten {
        let replies = futures::future::join_all(
            self.all_shards()
                .iter()
                .map(|shard| shard.send(ForgetUser(user.to_owned()))),
        )
        .await;
        Forgotten {
            leaving: replies
                .into_iter()
                .flat_map(Result::unwrap_or_default)
                .collect(),
        }
    }

    pub(crate) fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::Release);
    }

    /// The shards of the current ring.
    pub fn shards(&self) -> Arc<[Addr<Shard>]> {
        self.placement.load().shards.clone()
    }

    /// Every running shard: the ring's, and during a hand-over those still answering.
    pub fn all_shards(&self) -> Arc<[Addr<Shard>]> {
        let placement = self.placement.load();
        placement
            .handover
            .clone()
            .unwrap_or_else(|| placement.shards.clone())
    }
}

/// The conversations "forget me" dropped. An actor finishing a turn it had started stays
/// alive (and upgradable) until that turn is stored and its jobs enqueued.
pub struct Forgotten {
    leaving: Vec<WeakAddr<ConversationActor>>,
}

impl Forgotten {
    /// Conversations that were live.
    pub fn count(&self) -> usize {
        self.leaving.len()
    }

    /// Waits until every dropped conversation has stopped, up to `timeout`; returns whether
    /// they all did.
    pub async fn finished(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.leaving.iter().all(|a| a.upgrade().is_none()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
