//! Routed pools of actors (after ractor's `factory`): N members of one kind, each supervised
//! on its own arbiter, and a cheap cloneable handle that routes each request to the next
//! member and counts what the pool is doing for `status` and `/metrics`.
//!
//! A panic inside a member's handler never hangs its caller: [`guarded`] turns it into an error
//! answer and stops the member, which its actix `Supervisor` restarts at once (the members are
//! stateless fronts of a store, so a restart loses nothing); the restart is counted.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix::prelude::*;
use futures::FutureExt;

use crate::ports::StoreError;
use crate::stats::PoolStats;

/// A pool of `A` actors and the arbiters they run on.
pub struct Pool<A: Actor> {
    members: Arc<Vec<Addr<A>>>,
    next: Arc<AtomicUsize>,
    stats: Arc<PoolStats>,
    kind: &'static str,
    arbiters: Arc<Vec<Arbiter>>,
}

impl<A: Actor> Clone for Pool<A> {
    fn clone(&self) -> Self {
        Self {
            members: self.members.clone(),
            next: self.next.clone(),
            stats: self.stats.clone(),
            kind: self.kind,
            arbiters: self.arbiters.clone(),
        }
    }
}

impl<A> Pool<A>
where
    A: Actor<Context = Context<A>> + Supervised,
{
    /// Starts `size` (at least one) members, each under a Supervisor on its own arbiter.
    /// Must run inside an actix System.
    pub fn start(
        kind: &'static str,
        size: usize,
        stats: Arc<PoolStats>,
        make: impl Fn() -> A + Send + Sync + 'static,
    ) -> Self {
        let make = Arc::new(make);
        let size = size.max(1);
        stats.size.set(size as u64);
        let mut members = Vec::with_capacity(size);
        let mut arbiters = Vec::with_capacity(size);
        for _ in 0..size {
            let arbiter = Arbiter::new();
            let make = make.clone();
            members.push(Supervisor::start_in_arbiter(&arbiter.handle(), move |_| {
                make()
            }));
            arbiters.push(arbiter);
        }
        Self {
            members: Arc::new(members),
            next: Arc::new(AtomicUsize::new(0)),
            stats,
            kind,
            arbiters: Arc::new(arbiters),
        }
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    pub fn stats(&self) -> &Arc<PoolStats> {
        &self.stats
    }

    /// Sends to the next member, counting the request while it waits or is served.
    pub async fn ask<M>(&self, msg: M) -> Result<M::Result, MailboxError>
    where
        A: Handler<M>,
        A::Context: actix::dev::ToEnvelope<A, M>,
        M: Message + Send + 'static,
        M::Result: Send,
    {
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.members.len();
        self.stats.queue_depth.inc();
        let result = self.members[at].send(msg).await;
        self.stats.queue_depth.dec();
        result
    }

    /// Asks the next member; a member gone (stopping) is reported as the store unavailable.
    pub async fn call<M, T>(&self, msg: M) -> Result<T, StoreError>
    where
        A: Handler<M>,
        M: Message<Result = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let result = self.ask(msg).await.unwrap_or_else(|e| {
            Err(StoreError::Unavailable {
                store: self.kind,
                reason: format!("pool member unavailable: {e}"),
            })
        });
        if result.is_err() {
            self.stats.errors.inc();
        }
        result
    }

    /// Stops every member's arbiter.
    pub fn stop(&self) {
        for arbiter in self.arbiters.iter() {
            arbiter.stop();
        }
    }
}

/// A store call run by a pool member: its answer, or, if it panicked, an error answer, and the
/// member stops so its Supervisor restarts it.
pub fn guarded<A, T>(
    kind: &'static str,
    call: impl Future<Output = Result<T, StoreError>> + 'static,
) -> ResponseActFuture<A, Result<T, StoreError>>
where
    A: Actor<Context = Context<A>>,
    T: 'static,
{
    Box::pin(
        actix::fut::wrap_future::<_, A>(AssertUnwindSafe(call).catch_unwind()).map(
            move |outcome, _, ctx| match outcome {
                Ok(answer) => answer,
                Err(panic) => {
                    let cause = crate::supervision::panic_message(&*panic);
                    tracing::error!(kind, %cause, "a pool member panicked; restarting it");
                    ctx.stop();
                    Err(panicked(kind, cause))
                }
            },
        ),
    )
}

/// The error answer of an actor whose handler panicked (its caller never hangs).
pub fn panicked(kind: &'static str, cause: impl Into<String>) -> StoreError {
    StoreError::Failed {
        store: kind,
        operation: "answer",
        reason: format!("the actor panicked: {}", cause.into()),
    }
}

/// The fault-injection hook of the supervision tests: the member that gets it panics inside
/// its handler, as a bug in a store adapter would.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), StoreError>")]
pub struct InjectPanic;
