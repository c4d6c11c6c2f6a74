//! The worker role: consume the partitions this member ranks for, answer their messages with
//! the local runtime, publish the replies to the gateways, ack each delivery once its reply is
//! final.
//!
//! Every second the worker refreshes its membership, reads the live workers, and computes its
//! share by rendezvous hashing: partitions it owns and `cluster.standby` more it consumes as
//! standby (the broker delivers a partition to one consumer at a time). A partition it no
//! longer ranks for is yielded: no new deliveries are taken, the messages in flight finish
//! (up to `cluster.handoff_timeout`) and are acked one by one, and the channel closes without
//! `basic.cancel`, so whatever was not acked goes back into the queue in place, in order.
//!
//! A lost broker connection is replaced at the next round and every partition subscribed
//! again; what was unacked on the old one is redelivered (the history store and Discord's
//! nonce keep a re-run turn single). A turn older than `cluster.watchdog` means the process is
//! hung: it exits, so a standby takes over.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::watch;
use tracing::{error, info, warn};
use whisper_actors::messages::{ReplyStatus, ReplyUpdate, TurnSettled, UserMessage};
use whisper_actors::{ConversationKey, Scope, ShardRouter};

use super::broker::{Broker, BrokerError, Delivery, Link};
use super::membership::Membership;
use super::placement::assign;
use super::wire::{ForgetAnswer, ForgetRequest, Inbound, Outbound, OutboundState, ToGateway, Work};
use crate::app::UserControl;
use crate::config::ClusterSection;

const ROLE: &str = "worker";

/// A running worker; [`WorkerHandle::leave`] hands its partitions over gracefully.
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The partitions consumed now (owned and standby), for status.
    pub consumed: Arc<std::sync::Mutex<BTreeSet<u32>>>,
}

