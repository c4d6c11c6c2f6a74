//! The gateway role's side of the broker: a user's message goes into its partition (publisher
//! confirmed, persistent) instead of the local runtime, and the replies come back on this
//! gateway's own queue, to the DiscordActor of their character, which owns the channel's write
//! budget, coalescing and 429 handling. `/forget` goes into the user's partition too, so it
//! runs after the messages the user sent before it.
//!
//! A lost broker connection is replaced: a publish waits for the broker (up to
//! [`PUBLISH_PATIENCE`]) rather than failing the user's message at the first error, and the
//! reply consumer subscribes again on the new connection (the reply queue is durable, so
//! replies published meanwhile wait for it).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::Addr;
use tokio::sync::oneshot;
use tracing::{info, warn};
use whisper_actors::ConversationKey;
use whisper_actors::messages::{FailureKind, ReplyStatus, ReplyUpdate, Timings, UserMessage};

use super::broker::{BrokerError, Link, PartitionConsumer};
use super::partition::partition_of;
use super::wire::{ForgetRequest, Inbound, Outbound, OutboundState, ToGateway, Work};
use crate::app::ForgetScope;
use crate::config::ClusterSection;
use crate::transport::discord::outbound::{Deliver, DiscordActor};
use crate::transport::discord::shards::ShardPlan;

/// How long a publish keeps trying through a lost broker connection before the message fails.
pub const PUBLISH_PATIENCE: Duration = Duration::from_secs(30);
/// How long `/forget` waits for the worker's report (the user's queued turns run first).
pub const FORGET_PATIENCE: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error("cannot hand the request to the broker: {0}")]
    Broker(#[from] BrokerError),
    #[error("the worker could not forget: {0}")]
    Failed(String),
    #[error(
        "no worker answered within {0:?}; the request stays queued and runs when one takes the partition"
    )]
    Timeout(Duration),
}

type Waiting = std::sync::Mutex<HashMap<u64, oneshot::Sender<Result<String, String>>>>;

pub struct Gateway {
    link: Link,
    partitions: u32,
    prefix: String,
    node: String,
    prefetch: u16,
    /// `/forget` requests waiting for their report, by request id.
    forgets: Waiting,
    next_request: AtomicU64,
}

impl Gateway {
    /// Connects and declares the partition queues.
    pub async fn start(
        cluster: &ClusterSection,
        prefix: &str,
        node: &str,
    ) -> Result<Arc<Self>, BrokerError> {
        let link = Link::for_cluster(cluster, prefix).await?;
        Ok(Arc::new(Self {
            link,
            partitions: cluster.partitions,
            prefix: prefix.to_owned(),
            node: node.to_owned(),
            prefetch: cluster.prefetch,
            forgets: Default::default(),
            // Ids from an earlier run of this gateway never match a new request.
            next_request: AtomicU64::new(whisper_actors::clock::unix_ms().max(0) as u64 * 1_000),
        }))
    }

    /// The queue where the replies of `character`'s bot on Discord shard `shard` go. Named by
    /// shard, not by process: a gateway that restarts (or another that takes the shard over)
    /// finds the replies published meanwhile waiting in it.
    pub fn reply_queue(&self, character: &str, shard: u32) -> String {
        format!("{}.replies.{character}.{shard}", self.prefix)
    }

    async fn publish_work(&self, user: &str, work: &Work) -> Result<(), BrokerError> {
        let payload = serde_json::to_vec(work).expect("serialises");
        let partition = partition_of(user, self.partitions);
        self.link
            .with_retry(PUBLISH_PATIENCE, |broker| {
                let payload = &payload;
                async move { broker.publish(partition, payload).await }
            })
            .await
    }

    /// Publishes `msg` into its user's partition, its replies to come back on `shard`'s queue;
    /// Ok once the broker has it on disk. The Discord handler calls this in the user's order
    /// (see `transport::discord::arrivals`), and the partition keeps it.
    pub async fn publish(&self, msg: &UserMessage, shard: u32) -> Result<(), BrokerError> {
        let inbound = Inbound {
            character: msg.key.character.to_string(),
            user: msg.key.user.to_string(),
            scope: msg.scope.to_string(),
            channel: msg.channel,
            display_name: msg.display_name.clone(),
            text: msg.text.clone(),
            message_id: msg.message_id,
            reply_to: self.reply_queue(&msg.key.character, shard),
            images: msg.images.clone(),
        };
        let user = inbound.user.clone();
        self.publish_work(&user, &Work::Message(inbound)).await
    }

