//! The broker (RabbitMQ over AMQP 0.9.1, lapin): one classic durable queue per partition with
//! `x-single-active-consumer`, persistent messages, publisher confirms.
//!
//! Classic, not quorum, queues: on RabbitMQ 3.10 a quorum queue hands messages returned by a
//! departing consumer back after newer ones (rabbitmq-server #10499), which would reorder a
//! user's messages on every hand-over; a classic queue puts them back in place. Single active
//! consumer gives exclusivity without a lock service: every worker that ranks for a partition
//! consumes it, the broker delivers to one, and fails over to the next the moment its channel
//! goes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};

use super::partition::queue_name;
use crate::store::server::redact;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reach the broker at {url}: {source}")]
    Connect { url: String, source: lapin::Error },
    #[error("broker {operation} failed: {source}")]
    Amqp {
        operation: &'static str,
        source: lapin::Error,
    },
    #[error("the broker refused a message for partition {0} (negative publisher confirm)")]
    Nacked(u32),
}

fn amqp(operation: &'static str) -> impl Fn(lapin::Error) -> BrokerError {
    move |source| BrokerError::Amqp { operation, source }
}

/// A connection, a confirming publish channel, and the queue names of one deployment.
pub struct Broker {
    connection: Connection,
    publish: Channel,
    prefix: String,
}

/// One partition's deliveries on a channel of its own (its prefetch and its fate are the
/// partition's: closing it returns exactly this partition's unacked messages).
pub struct PartitionConsumer {
    pub partition: u32,
    channel: Channel,
    consumer: Consumer,
}

/// A message of a partition, to be acked (singly) once its turn is stored.
pub struct Delivery {
    pub payload: Vec<u8>,
    pub redelivered: bool,
    acker: lapin::Acker,
}

impl Delivery {
    pub async fn ack(&self) -> Result<(), BrokerError> {
        // Never `multiple`: an ack must not cover a later message still in flight.
        self.acker
            .ack(BasicAckOptions { multiple: false })
            .await
            .map(|_| ())
            .map_err(amqp("ack"))
    }
}

/// A partition queue's arguments: classic, one active consumer at a time.
fn partition_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    args
}

fn with_heartbeat(url: &str, heartbeat: Duration) -> String {
    let secs = heartbeat.as_secs().max(1);
    if url.contains("heartbeat=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&heartbeat={secs}")
    } else {
        format!("{url}?heartbeat={secs}")
    }
}

impl Broker {
    /// Connects with `heartbeat` (a hung peer is noticed after about two of them).
    pub async fn connect(
        url: &str,
        heartbeat: Duration,
        prefix: &str,
    ) -> Result<Self, BrokerError> {
        let connection = Connection::connect(
            &with_heartbeat(url, heartbeat),
            ConnectionProperties::default(),
        )
        .await
        .map_err(|source| BrokerError::Connect {
            url: redact(url),
            source,
        })?;
        let publish = connection
            .create_channel()
            .await
            .map_err(amqp("open a channel"))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp("enable publisher confirms"))?;
        Ok(Self {
            connection,
            publish,
            prefix: prefix.to_owned(),
        })
    }

    fn queue(&self, partition: u32) -> String {
        queue_name(&self.prefix, partition)
    }

    /// Declares the partition queues (idempotent: every process does it at start).
    pub async fn declare_partitions(&self, partitions: u32) -> Result<(), BrokerError> {
        let args = partition_args();
        for p in 0..partitions {
            self.publish
                .queue_declare(
                    self.queue(p).as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    args.clone(),
                )
                .await
                .map_err(amqp("declare a partition queue"))?;
        }
        Ok(())
    }

    /// Publishes `payload` to `partition` persistently and waits for the broker's confirm: when
    /// this returns Ok, the message survives a broker restart.
    pub async fn publish(&self, partition: u32, payload: &[u8]) -> Result<(), BrokerError> {
        let confirm = self
            .publish
            .basic_publish(
                "".into(),
                self.queue(partition).as_str().into(),
                BasicPublishOptions::default(),
                payload,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .map_err(amqp("publish"))?
            .await
            .map_err(amqp("publish"))?;
        if confirm.is_ack() {
            Ok(())
        } else {
            Err(BrokerError::Nacked(partition))
        }
    }

    /// Consumes `partition` on a channel of its own with `prefetch` unacked messages at most.
    pub async fn consume(
        &self,
        partition: u32,
        prefetch: u16,
        tag: &str,
    ) -> Result<PartitionConsumer, BrokerError> {
        let mut consumer = self
            .consume_queue(
                &self.queue(partition),
                prefetch,
                &format!("{tag}.p{partition}"),
            )
            .await?;
        consumer.partition = partition;
        Ok(consumer)
    }

    /// Declares a gateway's reply queue (durable: replies published while it restarts wait).
    pub async fn declare_queue(&self, name: &str) -> Result<(), BrokerError> {
        self.publish
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp("declare a queue"))?;
        Ok(())
    }

    /// Publishes to a named queue (a gateway's replies), persistently, confirmed.
    pub async fn publish_to(&self, queue: &str, payload: &[u8]) -> Result<(), BrokerError> {
        let confirm = self
            .publish
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                payload,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .map_err(amqp("publish"))?
            .await
            .map_err(amqp("publish"))?;
        if confirm.is_ack() {
            Ok(())
        } else {
            Err(BrokerError::Nacked(u32::MAX))
        }
    }

    /// Consumes a named queue (a partition's, or a gateway's replies) on a channel of its own.
    pub async fn consume_queue(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<PartitionConsumer, BrokerError> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(amqp("open a channel"))?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(amqp("set the prefetch"))?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp("consume"))?;
        Ok(PartitionConsumer {
            partition: u32::MAX,
            channel,
            consumer,
        })
    }

    /// Deletes a named queue (tests and teardown only).
    pub async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        self.publish
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await
            .map_err(amqp("delete a queue"))?;
        Ok(())
    }

    /// Messages waiting (ready, not delivered) in a partition's queue.
    pub async fn depth(&self, partition: u32) -> Result<u32, BrokerError> {
        let args = partition_args();
        let queue = self
            .publish
            .queue_declare(
                self.queue(partition).as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
            .map_err(amqp("read a queue's depth"))?;
        Ok(queue.message_count())
    }

    /// Deletes the partition queues (tests and teardown only).
    pub async fn delete_partitions(&self, partitions: u32) -> Result<(), BrokerError> {
        for p in 0..partitions {
            self.publish
                .queue_delete(self.queue(p).as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(amqp("delete a partition queue"))?;
        }
        Ok(())
    }

    pub async fn close(&self) {
        let _ = self.connection.close(200, "bye".into()).await;
    }

    /// False once the connection is lost (broker restarted, network cut, missed heartbeats).
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }
}