impl WorkerHandle {
    /// Yields every partition (in-flight turns finish and are acked first) and leaves the
    /// membership, so the other workers take over at once.
    pub async fn leave(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Stops at once without acking what is in flight, as a crash would (tests).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// What a worker needs from the application it runs in.
#[derive(Clone)]
pub struct Runtime {
    pub router: ShardRouter,
    /// `/forget` published into a partition runs through it.
    pub control: UserControl,
    /// Turns this worker runs at once, over all its partitions: what the model admission
    /// takes (`pools.llm_concurrency` + `pools.llm_queue`). Beyond it, deliveries wait in the
    /// broker, durable, instead of being turned away as "too busy".
    pub max_turns: usize,
}

/// When each partition's oldest turn in flight started, for the watchdog.
type Oldest = Arc<std::sync::Mutex<HashMap<u32, Instant>>>;

/// Starts the worker loop. Must run inside the actix System (replies come through an actor).
pub async fn start(
    runtime: Runtime,
    cluster: &ClusterSection,
    membership: Membership,
    node: String,
    prefix: &str,
    report: crate::status::ClusterSlot,
) -> Result<WorkerHandle, BrokerError> {
    let link = Link::for_cluster(cluster, prefix).await?;
    let (stop, stopped) = watch::channel(false);
    let consumed: Arc<std::sync::Mutex<BTreeSet<u32>>> = Default::default();
    let settings = cluster.clone();
    let shown = consumed.clone();
    let task = actix::spawn(async move {
        let mut running: BTreeMap<u32, (watch::Sender<bool>, tokio::task::JoinHandle<()>)> =
            BTreeMap::new();
        let mut stopped = stopped;
        let mut was_owned: BTreeSet<u32> = BTreeSet::new();
        let mut round = 0u64;
        let oldest: Oldest = Default::default();
        let turns = Arc::new(tokio::sync::Semaphore::new(runtime.max_turns.max(1)));
        let mut broker = link.current().await;
        loop {
            round += 1;
            if let Err(e) = membership.refresh(ROLE).await {
                warn!(error = %e, "cannot refresh cluster membership");
            }
            watchdog(&oldest, settings.watchdog);
            // The connection was lost: every consumer on it is gone with it (the broker
            // returned their unacked messages). Subscribe everything again on a new one.
            if !broker.is_connected() {
                match link.connected().await {
                    Ok(fresh) => {
                        warn!("the broker connection was replaced; subscribing again");
                        for (_, (tx, task)) in std::mem::take(&mut running) {
                            let _ = tx.send(true);
                            task.abort();
                        }
                        oldest.lock().unwrap_or_else(|e| e.into_inner()).clear();
                        broker = fresh;
                    }
                    Err(e) => warn!(error = %e, "the broker is unreachable; retrying"),
                }
            }
            let mut members = membership.members(ROLE).await.unwrap_or_default();
            if !members.contains(&node) {
                members.push(node.clone());
                members.sort();
            }
            let leaving = *stopped.borrow();
            let (wanted, owned): (BTreeSet<u32>, BTreeSet<u32>) = if leaving {
                Default::default()
            } else {
                let share = assign(&members, settings.partitions, settings.standby)
                    .remove(&node)
                    .unwrap_or_default();
                let owned: BTreeSet<u32> = share.owned.iter().copied().collect();
                (
                    share.owned.into_iter().chain(share.standby).collect(),
                    owned,
                )
            };
            // A partition this member owned and now only stands by for: its consumer may be
            // the active one, and the broker keeps it so until it goes. Re-subscribing puts it
            // behind the new owner, which then takes the deliveries.
            let demoted: Vec<u32> = was_owned
                .iter()
                .filter(|p| wanted.contains(p) && !owned.contains(p))
                .copied()
                .collect();
            let mut yielding = Vec::new();
            // Re-subscribed at the next round, so the new owner (subscribing as it joined) is
            // ahead in the broker's line.
            let cooling: BTreeSet<u32> = demoted.iter().copied().collect();
            for p in demoted {
                if let Some((tx, task)) = running.remove(&p) {
                    let _ = tx.send(true);
                    yielding.push(task);
                }
            }
            was_owned = owned;
            // A partition whose consumer ended by itself (its channel closed under it) is
            // subscribed again.
            running.retain(|p, (_, task)| {
                let alive = !task.is_finished();
                if !alive {
                    warn!(
                        partition = *p,
                        "a partition's consumer ended; subscribing again"
                    );
                }
                alive
            });
            let new: Vec<u32> = wanted
                .iter()
                .filter(|p| !running.contains_key(p) && !cooling.contains(p))
                .copied()
                .collect();
            if broker.is_connected() {
                for p in &new {
                    let (yield_tx, yield_rx) = watch::channel(false);
                    let task = actix::spawn(
                        Partition {
                            broker: broker.clone(),
                            runtime: runtime.clone(),
                            partition: *p,
                            handoff: settings.handoff_timeout,
                            oldest: oldest.clone(),
                            turns: turns.clone(),
                        }
                        .serve(settings.prefetch, node.clone(), yield_rx),
                    );
                    running.insert(*p, (yield_tx, task));
                }
            }
            let gone: Vec<u32> = running
                .keys()
                .filter(|p| !wanted.contains(p))
                .copied()
                .collect();
            for p in gone {
                let (tx, task) = running.remove(&p).expect("listed");
                let _ = tx.send(true);
                yielding.push(task);
            }
            *shown.lock().expect("status lock") = running.keys().copied().collect();
            // What `status` shows; queue depths every few rounds (one request per partition).
            let mut queued = report
                .lock()
                .expect("status lock")
                .as_ref()
                .map(|s| s.queued.clone())
                .unwrap_or_default();
            if round % 5 == 1 {
                queued.clear();
                for p in &was_owned {
                    if let Ok(depth) = broker.depth(*p).await
                        && depth > 0
                    {
                        queued.push((*p, depth));
                    }
                }
            }
            *report.lock().expect("status lock") = Some(crate::status::ClusterStatus {
                role: ROLE.to_owned(),
                node: node.clone(),
                members: members.clone(),
                owned: was_owned.iter().copied().collect(),
                standby: wanted.difference(&was_owned).copied().collect(),
                queued,
            });
            if leaving {
                for task in yielding {
                    let _ = task.await;
                }
                let _ = membership.leave().await;
                broker.close().await;
                info!(node, "left the cluster");
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopped.changed() => {}
            }
        }
    });
    Ok(WorkerHandle {
        stop,
        task,
        consumed,
    })
}

/// Exits the process when a turn has been in flight longer than `limit`: the runtime is hung
/// (a deadlocked store call, a model stream that never ends past its own timeouts), and only
/// a restart frees its partitions for a standby that answers them.
fn watchdog(oldest: &Oldest, limit: Duration) {
    if limit.is_zero() {
        return;
    }
    let stuck = oldest
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, since)| since.elapsed() > limit)
        .map(|(p, since)| (*p, since.elapsed()))
        .next();
    if let Some((partition, age)) = stuck {
        metrics::counter!("whisper_cluster_watchdog_exits_total").increment(1);
        error!(
            partition,
            ?age,
            ?limit,
            "a turn has been in flight longer than cluster.watchdog: this worker is hung; exiting so a standby takes its partitions"
        );
        std::process::exit(70);
    }
}

