//! Routed pools of actors (after ractor's `factory`): N members of one kind, each supervised
//! on its own arbiter, and a cheap cloneable handle that routes each request to the next
//! member and counts what the pool is doing for `status` and `/metrics`.
//!
//! A panic inside a member's handler never hangs its caller: [`guarded`] turns it into an error
//! answer and stops the member, which its actix `Supervisor` restarts under `[supervision]`
//! ([`MemberRestarts`]: counted, after a backoff; past the budget the pool replaces it).
//!
//! A pool resizes live ([`Pool::resize`]): new members start at once; a retired member leaves
//! the rotation, answers what it already holds (its actor stops when its mailbox is empty and
//! the pool's address is gone), and then its arbiter stops.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use actix::prelude::*;
use futures::FutureExt;

use crate::ports::StoreError;
use crate::stats::PoolStats;
use crate::supervision::{RestartDecision, RestartPolicy, RestartTracker};

/// A pool of `A` actors and the arbiters they run on.
/// The members in rotation, swapped whole by a resize.
type Members<A> = Arc<Vec<Arc<Member<A>>>>;

pub struct Pool<A: Actor> {
    members: Arc<RwLock<Members<A>>>,
    make: Arc<dyn Fn(MemberRestarts) -> A + Send + Sync>,
    policy: RestartPolicy,
    next: Arc<AtomicUsize>,
    stats: Arc<PoolStats>,
    kind: &'static str,
}

/// One seat in the pool: the member's address (replaced when it escalates) and its arbiter.
struct Member<A: Actor> {
    /// `None` once the member is retired.
    addr: RwLock<Option<Addr<A>>>,
    /// Set by the member when its restart budget is spent: the pool replaces it.
    escalated: Arc<AtomicBool>,
    arbiter: Arbiter,
}

impl<A: Actor> Clone for Pool<A> {
    fn clone(&self) -> Self {
        Self {
            members: self.members.clone(),
            make: self.make.clone(),
            policy: self.policy.clone(),
            next: self.next.clone(),
            stats: self.stats.clone(),
            kind: self.kind,
        }
    }
}

/// A pool member's restarts under `[supervision]`: each restart is counted and waits out its
/// backoff (the member's mailbox holds its messages meanwhile, so callers wait, never fail
/// for it); past `max_restarts` within the window the member escalates to its pool, which
/// replaces it with a fresh one built from the pool's factory.
pub struct MemberRestarts {
    kind: &'static str,
    tracker: RestartTracker,
    stats: Arc<PoolStats>,
    escalated: Arc<AtomicBool>,
}

impl MemberRestarts {
    /// Call from the member's `Supervised::restarting`.
    pub fn restarting<A>(&mut self, ctx: &mut Context<A>)
    where
        A: Actor<Context = Context<A>>,
    {
        self.stats.restarts.inc();
        match self.tracker.on_failure(std::time::Instant::now()) {
            RestartDecision::Restart { attempt, backoff } => {
                tracing::warn!(
                    kind = self.kind,
                    attempt,
                    ?backoff,
                    "restarting after a panic"
                );
                ctx.wait(actix::fut::wrap_future(tokio::time::sleep(backoff)));
            }
            RestartDecision::Escalate { failures } => {
                self.stats.escalations.inc();
                self.escalated.store(true, Ordering::Release);
                tracing::error!(
                    kind = self.kind,
                    failures,
                    "restart budget spent; escalated to the pool, which replaces this member"
                );
            }
        }
    }
}

