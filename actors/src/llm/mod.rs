//! The LlmActor: one admission point for every model request in the process.
//!
//! It enforces `pools.llm_concurrency` (requests streaming at once) and `pools.llm_queue`
//! (requests allowed to wait): beyond that a request is refused at once with
//! [`LlmError::Overloaded`] instead of piling up unbounded latency. Each admitted request runs
//! as a task on the actor's arbiter that retries transient failures with exponential backoff
//! (only before the first token: a half-streamed reply is never restarted), bounds the wait for
//! the first token and between tokens, and stops the HTTP request as soon as the requester drops
//! its receiver (the user's conversation stopped).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tracing::{Instrument, debug, info_span, warn};

use crate::ports::{ChatModel, ChatRequest, LlmError, ModelDelta, ToolCall};
use crate::stats::RuntimeStats;

#[derive(Clone, Debug, PartialEq)]
pub struct LlmPolicy {
    pub max_concurrent: usize,
    pub queue_capacity: usize,
    /// Deadline for the first token, from the moment the request is admitted to run.
    pub first_token_timeout: Duration,
    /// Deadline between two tokens once streaming.
    pub idle_timeout: Duration,
    /// Retries after the first attempt, for 429, 5xx and connection failures.
    pub max_retries: u32,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
}

/// What a generation task reports to its requester.
#[derive(Debug, PartialEq)]
pub enum LlmEvent {
    Token(String),
    /// The model asked for these tools instead of (or after) answering; the round ends.
    ToolCalls(Vec<ToolCall>),
    Done,
    Failed(LlmError),
}

/// Ask for a streamed completion. The receiver yields tokens then `Done` or `Failed`; dropping
/// it cancels the request.
#[derive(Message)]
#[rtype(result = "Result<mpsc::Receiver<LlmEvent>, LlmError>")]
pub struct Generate {
    pub request: ChatRequest,
    /// Background work (fact extraction...) may use at most half the slots, so users' replies
    /// always have one.
    pub background: bool,
}

impl Generate {
    pub fn interactive(request: ChatRequest) -> Self {
        Self {
            request,
            background: false,
        }
    }

    pub fn background(request: ChatRequest) -> Self {
        Self {
            request,
            background: true,
        }
    }
}

pub struct LlmActor {
    model: Arc<dyn ChatModel>,
    policy: Arc<LlmPolicy>,
    permits: Arc<Semaphore>,
    background_permits: Arc<Semaphore>,
    stats: Arc<RuntimeStats>,
}

impl LlmActor {
    pub fn new(model: Arc<dyn ChatModel>, policy: LlmPolicy, stats: Arc<RuntimeStats>) -> Self {
        stats.llm.max_concurrent.set(policy.max_concurrent as u64);
        stats.llm.queue_capacity.set(policy.queue_capacity as u64);
        Self {
            model,
            permits: Arc::new(Semaphore::new(policy.max_concurrent)),
            background_permits: Arc::new(Semaphore::new((policy.max_concurrent / 2).max(1))),
            policy: Arc::new(policy),
            stats,
        }
    }
}

impl Actor for LlmActor {
    type Context = Context<Self>;
}

impl Supervised for LlmActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.stats.supervision.llm.inc();
        warn!("LLM actor restarting; in-flight generations continue on their own tasks");
    }
}

impl Handler<Generate> for LlmActor {
    type Result = Result<mpsc::Receiver<LlmEvent>, LlmError>;

    fn handle(&mut self, msg: Generate, ctx: &mut Self::Context) -> Self::Result {
        crate::supervision::catch("LlmActor", ctx, |_| self.admit(msg)).unwrap_or_else(|| {
            Err(LlmError::Transient {
                status: None,
                message: "the LLM actor failed and is restarting".into(),
            })
        })
    }
}

/// New admission limits (`pools.llm_concurrency`, `pools.llm_queue`), applied live: more slots
/// at once; fewer as generations in flight finish (none is cut off).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ResizeLlm {
    pub max_concurrent: usize,
    pub queue_capacity: usize,
}

impl Handler<ResizeLlm> for LlmActor {
    type Result = ();

