//! The card's GraphActor: a pool of actors in front of the fact graph (SQLite or Neo4j), behind
//! the same messages whatever the backend; the pool implements [`FactStore`].

use std::sync::Arc;

use actix::prelude::*;
use async_trait::async_trait;

use crate::graph::{Fact, FactStore, NewFact};
use crate::pool::{InjectPanic, MemberRestarts, Pool, guarded};
use crate::ports::StoreError;
use crate::stats::PoolStats;
use crate::supervision::RestartPolicy;

/// One member of the graph pool: fact lookup and upsert.
pub struct GraphActor {
    store: Arc<dyn FactStore>,
    restarts: MemberRestarts,
}

impl Actor for GraphActor {
    type Context = Context<Self>;
}

impl Supervised for GraphActor {
    fn restarting(&mut self, ctx: &mut Self::Context) {
        self.restarts.restarting(ctx);
    }
}

/// Add facts (closing a single-valued predicate's old value).
#[derive(Message)]
#[rtype(result = "Result<usize, StoreError>")]
pub struct UpsertFacts {
    pub user: String,
    pub facts: Vec<NewFact>,
    pub source: String,
    pub single_valued: Vec<String>,
    pub now_ms: i64,
}

/// The user's current facts.
#[derive(Message)]
#[rtype(result = "Result<Vec<Fact>, StoreError>")]
pub struct CurrentFacts(pub String);

/// The user's closed (corrected) facts.
#[derive(Message)]
#[rtype(result = "Result<Vec<Fact>, StoreError>")]
pub struct CorrectedFacts(pub String);

/// Delete every fact of a user.
#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct ForgetFacts(pub String);

const GRAPH: &str = "GraphActor";

impl Handler<UpsertFacts> for GraphActor {
    type Result = ResponseActFuture<Self, Result<usize, StoreError>>;
    fn handle(&mut self, m: UpsertFacts, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        guarded(GRAPH, async move {
            store
                .upsert(&m.user, m.facts, &m.source, &m.single_valued, m.now_ms)
                .await
        })
    }
}

impl Handler<CurrentFacts> for GraphActor {
    type Result = ResponseActFuture<Self, Result<Vec<Fact>, StoreError>>;
    fn handle(&mut self, CurrentFacts(user): CurrentFacts, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        guarded(GRAPH, async move { store.current(&user).await })
    }
}

impl Handler<CorrectedFacts> for GraphActor {
    type Result = ResponseActFuture<Self, Result<Vec<Fact>, StoreError>>;
    fn handle(
        &mut self,
        CorrectedFacts(user): CorrectedFacts,
        _: &mut Self::Context,
    ) -> Self::Result {
        let store = self.store.clone();
        guarded(GRAPH, async move { store.corrected(&user).await })
    }
}

impl Handler<ForgetFacts> for GraphActor {
    type Result = ResponseActFuture<Self, Result<u64, StoreError>>;
    fn handle(&mut self, ForgetFacts(user): ForgetFacts, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        guarded(GRAPH, async move { store.forget_user(&user).await })
    }
}

impl Handler<InjectPanic> for GraphActor {
    type Result = ResponseActFuture<Self, Result<(), StoreError>>;
    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) -> Self::Result {
        guarded(GRAPH, async { panic!("injected into a GraphActor") })
    }
}

/// The GraphActor pool, usable wherever a fact store is.
#[derive(Clone)]
pub struct GraphPool(pub Pool<GraphActor>);

impl GraphPool {
    /// Starts `size` GraphActors in front of `store`. Must run inside an actix System.
    pub fn start(
        store: Arc<dyn FactStore>,
        size: usize,
        stats: Arc<PoolStats>,
        policy: RestartPolicy,
    ) -> Self {
        Self(Pool::start(GRAPH, size, stats, policy, move |restarts| {
            GraphActor {
                store: store.clone(),
                restarts,
            }
        }))
    }
}

#[async_trait]
impl FactStore for GraphPool {
    async fn upsert(
        &self,
        user: &str,
        facts: Vec<NewFact>,
        source: &str,
        single_valued: &[String],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let facts: Vec<NewFact> = facts.into_iter().map(NewFact::normalised).collect();
        // Which predicates close their old value is the graph's rule, decided here for every
        // backend; the store only carries it out.
        let single_valued = crate::graph::single_valued_in(&facts, single_valued);
        self.0
            .call(UpsertFacts {
                user: user.to_owned(),
                facts,
                source: source.to_owned(),
                single_valued,
                now_ms,
            })
            .await
    }
    async fn current(&self, user: &str) -> Result<Vec<Fact>, StoreError> {
        self.0.call(CurrentFacts(user.to_owned())).await
    }
    async fn corrected(&self, user: &str) -> Result<Vec<Fact>, StoreError> {
        self.0.call(CorrectedFacts(user.to_owned())).await
    }
    async fn forget_user(&self, user: &str) -> Result<u64, StoreError> {
        self.0.call(ForgetFacts(user.to_owned())).await
    }
}