impl<A> Pool<A>
where
    A: Actor<Context = Context<A>> + Supervised,
{
    /// Starts `size` (at least one) members, each under a Supervisor on its own arbiter,
    /// restarted under `policy`. Must run inside an actix System.
    pub fn start(
        kind: &'static str,
        size: usize,
        stats: Arc<PoolStats>,
        policy: RestartPolicy,
        make: impl Fn(MemberRestarts) -> A + Send + Sync + 'static,
    ) -> Self {
        let make: Arc<dyn Fn(MemberRestarts) -> A + Send + Sync> = Arc::new(make);
        let size = size.max(1);
        stats.size.set(size as u64);
        let members = (0..size)
            .map(|_| Self::new_member(&make, kind, &policy, &stats))
            .collect();
        Self {
            members: Arc::new(RwLock::new(Arc::new(members))),
            make,
            policy,
            next: Arc::new(AtomicUsize::new(0)),
            stats,
            kind,
        }
    }

    fn new_member(
        make: &Arc<dyn Fn(MemberRestarts) -> A + Send + Sync>,
        kind: &'static str,
        policy: &RestartPolicy,
        stats: &Arc<PoolStats>,
    ) -> Arc<Member<A>> {
        let arbiter = Arbiter::new();
        let escalated = Arc::new(AtomicBool::new(false));
        let addr = Self::spawn(&arbiter, make, kind, policy, stats, &escalated);
        Arc::new(Member {
            addr: RwLock::new(Some(addr)),
            escalated,
            arbiter,
        })
    }

    fn snapshot(&self) -> Members<A> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Grows or shrinks the pool to `size` (at least one) members while it serves. Retired
    /// members finish the requests they already hold.
    pub fn resize(&self, size: usize) {
        let size = size.max(1);
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        let mut next: Vec<Arc<Member<A>>> = members.iter().take(size).cloned().collect();
        let retired: Vec<Arc<Member<A>>> = members.iter().skip(size).cloned().collect();
        while next.len() < size {
            next.push(Self::new_member(
                &self.make,
                self.kind,
                &self.policy,
                &self.stats,
            ));
        }
        *members = Arc::new(next);
        drop(members);
        self.stats.size.set(size as u64);
        for member in retired {
            // Only the pool held the member's address: once requests in flight drop theirs,
            // the actor finishes its mailbox and stops, and then its thread can go.
            let Some(addr) = member
                .addr
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            else {
                continue;
            };
            let weak = addr.downgrade();
            drop(addr);
            let kind = self.kind;
            actix::spawn(async move {
                while weak.upgrade().is_some() {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                member.arbiter.stop();
                tracing::info!(kind, "retired pool member stopped");
            });
        }
    }

    fn spawn(
        arbiter: &Arbiter,
        make: &Arc<dyn Fn(MemberRestarts) -> A + Send + Sync>,
        kind: &'static str,
        policy: &RestartPolicy,
        stats: &Arc<PoolStats>,
        escalated: &Arc<AtomicBool>,
    ) -> Addr<A> {
        escalated.store(false, Ordering::Release);
        let restarts = MemberRestarts {
            kind,
            tracker: RestartTracker::new(policy.clone()),
            stats: stats.clone(),
            escalated: escalated.clone(),
        };
        let make = make.clone();
        Supervisor::start_in_arbiter(&arbiter.handle(), move |_| make(restarts))
    }

    /// The member at `at`, replaced first if it escalated (its old actor stops once the last
    /// request to it is answered, when its address is dropped).
    fn member(&self, members: &[Arc<Member<A>>], at: usize) -> Addr<A> {
        let member = &members[at];
        if member.escalated.swap(false, Ordering::AcqRel) {
            let fresh = Self::spawn(
                &member.arbiter,
                &self.make,
                self.kind,
                &self.policy,
                &self.stats,
                &member.escalated,
            );
            *member.addr.write().unwrap_or_else(|e| e.into_inner()) = Some(fresh);
            tracing::warn!(kind = self.kind, member = at, "escalated member replaced");
        }
        member
            .addr
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .expect("members in rotation have an address")
    }

    pub fn size(&self) -> usize {
        self.snapshot().len()
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
        let members = self.snapshot();
        let at = self.next.fetch_add(1, Ordering::Relaxed) % members.len();
        let member = self.member(&members, at);
        drop(members);
        self.stats.queue_depth.inc();
        let result = member.send(msg).await;
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
        for member in self.snapshot().iter() {
            member.arbiter.stop();
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