/// A broker connection that is replaced when it is lost: the gateway's publishes and the
/// worker's placement rounds take the current one and reconnect through it. A new connection
/// declares the partition queues again (a restarted broker keeps durable queues, but a new
/// deployment may not have them yet).
pub struct Link {
    url: String,
    heartbeat: Duration,
    prefix: String,
    partitions: u32,
    current: tokio::sync::Mutex<Arc<Broker>>,
}

impl Link {
    pub async fn connect(
        url: &str,
        heartbeat: Duration,
        prefix: &str,
        partitions: u32,
    ) -> Result<Self, BrokerError> {
        let broker = Broker::connect(url, heartbeat, prefix).await?;
        broker.declare_partitions(partitions).await?;
        Ok(Self {
            url: url.to_owned(),
            heartbeat,
            prefix: prefix.to_owned(),
            partitions,
            current: tokio::sync::Mutex::new(Arc::new(broker)),
        })
    }

    /// The link of a cluster member: `cluster.broker_url`, `heartbeat` and `partitions`.
    pub async fn for_cluster(
        cluster: &crate::config::ClusterSection,
        prefix: &str,
    ) -> Result<Self, BrokerError> {
        Self::connect(
            cluster.broker_url.expose(),
            cluster.heartbeat,
            prefix,
            cluster.partitions,
        )
        .await
    }

    /// The connection in use, as it is (possibly lost: see [`Link::connected`]).
    pub async fn current(&self) -> Arc<Broker> {
        self.current.lock().await.clone()
    }

    /// A live connection: the current one, or a new one if it is lost. One caller reconnects
    /// while the others wait for it.
    pub async fn connected(&self) -> Result<Arc<Broker>, BrokerError> {
        let mut current = self.current.lock().await;
        if current.is_connected() {
            return Ok(current.clone());
        }
        let broker = Broker::connect(&self.url, self.heartbeat, &self.prefix).await?;
        broker.declare_partitions(self.partitions).await?;
        metrics::counter!("whisper_cluster_broker_reconnects_total").increment(1);
        tracing::info!(
            url = %redact(&self.url),
            "reconnected to the broker"
        );
        *current = Arc::new(broker);
        Ok(current.clone())
    }

    /// Runs `op` on a live connection; if it fails because the connection was lost, reconnects
    /// and tries again until `patience` has passed (a broker restart takes seconds).
    pub async fn with_retry<T, F, Fut>(&self, patience: Duration, op: F) -> Result<T, BrokerError>
    where
        F: Fn(Arc<Broker>) -> Fut,
        Fut: std::future::Future<Output = Result<T, BrokerError>>,
    {
        let deadline = tokio::time::Instant::now() + patience;
        let mut pause = Duration::from_millis(100);
        loop {
            let attempt = match self.connected().await {
                Ok(broker) => {
                    let result = op(broker.clone()).await;
                    match result {
                        Err(e) if !broker.is_connected() => Err(e),
                        other => return other,
                    }
                }
                Err(e) => Err(e),
            };
            if tokio::time::Instant::now() + pause > deadline {
                return attempt;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

impl PartitionConsumer {
    /// The next delivery; `None` when the consumer or its channel is gone.
    pub async fn next(&mut self) -> Option<Delivery> {
        match self.consumer.next().await? {
            Ok(d) => Some(Delivery {
                payload: d.data,
                redelivered: d.redelivered,
                acker: d.acker,
            }),
            Err(_) => None,
        }
    }

    /// Yields the partition: closes the channel without `basic.cancel`, so its unacked
    /// messages go back into the queue in place, for the next consumer, in order.
    pub async fn close(self) {
        let _ = self.channel.close(200, "hand-over".into()).await;
    }
}
