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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};
use whisper_actors::messages::{ReplyStatus, UserMessage};
use whisper_actors::sink::ChannelSink;
use whisper_actors::{ConversationKey, ShardRouter};

use super::broker::{Broker, BrokerError, Delivery};
use super::membership::Membership;
use super::placement::assign;
use super::wire::{Inbound, Outbound, OutboundState};
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

/// Starts the worker loop. Must run inside the actix System (replies come through an actor).
pub async fn start(
    router: ShardRouter,
    cluster: &ClusterSection,
    membership: Membership,
    node: String,
    prefix: &str,
    report: crate::status::ClusterSlot,
) -> Result<WorkerHandle, BrokerError> {
    let broker =
        Arc::new(Broker::connect(cluster.broker_url.expose(), cluster.heartbeat, prefix).await?);
    broker.declare_partitions(cluster.partitions).await?;
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
        loop {
            round += 1;
            if let Err(e) = membership.refresh(ROLE).await {
                warn!(error = %e, "cannot refresh cluster membership");
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
            for p in &new {
                let (yield_tx, yield_rx) = watch::channel(false);
                let task = actix::spawn(serve_partition(
                    broker.clone(),
                    router.clone(),
                    *p,
                    settings.clone(),
                    node.clone(),
                    yield_rx,
                ));
                running.insert(*p, (yield_tx, task));
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

/// One partition: route its deliveries into the runtime, publish the replies, ack each once
/// its reply is final; on yield, finish what is in flight and close.
async fn serve_partition(
    broker: Arc<Broker>,
    router: ShardRouter,
    partition: u32,
    settings: ClusterSection,
    node: String,
    mut yielded: watch::Receiver<bool>,
) {
    let mut consumer = match broker.consume(partition, settings.prefetch, &node).await {
        Ok(c) => c,
        Err(e) => {
            warn!(partition, error = %e, "cannot consume a partition; retried at the next placement");
            return;
        }
    };
    let (sink, mut updates) = ChannelSink::start();
    // (user, message id) -> its deliveries in arrival order (a message published twice is
    // answered twice, in order) and where their replies go.
    type Held = std::collections::VecDeque<(Delivery, String, String)>;
    let mut pending: HashMap<(String, u64), Held> = HashMap::new();
    let mut deadline: Option<Instant> = None;
    loop {
        if let Some(at) = deadline
            && (pending.is_empty() || Instant::now() >= at)
        {
            if !pending.is_empty() {
                warn!(
                    partition,
                    left = pending.len(),
                    "hand-over timed out; unacked messages go back to the queue"
                );
            }
            consumer.close().await;
            return;
        }
        tokio::select! {
            delivery = consumer.next(), if deadline.is_none() => {
                let Some(delivery) = delivery else { return };
                let inbound: Inbound = match serde_json::from_slice(&delivery.payload) {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(partition, error = %e, "an undecodable message; acked and dropped");
                        let _ = delivery.ack().await;
                        continue;
                    }
                };
                let routed = router.route(UserMessage {
                    key: ConversationKey::new(inbound.character.as_str(), inbound.user.as_str()),
                    scope: inbound.scope.parse().unwrap_or(whisper_actors::Scope::Direct),
                    channel: inbound.channel,
                    display_name: inbound.display_name.clone(),
                    text: inbound.text.clone(),
                    message_id: inbound.message_id,
                    received_at: Instant::now(),
                    reply_to: sink.clone(),
                });
                match routed {
                    Ok(()) => {
                        pending
                            .entry((inbound.user.clone(), inbound.message_id))
                            .or_default()
                            .push_back((delivery, inbound.reply_to, inbound.character));
                    }
                    Err(e) => {
                        let failed = Outbound {
                            message_id: inbound.message_id,
                            character: inbound.character,
                            user: inbound.user,
                            text: "I can't answer that right now.".into(),
                            state: OutboundState::Failed(e.to_string()),
                        };
                        let _ = broker
                            .publish_to(&inbound.reply_to, &serde_json::to_vec(&failed).expect("serialises"))
                            .await;
                        let _ = delivery.ack().await;
                    }
                }
            }
            Some(update) = updates.recv() => {
                let id = (update.key.user.to_string(), update.message_id);
                let Some((_, reply_to, character)) = pending.get(&id).and_then(|q| q.front())
                else {
                    continue;
                };
                let out = Outbound {
                    message_id: update.message_id,
                    character: character.clone(),
                    user: id.0.clone(),
                    text: update.text.clone(),
                    state: match &update.status {
                        ReplyStatus::Streaming => OutboundState::Streaming,
                        ReplyStatus::Done(_) => OutboundState::Done,
                        ReplyStatus::Failed(kind) => OutboundState::Failed(format!("{kind:?}")),
                    },
                };
                if let Err(e) = broker
                    .publish_to(reply_to, &serde_json::to_vec(&out).expect("serialises"))
                    .await
                {
                    warn!(partition, error = %e, "cannot publish a reply update");
                }
                if out.is_final() {
                    let done = pending.get_mut(&id).and_then(|q| q.pop_front());
                    if pending.get(&id).is_some_and(|q| q.is_empty()) {
                        pending.remove(&id);
                    }
                    if let Some((delivery, _, _)) = done
                        && let Err(e) = delivery.ack().await
                    {
                        warn!(partition, error = %e, "cannot ack a delivery; it will be redelivered");
                    }
                }
            }
            _ = yielded.changed(), if deadline.is_none() => {
                deadline = Some(Instant::now() + settings.handoff_timeout);
            }
        }
    }
}