/// A delivery whose turn is running, and where its reply goes.
struct Held {
    delivery: Delivery,
    reply_to: String,
    character: String,
    channel: Option<u64>,
    guild: Option<u64>,
    started: Instant,
    /// The worker's turn slot, given back when the turn is settled.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// One partition's consumer.
struct Partition {
    broker: Arc<Broker>,
    runtime: Runtime,
    partition: u32,
    handoff: Duration,
    oldest: Oldest,
    /// Shared by the worker's partitions: a turn holds a permit until it is settled.
    turns: Arc<tokio::sync::Semaphore>,
}

impl Partition {
    /// Routes the partition's deliveries into the runtime, publishes the replies, acks each
    /// once its reply is final; on yield, finishes what is in flight and closes.
    async fn serve(self, prefetch: u16, node: String, mut yielded: watch::Receiver<bool>) {
        let partition = self.partition;
        let mut consumer = match self.broker.consume(partition, prefetch, &node).await {
            Ok(c) => c,
            Err(e) => {
                warn!(partition, error = %e, "cannot consume a partition; retried at the next placement");
                return;
            }
        };
        let (sink, mut events) = PartitionSink::start();
        // (user, message id) -> its deliveries in arrival order (a message published twice is
        // answered twice, in order).
        let mut pending: HashMap<(String, u64), VecDeque<Held>> = HashMap::new();
        // A `/forget` waits for the user's turns before it; no delivery is taken meanwhile, so
        // nothing the user sent after it runs first.
        let mut parked: Option<(ForgetRequest, Delivery)> = None;
        let mut deadline: Option<Instant> = None;
        // A message taken from the broker while every turn slot of the worker is busy: no
        // other is taken until it has a slot.
        let mut waiting: Option<(Inbound, Delivery)> = None;
        loop {
            self.note_oldest(&pending);
            if let Some((forget, _)) = &parked
                && !pending.keys().any(|(user, _)| user == &forget.user)
            {
                let (forget, delivery) = parked.take().expect("checked");
                self.forget(forget, delivery).await;
                continue;
            }
            if let Some(at) = deadline
                && ((pending.is_empty() && parked.is_none()) || Instant::now() >= at)
            {
                if !pending.is_empty() {
                    warn!(
                        partition,
                        left = pending.len(),
                        "hand-over timed out; unacked messages go back to the queue"
                    );
                }
                self.oldest_done();
                consumer.close().await;
                return;
            }
            tokio::select! {
                slot = self.turns.clone().acquire_owned(), if waiting.is_some() && deadline.is_none() => {
                    let (inbound, delivery) = waiting.take().expect("checked");
                    let slot = slot.expect("the semaphore is never closed");
                    self.start_turn(inbound, delivery, slot, &sink, &mut pending).await;
                }
                delivery = consumer.next(), if waiting.is_none() && deadline.is_none() && parked.is_none() => {
                    let Some(delivery) = delivery else {
                        self.oldest_done();
                        return;
                    };
                    match serde_json::from_slice::<Work>(&delivery.payload) {
                        Ok(Work::Message(inbound)) => match self.turns.clone().try_acquire_owned() {
                            Ok(slot) => self.start_turn(inbound, delivery, slot, &sink, &mut pending).await,
                            Err(_) => waiting = Some((inbound, delivery)),
                        },
                        Ok(Work::Forget(forget)) => parked = Some((forget, delivery)),
                        Err(e) => {
                            warn!(partition, error = %e, "an undecodable message; acked and dropped");
                            metrics::counter!("whisper_cluster_undecodable_total").increment(1);
                            let _ = delivery.ack().await;
                        }
                    }
                }
                Some(event) = events.recv() => match event {
                    SinkEvent::Update(update) => {
                        let id = (update.key.user.to_string(), update.message_id);
                        let Some(held) = pending.get(&id).and_then(|q| q.front()) else {
                            continue;
                        };
                        let out = Outbound {
                            message_id: update.message_id,
                            character: held.character.clone(),
                            user: id.0.clone(),
                            channel: held.channel,
                            guild: held.guild,
                            text: update.text.clone(),
                            state: match &update.status {
                                ReplyStatus::Streaming => OutboundState::Streaming,
                                ReplyStatus::Done(_) => OutboundState::Done,
                                ReplyStatus::Failed(kind) => OutboundState::Failed(format!("{kind:?}")),
                            },
                        };
                        let reply_to = held.reply_to.clone();
                        if let Err(e) = self.send(&reply_to, ToGateway::Reply(out)).await {
                            warn!(partition, error = %e, "cannot publish a reply update");
                        }
                    }
                    // The turn is stored: only now is the message acked, so a crash between the
                    // reply and the store redelivers it (and the re-run stores it once).
                    SinkEvent::Settled(settled) => {
                        let id = (settled.key.user.to_string(), settled.message_id);
                        let done = pending.get_mut(&id).and_then(VecDeque::pop_front);
                        if pending.get(&id).is_some_and(VecDeque::is_empty) {
                            pending.remove(&id);
                        }
                        if let Some(held) = done
                            && let Err(e) = held.delivery.ack().await
                        {
                            warn!(partition, error = %e, "cannot ack a delivery; it will be redelivered");
                        }
                    }
                },
                _ = yielded.changed(), if deadline.is_none() => {
                    deadline = Some(Instant::now() + self.handoff);
                }
            }
        }
    }

