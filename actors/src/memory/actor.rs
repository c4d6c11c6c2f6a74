//! The card's MemoryActor: a pool of actors in front of the memory store (SQLite or Qdrant),
//! behind the same messages whatever the backend. The pool implements [`MemoryStore`], so every
//! reader and writer (context provider, tools, jobs, "forget me") goes through the actors; its
//! size comes from `[pools]`. Blocking backends keep their own SyncArbiter threads behind it.

use std::sync::Arc;

use actix::prelude::*;
use async_trait::async_trait;

use crate::key::ConversationKey;
use crate::memory::{Candidate, MemoryChunk, MemoryQuery, MemoryStore};
use crate::pool::{InjectPanic, MemberRestarts, Pool, guarded};
use crate::ports::StoreError;
use crate::stats::PoolStats;
use crate::supervision::RestartPolicy;

/// One member of the memory pool: recall and remember.
pub struct MemoryActor {
    store: Arc<dyn MemoryStore>,
    restarts: MemberRestarts,
}

impl Actor for MemoryActor {
    type Context = Context<Self>;
}

impl Supervised for MemoryActor {
    fn restarting(&mut self, ctx: &mut Self::Context) {
        self.restarts.restarting(ctx);
    }
}

/// Search the user's memories.
#[derive(Message)]
#[rtype(result = "Result<Vec<Candidate>, StoreError>")]
pub struct Recall(pub MemoryQuery);

/// Store memory chunks.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Remember(pub Vec<MemoryChunk>);

/// The newest memories of a conversation.
#[derive(Message)]
#[rtype(result = "Result<Vec<Candidate>, StoreError>")]
pub struct ListMemories(pub ConversationKey, pub usize);

/// Delete every memory of a user.
#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct ForgetMemories(pub String);

const MEMORY: &str = "MemoryActor";

impl Handler<Recall> for MemoryActor {
    type Result = ResponseActFuture<Self, Result<Vec<Candidate>, StoreError>>;
    fn handle(&mut self, Recall(query): Recall, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        guarded(MEMORY, async move { store.search(query).await })
    }
}

impl Handler<Remember> for MemoryActor {
    type Result = ResponseActFuture<Self, Result<(), StoreError>>;
    fn handle(&mut self, Remember(chunks): Remember, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        guarded(MEMORY, async move { store.add(chunks).await })
    }
}

impl Handler<ListMemories> for MemoryActor {
    type Result = ResponseActFuture<Self, Result<Vec<Candidate>, StoreError>>;
    fn handle(&mut self, msg: ListMemories, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        guarded(MEMORY, async move { store.list(&msg.0, msg.1).await })
    }
}

impl Handler<ForgetMemories> for MemoryActor {
    type Result = ResponseActFuture<Self, Result<u64, StoreError>>;
    fn handle(&mut self, msg: ForgetMemories, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        guarded(MEMORY, async move { store.forget_user(&msg.0).await })
    }
}

impl Handler<InjectPanic> for MemoryActor {
    type Result = ResponseActFuture<Self, Result<(), StoreError>>;
    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) -> Self::Result {
        guarded(MEMORY, async { panic!("injected into a MemoryActor") })
    }
}

/// The MemoryActor pool, usable wherever a memory store is.
#[derive(Clone)]
pub struct MemoryPool(pub Pool<MemoryActor>);

impl MemoryPool {
    /// Starts `size` MemoryActors in front of `store`. Must run inside an actix System.
    pub fn start(
        store: Arc<dyn MemoryStore>,
        size: usize,
        stats: Arc<PoolStats>,
        policy: RestartPolicy,
    ) -> Self {
        Self(Pool::start(MEMORY, size, stats, policy, move |restarts| {
            MemoryActor {
                store: store.clone(),
                restarts,
            }
        }))
    }
}

#[async_trait]
impl MemoryStore for MemoryPool {
    async fn add(&self, chunks: Vec<MemoryChunk>) -> Result<(), StoreError> {
        self.0.call(Remember(chunks)).await
    }
    async fn search(&self, query: MemoryQuery) -> Result<Vec<Candidate>, StoreError> {
        self.0.call(Recall(query)).await
    }
    async fn list(
        &self,
        key: &ConversationKey,
        limit: usize,
    ) -> Result<Vec<Candidate>, StoreError> {
        self.0.call(ListMemories(key.clone(), limit)).await
    }
    async fn forget_user(&self, user: &str) -> Result<u64, StoreError> {
        self.0.call(ForgetMemories(user.to_owned())).await
    }
}
