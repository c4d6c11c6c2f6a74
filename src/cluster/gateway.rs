//! The gateway role's side of the broker: a user's message goes into its partition (publisher
//! confirmed, persistent) instead of the local runtime, and the replies come back on this
//! gateway's own queue, to the DiscordActor of their character, which owns the channel's write
//! budget, coalescing and 429 handling.

use std::collections::HashMap;
use std::sync::Arc;

use actix::Recipient;
use tracing::warn;
use whisper_actors::ConversationKey;
use whisper_actors::messages::{FailureKind, ReplyStatus, ReplyUpdate, Timings, UserMessage};

use super::broker::{Broker, BrokerError};
use super::partition::partition_of;
use super::wire::{Inbound, Outbound, OutboundState};
use crate::config::ClusterSection;

pub struct Gateway {
    broker: Broker,
    partitions: u32,
    reply_queue: String,
    prefix: String,
    node: String,
    prefetch: u16,
}

impl Gateway {
    /// Connects, declares the partition queues and this gateway's reply queue.
    pub async fn start(
        cluster: &ClusterSection,
        prefix: &str,
        node: &str,
    ) -> Result<Arc<Self>, BrokerError> {
        let broker =
            Broker::connect(cluster.broker_url.expose(), cluster.heartbeat, prefix).await?;
        broker.declare_partitions(cluster.partitions).await?;
        let reply_queue = format!("{prefix}.replies.{node}");
        broker.declare_queue(&reply_queue).await?;
        Ok(Arc::new(Self {
            broker,
            partitions: cluster.partitions,
            reply_queue,
            prefix: prefix.to_owned(),
            node: node.to_owned(),
            prefetch: cluster.prefetch,
        }))
    }

    /// Publishes `msg` into its user's partition; Ok once the broker has it on disk.
    pub async fn publish(&self, msg: &UserMessage) -> Result<(), BrokerError> {
        let inbound = Inbound {
            character: msg.key.character.to_string(),
            user: msg.key.user.to_string(),
            scope: msg.scope.to_string(),
            channel: msg.channel,
            display_name: msg.display_name.clone(),
            text: msg.text.clone(),
            message_id: msg.message_id,
            reply_to: self.reply_queue.clone(),
        };
        let payload = serde_json::to_vec(&inbound).expect("serialises");
        self.broker
            .publish(partition_of(&inbound.user, self.partitions), &payload)
            .await
    }

    /// Delivers the replies on this gateway's queue to each character's sink, for as long as
    /// the connection lives. Must run inside the actix System.
    pub async fn deliver_replies(
        self: Arc<Self>,
        sinks: HashMap<String, Recipient<ReplyUpdate>>,
    ) -> Result<(), BrokerError> {
        let mut inbox = self
            .broker
            .consume_queue(
                &self.reply_queue,
                self.prefetch,
                &format!("{}.{}", self.prefix, self.node),
            )
            .await?;
        actix::spawn(async move {
            while let Some(delivery) = inbox.next().await {
                match serde_json::from_slice::<Outbound>(&delivery.payload) {
                    Ok(out) => match sinks.get(&out.character) {
                        Some(sink) => sink.do_send(update(out)),
                        None => {
                            warn!(character = %out.character, "a reply for a character this gateway does not serve")
                        }
                    },
                    Err(e) => warn!(error = %e, "an undecodable reply; dropped"),
                }
                let _ = delivery.ack().await;
            }
            warn!("the reply queue's consumer ended");
        });
        Ok(())
    }
}

fn update(out: Outbound) -> ReplyUpdate {
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
    ReplyUpdate {
        message_id: out.message_id,
        key: ConversationKey::new(out.character.as_str(), out.user.as_str()),
        text: out.text,
        status,
    }
}
