//! `cluster`: cluster mode on real processes (the release `whisperengine` binary as workers)
//! on this machine's RabbitMQ and Redis, PostgreSQL 18 + pgvector and a Bolt server. The
//! benchmark itself plays the gateway: it publishes users' messages into their partitions and
//! reads the replies from its queue, so what is measured is the broker and the workers, not
//! Discord's write budget. The model is the scripted OpenAI-compatible server on loopback,
//! answering at once.
//!
//! - messages per second and p50/p99 reply latency with 1, 2 and 3 workers, 300 users in a
//!   closed loop (each user's next message when its reply arrives), embeddings off and on;
//! - fail-over: with 2 workers under load, one is SIGKILLed: how long the longest message
//!   waited, and when the rate was back;
//! - a third worker joins 2: partitions moved, and whether all of them went to it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use whisperengine::cluster::broker::Broker;
use whisperengine::cluster::partition::partition_of;
use whisperengine::cluster::wire::{Inbound, ToGateway, Work};

use crate::support::arcadedb::ArcadeDb;
use crate::support::cluster::{BROKER, Processes, member_env};
use crate::support::openai_server::ScriptedLlm;
use crate::support::pgvector::PgVector;
use crate::support::servers::RedisPrefix;

const BIN: &str = env!("CARGO_BIN_EXE_whisperengine");
const PARTITIONS: u32 = 256;
const USERS: u64 = 300;

struct Servers {
    llm: ScriptedLlm,
    postgres: PgVector,
    graph: ArcadeDb,
    redis: RedisPrefix,
}

/// The benchmark's gateway side: publishes into partitions, reads replies.
struct Driver {
    broker: Arc<Broker>,
    replies: String,
}

impl Driver {
    async fn connect(prefix: &str) -> Driver {
        let broker = Broker::connect(BROKER, Duration::from_secs(10), prefix)
            .await
            .expect("RabbitMQ on 127.0.0.1:5672");
        broker.declare_partitions(PARTITIONS).await.unwrap();
        let replies = format!("{prefix}.replies.bench.0");
        broker.declare_queue(&replies).await.unwrap();
        Driver {
            broker: Arc::new(broker),
            replies,
        }
    }

    fn send(&self, user: u64, n: u64) {
        let inbound = Inbound {
            character: "aria".into(),
            user: format!("bench:{user}"),
            scope: "dm".into(),
            channel: Some(user),
            display_name: "bench".into(),
            text: format!("message number {n}, how are you today?"),
            message_id: user * 1_000_000 + n,
            reply_to: self.replies.clone(),
            images: Vec::new(),
        };
        let broker = self.broker.clone();
        let partition = partition_of(&inbound.user, PARTITIONS);
        let payload = serde_json::to_vec(&Work::Message(inbound)).unwrap();
        tokio::spawn(async move { broker.publish(partition, &payload).await.unwrap() });
    }

    /// Drives `USERS` users in a closed loop for `run`; returns (finished at, latency) of every
    /// reply, and runs `during` once `at` into the run (if given).
    async fn closed_loop<F: std::future::Future<Output = ()>>(
        &self,
        run: Duration,
        at: Option<Duration>,
        during: F,
    ) -> Vec<(Instant, Duration)> {
        let mut inbox = self
            .broker
            .consume_queue(&self.replies, 2_000, "bench")
            .await
            .unwrap();
        let mut sent: HashMap<u64, (u64, Instant)> = HashMap::new();
        for user in 0..USERS {
            self.send(user, 1);
            sent.insert(user, (1, Instant::now()));
        }
        let start = Instant::now();
        let mut out = Vec::new();
        let mut during = std::pin::pin!(during);
        let mut fired = at.is_none();
        let fire_at = start + at.unwrap_or(run);
        loop {
            let next = tokio::select! {
                d = tokio::time::timeout(Duration::from_secs(30), inbox.next()) => d,
                () = tokio::time::sleep_until(fire_at.into()), if !fired => {
                    fired = true;
                    (&mut during).await;
                    continue;
                }
            };
            let delivery = next
                .expect("a reply within 30 s")
                .expect("reply queue open");
            let reply = match serde_json::from_slice::<ToGateway>(&delivery.payload).unwrap() {
                ToGateway::Reply(out) => out,
                ToGateway::Forgotten(_) => continue,
            };
            let _ = delivery.ack().await;
            if !reply.is_final() {
                continue;
            }
            let user: u64 = reply.user.trim_start_matches("bench:").parse().unwrap();
            let (n, at) = sent[&user];
            if reply.message_id != user * 1_000_000 + n {
                // A re-run after a fail-over answering an earlier message again.
                continue;
            }
            let now = Instant::now();
            out.push((now, now - at));
            if now - start >= run {
                inbox.close().await;
                return out;
            }
            self.send(user, n + 1);
            sent.insert(user, (n + 1, Instant::now()));
        }
    }

    async fn close(self) {
        self.broker.delete_partitions(PARTITIONS).await.unwrap();
        let _ = self.broker.delete_queue(&self.replies).await;
        self.broker.close().await;
    }
}