    async fn start_turn(
        &self,
        inbound: Inbound,
        delivery: Delivery,
        slot: tokio::sync::OwnedSemaphorePermit,
        sink: &actix::Addr<PartitionSink>,
        pending: &mut HashMap<(String, u64), VecDeque<Held>>,
    ) {
        let scope = inbound.scope.parse().unwrap_or(Scope::Direct);
        let guild = match scope {
            Scope::Guild(g) => Some(g),
            _ => None,
        };
        let routed = self.runtime.router.route(UserMessage {
            key: ConversationKey::new(inbound.character.as_str(), inbound.user.as_str()),
            scope,
            channel: inbound.channel,
            display_name: inbound.display_name.clone(),
            text: inbound.text.clone(),
            message_id: inbound.message_id,
            received_at: Instant::now(),
            reply_to: sink.clone().recipient(),
            settled: Some(sink.clone().recipient()),
            images: inbound.images.clone(),
        });
        match routed {
            Ok(()) => {
                pending
                    .entry((inbound.user.clone(), inbound.message_id))
                    .or_default()
                    .push_back(Held {
                        delivery,
                        reply_to: inbound.reply_to,
                        character: inbound.character,
                        channel: inbound.channel,
                        guild,
                        started: Instant::now(),
                        _slot: slot,
                    });
            }
            Err(e) => {
                let failed = Outbound {
                    message_id: inbound.message_id,
                    character: inbound.character,
                    user: inbound.user,
                    channel: inbound.channel,
                    guild,
                    text: "I can't answer that right now.".into(),
                    state: OutboundState::Failed(e.to_string()),
                };
                let _ = self.send(&inbound.reply_to, ToGateway::Reply(failed)).await;
                let _ = delivery.ack().await;
            }
        }
    }