    fn handle(&mut self, m: ResizeLlm, _: &mut Self::Context) {
        let max_concurrent = m.max_concurrent.max(1);
        let old = self.policy.max_concurrent;
        resize_semaphore(&self.permits, old, max_concurrent);
        resize_semaphore(
            &self.background_permits,
            (old / 2).max(1),
            (max_concurrent / 2).max(1),
        );
        let mut policy = (*self.policy).clone();
        policy.max_concurrent = max_concurrent;
        policy.queue_capacity = m.queue_capacity;
        self.policy = Arc::new(policy);
        self.stats.llm.max_concurrent.set(max_concurrent as u64);
        self.stats.llm.queue_capacity.set(m.queue_capacity as u64);
        tracing::info!(
            max_concurrent,
            queue = m.queue_capacity,
            "LLM admission resized"
        );
    }
}

/// Grows a semaphore at once; shrinks it by taking and forgetting permits as they come back.
fn resize_semaphore(semaphore: &Arc<Semaphore>, from: usize, to: usize) {
    if to > from {
        semaphore.add_permits(to - from);
    } else if to < from {
        let semaphore = semaphore.clone();
        let fewer = (from - to) as u32;
        tokio::spawn(async move {
            if let Ok(permits) = semaphore.acquire_many_owned(fewer).await {
                permits.forget();
            }
        });
    }
}

impl Handler<crate::pool::InjectPanic> for LlmActor {
    type Result = Result<(), crate::ports::StoreError>;

    fn handle(&mut self, _: crate::pool::InjectPanic, ctx: &mut Self::Context) -> Self::Result {
        crate::supervision::catch("LlmActor", ctx, |_| panic!("injected into the LlmActor"))
            .unwrap_or_else(|| Err(crate::pool::panicked("LlmActor", "injected")))
    }
}

impl LlmActor {
    fn admit(&mut self, msg: Generate) -> Result<mpsc::Receiver<LlmEvent>, LlmError> {
        // Generation tasks run on this actor's arbiter thread, so between two messages the
        // counters are exact: a task moves itself from `queued` to `in_flight` without yielding.
        // (The semaphore is not: a task admitted a moment ago may not have taken its permit yet.)
        let waiting = self.stats.llm.queued.get() as usize;
        let admitted = waiting + self.stats.llm.in_flight.get() as usize;
        if admitted >= self.policy.max_concurrent + self.policy.queue_capacity {
            self.stats.llm.rejected_overloaded.inc();
            return Err(LlmError::Overloaded(waiting));
        }
        self.stats.llm.queued.inc();
        let (tx, rx) = mpsc::channel(256);
        let task = Generation {
            model: self.model.clone(),
            policy: self.policy.clone(),
            stats: self.stats.clone(),
            request: msg.request,
            tx,
        };
        let permits = self.permits.clone();
        let background = msg.background.then(|| self.background_permits.clone());
        actix_rt::spawn(
            task.run(permits, background)
                .instrument(info_span!("llm_generate", background = msg.background)),
        );
        Ok(rx)
    }
}

struct Generation {
    model: Arc<dyn ChatModel>,
    policy: Arc<LlmPolicy>,
    stats: Arc<RuntimeStats>,
    request: ChatRequest,
    tx: mpsc::Sender<LlmEvent>,
}

enum Attempt {
    Completed,
    Cancelled,
    /// Failed before any token reached the requester: may be retried.
    FailedEarly(LlmError),
    FailedMidStream(LlmError),
}

/// Decrements the in-flight gauge however the task ends.
struct InFlight<'a>(&'a RuntimeStats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.llm.in_flight.dec();
    }
}