fn stats(replies: &[(Instant, Duration)], from: Instant, to: Instant) -> (f64, f64, f64) {
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for (at, latency) in replies {
        if *at >= from && *at < to {
            hist.record(latency.as_micros() as u64).unwrap();
        }
    }
    (
        hist.len() as f64 / (to - from).as_secs_f64(),
        hist.value_at_quantile(0.5) as f64 / 1e3,
        hist.value_at_quantile(0.99) as f64 / 1e3,
    )
}

fn workers(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("w{i}")).collect()
}

async fn start_workers(servers: &Servers, prefix: &str, n: usize, embeddings: bool) -> Processes {
    let env = member_env(
        &servers.llm.base_url(),
        &servers.postgres.url("whisper"),
        &servers.graph,
        prefix,
        PARTITIONS,
    );
    let mut procs = Processes::new(BIN, env);
    let enabled = if embeddings { "true" } else { "false" };
    for node in workers(n) {
        procs.spawn(
            "worker",
            &node,
            &[
                ("WHISPER__EMBEDDING__ENABLED", enabled),
                ("RUST_LOG", "warn"),
            ],
        );
    }
    let names = workers(n);
    let nodes: Vec<&str> = names.iter().map(String::as_str).collect();
    procs.settled(&nodes, PARTITIONS).await;
    procs
}

pub fn run() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let servers = Servers {
            llm: ScriptedLlm::start().await,
            postgres: PgVector::start().await,
            graph: ArcadeDb::start().await,
            redis: RedisPrefix::new(),
        };
        println!(
            "cluster: {USERS} users in a closed loop, {PARTITIONS} partitions, instant model over HTTP"
        );
        println!("| workers | embeddings | messages/s | p50 ms | p99 ms |");
        println!("|---|---|---|---|---|");
        let mut run = 0;
        for embeddings in [false, true] {
            for n in 1..=3 {
                run += 1;
                let prefix = format!("{}:{run}", servers.redis.0);
                let mut procs = start_workers(&servers, &prefix, n, embeddings).await;
                let driver = Driver::connect(&prefix).await;
                let warm = Duration::from_secs(3);
                let replies = driver
                    .closed_loop(warm + Duration::from_secs(10), None, async {})
                    .await;
                let from = replies[0].0 + warm;
                let to = replies.last().unwrap().0;
                let (rate, p50, p99) = stats(&replies, from, to);
                println!(
                    "| {n} | {} | {rate:.0} | {p50:.1} | {p99:.1} |",
                    if embeddings { "on" } else { "off" }
                );
                procs.stop_all().await;
                driver.close().await;
            }
        }

        // Fail-over: 2 workers, one SIGKILLed 4 s into the run.
        run += 1;
        let prefix = format!("{}:{run}", servers.redis.0);
        let procs = start_workers(&servers, &prefix, 2, false).await;
        let driver = Driver::connect(&prefix).await;
        let killed_at = std::cell::Cell::new(None);
        let replies = driver
            .closed_loop(Duration::from_secs(10), Some(Duration::from_secs(4)), async {
                procs.signal("w2", libc::SIGKILL);
                killed_at.set(Some(Instant::now()));
            })
            .await;
        let killed = killed_at.get().expect("killed");
        let (before, _, _) = stats(&replies, killed - Duration::from_secs(2), killed);
        let longest = replies
            .iter()
            .filter(|(at, _)| *at >= killed)
            .map(|(_, latency)| *latency)
            .max()
            .unwrap_or_default();
        // When the rate came back to half of what it was, in 100 ms windows.
        let mut back = None;
        let mut t = killed;
        while t < replies.last().unwrap().0 {
            let (rate, _, _) = stats(&replies, t, t + Duration::from_millis(100));
            if rate >= before / 2.0 {
                back = Some(t - killed);
                break;
            }
            t += Duration::from_millis(100);
        }
        println!(
            "fail-over (2 workers, one SIGKILLed): longest wait of a message {:.0} ms; rate back to half of {before:.0}/s after {}",
            longest.as_secs_f64() * 1e3,
            back.map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
        );
        drop(procs);
        driver.close().await;

        // A third worker joins two.
        run += 1;
        let prefix = format!("{}:{run}", servers.redis.0);
        let mut procs = start_workers(&servers, &prefix, 2, false).await;
        let before = procs.settled(&["w1", "w2"], PARTITIONS).await;
        let joined = Instant::now();
        procs.spawn("worker", "w3", &[("RUST_LOG", "warn")]);
        let after = procs.settled(&["w1", "w2", "w3"], PARTITIONS).await;
        let settled = joined.elapsed();
        let moved: usize = ["w1", "w2"]
            .iter()
            .map(|n| before[*n].difference(&after[*n]).count())
            .sum();
        let between_old = ["w1", "w2"]
            .iter()
            .map(|n| after[*n].difference(&before[*n]).count())
            .sum::<usize>();
        println!(
            "join (2 -> 3 workers): {moved} of {PARTITIONS} partitions moved ({:.0}%; rendezvous ideal {:.0}%), {} to the new worker, {between_old} between the others; settled in {:.1} s (process start included)",
            moved as f64 * 100.0 / f64::from(PARTITIONS),
            100.0 / 3.0,
            after["w3"].len(),
            settled.as_secs_f64()
        );
        procs.stop_all().await;
        let cleanup = Driver::connect(&prefix).await;
        cleanup.close().await;
    });
}