    /// Runs a parked `/forget` (the user's earlier turns are done), answers the gateway, acks.
    async fn forget(&self, forget: ForgetRequest, delivery: Delivery) {
        let outcome = self
            .runtime
            .control
            .forget(&forget.user, forget.scope)
            .await
            .map(|report| report.to_string())
            .map_err(|e| format!("{e:#}"));
        if let Err(e) = &outcome {
            warn!(partition = self.partition, error = %e, "forget failed");
        }
        let answer = ToGateway::Forgotten(ForgetAnswer {
            request: forget.request,
            outcome,
        });
        if let Err(e) = self.send(&forget.reply_to, answer).await {
            warn!(partition = self.partition, error = %e, "cannot answer a forget request");
        }
        if let Err(e) = delivery.ack().await {
            // Redelivered and run again: forgetting twice deletes nothing more.
            warn!(partition = self.partition, error = %e, "cannot ack a forget request");
        }
    }

    async fn send(&self, queue: &str, message: ToGateway) -> Result<(), BrokerError> {
        self.broker
            .publish_to(queue, &serde_json::to_vec(&message).expect("serialises"))
            .await
    }

    fn note_oldest(&self, pending: &HashMap<(String, u64), VecDeque<Held>>) {
        let oldest = pending.values().flatten().map(|h| h.started).min();
        let mut map = self.oldest.lock().unwrap_or_else(|e| e.into_inner());
        match oldest {
            Some(at) => map.insert(self.partition, at),
            None => map.remove(&self.partition),
        };
    }

    fn oldest_done(&self) {
        self.oldest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.partition);
    }
}

/// What a partition hears from the runtime about its messages, in the order the conversation
/// actors sent it (one mailbox for both: a turn's final reply comes before its settlement).
enum SinkEvent {
    Update(ReplyUpdate),
    Settled(TurnSettled),
}

/// Forwards a partition's reply updates and settlements into its consumer task.
struct PartitionSink {
    tx: tokio::sync::mpsc::UnboundedSender<SinkEvent>,
}

impl PartitionSink {
    fn start() -> (
        Addr<PartitionSink>,
        tokio::sync::mpsc::UnboundedReceiver<SinkEvent>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (PartitionSink { tx }.start(), rx)
    }

    fn forward(&mut self, event: SinkEvent, ctx: &mut Context<Self>) {
        if self.tx.send(event).is_err() {
            // The partition's consumer is gone.
            ctx.stop();
        }
    }
}

impl Actor for PartitionSink {
    type Context = Context<Self>;
}

impl Handler<ReplyUpdate> for PartitionSink {
    type Result = ();

    fn handle(&mut self, msg: ReplyUpdate, ctx: &mut Self::Context) {
        self.forward(SinkEvent::Update(msg), ctx);
    }
}

impl Handler<TurnSettled> for PartitionSink {
    type Result = ();

    fn handle(&mut self, msg: TurnSettled, ctx: &mut Self::Context) {
        self.forward(SinkEvent::Settled(msg), ctx);
    }
}