impl Generation {
    async fn run(self, permits: Arc<Semaphore>, background: Option<Arc<Semaphore>>) {
        let stats = &self.stats.llm;
        // Background work first takes a background slot, so it never holds every slot.
        let _background = match background {
            None => None,
            Some(lane) => tokio::select! {
                permit = lane.acquire_owned() => permit.ok(),
                _ = self.tx.closed() => {
                    stats.queued.dec();
                    stats.cancelled.inc();
                    return;
                }
            },
        };
        let permit = tokio::select! {
            permit = permits.acquire_owned() => permit,
            _ = self.tx.closed() => {
                stats.queued.dec();
                stats.cancelled.inc();
                return;
            }
        };
        stats.queued.dec();
        let Ok(_permit) = permit else {
            let _ = self.tx.send(LlmEvent::Failed(LlmError::Unavailable)).await;
            return;
        };
        stats.in_flight.inc();
        let _in_flight = InFlight(&self.stats);

        let mut retries = 0;
        loop {
            let outcome = tokio::select! {
                outcome = self.attempt() => outcome,
                _ = self.tx.closed() => Attempt::Cancelled,
            };
            let error = match outcome {
                Attempt::Completed => {
                    stats.completed.inc();
                    let _ = self.tx.send(LlmEvent::Done).await;
                    return;
                }
                Attempt::Cancelled => {
                    debug!("generation cancelled by its requester");
                    stats.cancelled.inc();
                    return;
                }
                Attempt::FailedEarly(e)
                    if e.is_retryable() && retries < self.policy.max_retries =>
                {
                    retries += 1;
                    stats.retries.inc();
                    let backoff = self.backoff(retries);
                    warn!(error = %e, retry = retries, ?backoff, "model request failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => continue,
                        _ = self.tx.closed() => { stats.cancelled.inc(); return; }
                    }
                }
                Attempt::FailedEarly(e) | Attempt::FailedMidStream(e) => e,
            };
            if matches!(error, LlmError::Timeout(_)) {
                stats.timeouts.inc();
            } else {
                stats.failures.inc();
            }
            warn!(%error, retries, "model request failed");
            let _ = self.tx.send(LlmEvent::Failed(error)).await;
            return;
        }
    }

    fn backoff(&self, retry: u32) -> Duration {
        crate::backoff::Backoff::new(self.policy.retry_backoff, self.policy.retry_backoff_max)
            .delay(retry)
    }

    async fn attempt(&self) -> Attempt {
        let first_deadline = tokio::time::Instant::now() + self.policy.first_token_timeout;
        let timeout = LlmError::Timeout(self.policy.first_token_timeout);
        let mut stream =
            match tokio::time::timeout_at(first_deadline, self.model.stream(self.request.clone()))
                .await
            {
                Err(_) => return Attempt::FailedEarly(timeout),
                Ok(Err(e)) => return Attempt::FailedEarly(e),
                Ok(Ok(stream)) => stream,
            };
        let mut produced = false;
        loop {
            let next = if produced {
                tokio::time::timeout(self.policy.idle_timeout, stream.next()).await
            } else {
                tokio::time::timeout_at(first_deadline, stream.next()).await
            };
            match next {
                Err(_) if produced => {
                    return Attempt::FailedMidStream(LlmError::Timeout(self.policy.idle_timeout));
                }
                Err(_) => return Attempt::FailedEarly(timeout),
                Ok(None) => return Attempt::Completed,
                Ok(Some(Err(e))) if produced => return Attempt::FailedMidStream(e),
                Ok(Some(Err(e))) => return Attempt::FailedEarly(e),
                Ok(Some(Ok(ModelDelta::Text(token)))) if token.is_empty() => continue,
                Ok(Some(Ok(delta))) => {
                    produced = true;
                    let event = match delta {
                        ModelDelta::Text(token) => LlmEvent::Token(token),
                        ModelDelta::ToolCalls(calls) => LlmEvent::ToolCalls(calls),
                    };
                    if self.tx.send(event).await.is_err() {
                        return Attempt::Cancelled;
                    }
                }
            }
        }
    }
}

/// Background completion: asks through the admission queue's background lane and collects the
/// whole answer (for jobs such as fact extraction and summaries, which need text, not a stream).
pub async fn complete_in_background(
    llm: &Addr<LlmActor>,
    request: ChatRequest,
) -> Result<String, LlmError> {
    let mut events = llm
        .send(Generate::background(request))
        .await
        .map_err(|_| LlmError::Unavailable)??;
    let mut answer = String::new();
    loop {
        match events.recv().await {
            Some(LlmEvent::Token(t)) => answer.push_str(&t),
            // Background requests carry no tools; a stray call is not text.
            Some(LlmEvent::ToolCalls(_)) => {}
            Some(LlmEvent::Done) => return Ok(answer),
            Some(LlmEvent::Failed(e)) => return Err(e),
            None => return Err(LlmError::Unavailable),
        }
    }
}