    /// "Forget me" through the user's partition: it runs on the worker after the messages the
    /// user sent before it (the command handler calls this in the user's order); returns the
    /// worker's report, which comes back on `reply_to` (a reply queue this gateway consumes).
    pub async fn forget(
        &self,
        user: &str,
        scope: ForgetScope,
        reply_to: String,
    ) -> Result<String, ForgetError> {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.forgets).insert(request, tx);
        let work = Work::Forget(ForgetRequest {
            user: user.to_owned(),
            scope,
            request,
            reply_to,
        });
        if let Err(e) = self.publish_work(user, &work).await {
            lock(&self.forgets).remove(&request);
            return Err(e.into());
        }
        let answer = tokio::time::timeout(FORGET_PATIENCE, rx).await;
        lock(&self.forgets).remove(&request);
        match answer {
            Ok(Ok(Ok(report))) => Ok(report),
            Ok(Ok(Err(failure))) => Err(ForgetError::Failed(failure)),
            _ => Err(ForgetError::Timeout(FORGET_PATIENCE)),
        }
    }

    /// Delivers what comes back on the reply queues of each bot's shards: replies to the bot's
    /// DiscordActor, forget reports to their waiting command. Runs for the life of the process,
    /// subscribing again whenever the broker connection is replaced. Must run inside the actix
    /// System.
    pub async fn deliver_replies(
        self: Arc<Self>,
        bots: Vec<(String, Addr<DiscordActor>, ShardPlan)>,
    ) -> Result<(), BrokerError> {
        for (character, sink, plan) in bots {
            for shard in plan.shards() {
                let queue = self.reply_queue(&character, shard);
                // The first subscription fails loudly (a misconfigured broker stops the start).
                let broker = self.link.connected().await?;
                broker.declare_queue(&queue).await?;
                let first = broker
                    .consume_queue(&queue, self.prefetch, &self.consumer_tag(&queue))
                    .await?;
                actix::spawn(self.clone().serve_queue(queue, first, sink.clone()));
            }
        }
        Ok(())
    }

    async fn serve_queue(
        self: Arc<Self>,
        queue: String,
        first: PartitionConsumer,
        sink: Addr<DiscordActor>,
    ) {
        let mut inbox = Some(first);
        loop {
            if let Some(mut consumer) = inbox.take() {
                while let Some(delivery) = consumer.next().await {
                    match serde_json::from_slice::<ToGateway>(&delivery.payload) {
                        Ok(ToGateway::Reply(out)) => sink.do_send(deliver(out)),
                        Ok(ToGateway::Forgotten(answer)) => {
                            if let Some(tx) = lock(&self.forgets).remove(&answer.request) {
                                let _ = tx.send(answer.outcome);
                            }
                        }
                        Err(e) => warn!(error = %e, "an undecodable reply; dropped"),
                    }
                    let _ = delivery.ack().await;
                }
                warn!(queue, "a reply queue's consumer ended; subscribing again");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            let broker = match self.link.connected().await {
                Ok(broker) => broker,
                Err(e) => {
                    warn!(error = %e, "the broker is unreachable; retrying");
                    continue;
                }
            };
            let subscribed = match broker.declare_queue(&queue).await {
                Ok(()) => {
                    broker
                        .consume_queue(&queue, self.prefetch, &self.consumer_tag(&queue))
                        .await
                }
                Err(e) => Err(e),
            };
            match subscribed {
                Ok(consumer) => {
                    info!(queue, "reply queue subscribed again");
                    inbox = Some(consumer);
                }
                Err(e) => warn!(queue, error = %e, "cannot subscribe to a reply queue yet"),
            }
        }
    }

    fn consumer_tag(&self, queue: &str) -> String {
        format!("{queue}@{}", self.node)
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn deliver(out: Outbound) -> Deliver {
    let status = match &out.state {
        OutboundState::Streaming => ReplyStatus::Streaming,
        OutboundState::Done => ReplyStatus::Done(Timings::default()),
        OutboundState::Failed(kind) => ReplyStatus::Failed(match kind.as_str() {
            "LlmTimeout" => FailureKind::LlmTimeout,
            "LlmOverloaded" => FailureKind::LlmOverloaded,
            "Crashed" => FailureKind::Crashed,
            "Escalated" => FailureKind::Escalated,
            "RateLimited" => FailureKind::RateLimited,
            _ => FailureKind::LlmFailed,
        }),
    };
    Deliver {
        channel: out.channel,
        guild: out.guild,
        update: ReplyUpdate {
            message_id: out.message_id,
            key: ConversationKey::new(out.character.as_str(), out.user.as_str()),
            text: out.text,
            status,
        },
    }
}
