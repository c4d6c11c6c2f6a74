//! Cluster mode's building blocks against the real servers on this machine: RabbitMQ
//! (127.0.0.1:5672) for the partition queues, Redis for membership.

use std::time::Duration;

use whisperengine::cluster::broker::Broker;
use whisperengine::cluster::membership::Membership;

use crate::stores::RedisPrefix;

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn prefix() -> String {
    format!(
        "test.{}.{}",
        std::process::id(),
        whisper_actors::clock::unix_ms()
    )
}

/// One partition, two consumers: only one gets deliveries (single active consumer); when it
/// yields with messages unacked, the other takes over and sees every message exactly once
/// from the first unacked on, in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_has_one_consumer_and_fails_over_in_order() {
    let prefix = prefix();
    let broker = Broker::connect(BROKER, Duration::from_secs(10), &prefix)
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    broker.declare_partitions(1).await.unwrap();
    let mut first = broker.consume(0, 4, "first").await.unwrap();
    let other = Broker::connect(BROKER, Duration::from_secs(10), &prefix)
        .await
        .unwrap();
    let mut second = other.consume(0, 4, "second").await.unwrap();
    for n in 0..20u32 {
        broker.publish(0, &n.to_le_bytes()).await.unwrap();
    }
    let read = |d: &whisperengine::cluster::broker::Delivery| {
        u32::from_le_bytes(d.payload[..4].try_into().unwrap())
    };
    // The first consumer is the active one: it acks 0..5 and holds more, unacked.
    for expected in 0..5u32 {
        let d = tokio::time::timeout(Duration::from_secs(5), first.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read(&d), expected);
        d.ack().await.unwrap();
    }
    let held = tokio::time::timeout(Duration::from_secs(5), first.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read(&held), 5, "in order");
    // Nothing reached the standby meanwhile.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), second.next())
            .await
            .is_err(),
        "the standby got a delivery while the owner was active"
    );
    first.close().await;
    let mut seen = Vec::new();
    while seen.len() < 15 {
        let d = tokio::time::timeout(Duration::from_secs(5), second.next())
            .await
            .expect("the standby takes over")
            .unwrap();
        seen.push(read(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(
        seen,
        (5..20).collect::<Vec<u32>>(),
        "exactly once, in order"
    );
    broker.delete_partitions(1).await.unwrap();
    broker.close().await;
    other.close().await;
}

/// Members announce themselves with a TTL; a member that leaves is gone at once, one that
/// stops refreshing after its TTL.
#[tokio::test(flavor = "multi_thread")]
async fn membership_follows_who_is_alive() {
    let prefix = RedisPrefix::new();
    let pool = redis_pool().await;
    let ttl = Duration::from_millis(400);
    let a = Membership::new(pool.clone(), &prefix.0, "worker-a", ttl);
    let b = Membership::new(pool.clone(), &prefix.0, "worker-b", ttl);
    let g = Membership::new(pool.clone(), &prefix.0, "gateway-1", ttl);
    a.refresh("worker").await.unwrap();
    b.refresh("worker").await.unwrap();
    g.refresh("gateway").await.unwrap();
    assert_eq!(a.members("worker").await.unwrap(), ["worker-a", "worker-b"]);
    assert_eq!(a.members("gateway").await.unwrap(), ["gateway-1"]);
    b.leave().await.unwrap();
    assert_eq!(a.members("worker").await.unwrap(), ["worker-a"]);
    // worker-a keeps refreshing; gateway-1 stops and expires.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        a.refresh("worker").await.unwrap();
    }
    assert_eq!(a.members("worker").await.unwrap(), ["worker-a"]);
    assert!(a.members("gateway").await.unwrap().is_empty(), "expired");
}

/// Cluster mode with an embedded store refuses to start and names the key.
#[test]
fn cluster_mode_refuses_an_embedded_store() {
    // SAFETY of set_var: nextest runs each test in its own process.
    unsafe { std::env::set_var("WHISPER__CLUSTER__ROLE", "worker") };
    let error = load_from_env().err().expect("refused");
    let text = error.to_string();
    assert!(text.contains("storage.history"), "{text}");
    assert!(text.contains("server store"), "{text}");
}

fn runtime(app: &whisperengine::app::App) -> whisperengine::cluster::worker::Runtime {
    whisperengine::cluster::worker::Runtime {
        router: app.router(),
        control: app.control(),
        max_turns: 64,
    }
}

/// The final reply updates in a gateway's queue message (forget reports are not replies).
fn reply(payload: &[u8]) -> Option<whisperengine::cluster::wire::Outbound> {
    match serde_json::from_slice(payload).unwrap() {
        whisperengine::cluster::wire::ToGateway::Reply(out) => Some(out),
        whisperengine::cluster::wire::ToGateway::Forgotten(_) => None,
    }
}

fn work(m: &whisperengine::cluster::wire::Inbound) -> Vec<u8> {
    serde_json::to_vec(&whisperengine::cluster::wire::Work::Message(m.clone())).unwrap()
}

/// The configuration as loaded from the defaults and `WHISPER__*` variables.
fn load_from_env() -> Result<whisperengine::config::Loaded, whisperengine::config::ConfigError> {
    whisperengine::config::load(&whisperengine::config::Overrides {
        config_file: None,
        data_dir: None,
        ignore_environment: false,
    })
}

async fn redis_pool() -> deadpool_redis::Pool {
    whisperengine::store::redis::jobs::pool("redis://127.0.0.1:6379", 2, Duration::from_secs(5))
        .await
        .expect("Redis on 127.0.0.1:6379")
}

/// Settings on the server stores this machine runs (cluster mode refuses embedded ones), no
/// embeddings and no fact extraction.
fn server_settings(
    dir: &std::path::Path,
    postgres: &crate::support::pgvector::PgVector,
    llm: &crate::support::openai_server::ScriptedLlm,
    redis_prefix: &str,
    graph: &crate::support::arcadedb::ArcadeDb,
) -> whisperengine::config::Settings {
    use whisperengine::config::{HistoryBackend, JobsBackend, MemoryBackend};
    let mut s = crate::support::app::settings(dir, &llm.base_url());
    s.embedding.enabled = false;
    s.facts.extract = false;
    s.storage.history = HistoryBackend::Postgres;
    s.storage.memory = MemoryBackend::Postgres;
    s.storage.postgres_url = postgres.url("whisper").into();
    s.storage.jobs = JobsBackend::Redis;
    s.storage.redis_prefix = redis_prefix.to_owned();
    graph.configure(&mut s);
    s
}

/// A worker app on the server stores this machine runs (cluster mode refuses embedded ones).
async fn worker_app(
    postgres: &crate::support::pgvector::PgVector,
    llm: &crate::support::openai_server::ScriptedLlm,
    redis_prefix: &str,
    graph: &crate::support::arcadedb::ArcadeDb,
) -> (whisperengine::app::App, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = server_settings(dir.path(), postgres, llm, redis_prefix, graph);
    s.cluster.role = whisperengine::config::ClusterRole::Worker;
    let app = crate::support::app::start(s, crate::support::app::extras(vec![])).await;
    (app, dir)
}

/// Workers share the partitions: one worker answers everything; a second one joins and takes
/// its share; the first leaves gracefully and hands its partitions over. Through all of it
/// every message is answered exactly once, each user's replies come in order, and the
/// history holds each turn once.
#[test]
fn workers_share_partitions_and_hand_them_over_in_order() {
    use std::collections::HashMap;
    use whisperengine::cluster::partition::partition_of;
    use whisperengine::cluster::wire::{Inbound, Outbound, OutboundState};
    crate::support::app::run_actix(|| async {
        let llm = crate::support::openai_server::ScriptedLlm::start().await;
        let postgres = crate::support::pgvector::PgVector::start().await;
        let graph = crate::support::arcadedb::ArcadeDb::start().await;
        let redis = RedisPrefix::new();
        let prefix = prefix();
        let pool = redis_pool().await;
        let mut cluster =
            crate::support::app::settings(std::path::Path::new("/tmp"), "http://x").cluster;
        cluster.partitions = 8;
        cluster.standby = 1;
        cluster.handoff_timeout = Duration::from_secs(5);
        let start_worker = |app: &whisperengine::app::App, node: &str| {
            let membership = Membership::new(pool.clone(), &redis.0, node, Duration::from_secs(3));
            whisperengine::cluster::worker::start(
                runtime(app),
                &cluster,
                membership,
                node.to_owned(),
                &prefix,
                app.cluster_status(),
            )
        };
        let (app1, _d1) = worker_app(&postgres, &llm, &redis.0, &graph).await;
        let mut w1 = Some(start_worker(&app1, "w1").await.unwrap());
        let mut second = None;

        let gateway = Broker::connect(BROKER, Duration::from_secs(10), &prefix)
            .await
            .unwrap();
        gateway.declare_partitions(8).await.unwrap();
        let replies = format!("{prefix}.replies.gw1");
        gateway.declare_queue(&replies).await.unwrap();
        let mut inbox = gateway.consume_queue(&replies, 64, "gw1").await.unwrap();
        let users: Vec<String> = (0..20).map(|u| format!("test:cluster{u}")).collect();
        let mut next_id = 0u64;
        let mut finals: HashMap<String, Vec<u64>> = HashMap::new();
        let mut round = |n: usize| {
            let mut out = Vec::new();
            for _ in 0..n {
                for user in &users {
                    next_id += 1;
                    out.push(Inbound {
                        character: "aria".into(),
                        user: user.clone(),
                        scope: "dm".into(),
                        channel: None,
                        display_name: "tester".into(),
                        text: format!("message {next_id}"),
                        message_id: next_id,
                        reply_to: replies.clone(),
                        images: Vec::new(),
                    });
                }
            }
            out
        };
        let mut expected = 0usize;
        for (phase, messages) in [(1, round(3)), (2, round(3)), (3, round(3))] {
            if phase == 2 {
                // A second worker joins and takes its share.
                let (app2, d2) = worker_app(&postgres, &llm, &redis.0, &graph).await;
                let w2 = start_worker(&app2, "w2").await.unwrap();
                tokio::time::sleep(Duration::from_millis(3_500)).await;
                assert!(
                    !w2.consumed.lock().unwrap().is_empty(),
                    "the new worker consumes"
                );
                // Status: both see both, and the partitions are split without overlap.
                let s1 = app1.cluster_status().lock().unwrap().clone().unwrap();
                let s2 = app2.cluster_status().lock().unwrap().clone().unwrap();
                assert_eq!(s1.members, ["w1", "w2"]);
                assert_eq!(s2.members, ["w1", "w2"]);
                let mut owned: Vec<u32> = s1.owned.iter().chain(&s2.owned).copied().collect();
                owned.sort();
                assert_eq!(owned, (0..8).collect::<Vec<u32>>(), "{s1:?} {s2:?}");
                second = Some((app2, d2, w2));
            }
            if phase == 3 {
                // The first worker leaves gracefully: its partitions move, nothing is lost.
                w1.take().unwrap().leave().await;
            }
            let answered_by_first = app1.runtime().status().replies;
            for m in &messages {
                gateway
                    .publish(partition_of(&m.user, 8), &work(m))
                    .await
                    .unwrap();
            }
            expected += messages.len();
            let mut got = finals.values().map(Vec::len).sum::<usize>();
            while got < expected {
                let d = tokio::time::timeout(Duration::from_secs(30), inbox.next())
                    .await
                    .expect("replies within 30 s")
                    .unwrap();
                let out: Outbound = reply(&d.payload).unwrap();
                d.ack().await.unwrap();
                if out.is_final() {
                    assert_eq!(out.state, OutboundState::Done, "{out:?}");
                    finals
                        .entry(out.user.clone())
                        .or_default()
                        .push(out.message_id);
                    got += 1;
                }
            }
            let app2 = second.as_ref().map(|(app, _, _)| app);
            match phase {
                1 => assert_eq!(app1.runtime().status().replies, 60),
                2 => assert!(
                    app2.unwrap().runtime().status().replies > 0,
                    "the joined worker answers its share"
                ),
                _ => assert_eq!(
                    app1.runtime().status().replies,
                    answered_by_first,
                    "nothing reaches the worker that left"
                ),
            }
        }
        for user in &users {
            let ids = &finals[user];
            let mut sorted = ids.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(ids, &sorted, "{user}: in order, each once");
            assert_eq!(ids.len(), 9, "{user}: all answered");
        }
        let (client, conn) =
            tokio_postgres::connect(&postgres.url("whisper"), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        let turns: i64 = client
            .query_one("SELECT count(*) FROM turns", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(turns, 180, "each turn stored once");
        gateway.delete_partitions(8).await.unwrap();
        gateway.delete_queue(&replies).await.unwrap();
        if let Some((app2, _dir, w2)) = second {
            w2.leave().await;
            app2.shutdown().await;
        }
        app1.shutdown().await;
    });
}

/// A gateway (the real serenity client against the Discord emulator) and one worker, in
/// process, on the real broker and server stores.
struct DiscordRig {
    llm: crate::support::openai_server::ScriptedLlm,
    postgres: crate::support::pgvector::PgVector,
    _graph: crate::support::arcadedb::ArcadeDb,
    _redis: RedisPrefix,
    emu: crate::support::discord::DiscordEmulator,
    bot: u64,
    queues: String,
    worker_app: whisperengine::app::App,
    worker: whisperengine::cluster::worker::WorkerHandle,
    gateway_app: whisperengine::app::App,
    bots: whisperengine::transport::discord::DiscordBots,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    shards: u32,
}

impl DiscordRig {
    /// `shards`: the bot's Discord shard count (the gateway runs them all).
    async fn start(shards: u32) -> DiscordRig {
        Self::start_with(
            shards,
            whisperengine::config::AutoCount::Auto,
            shards as usize,
        )
        .await
    }

    /// Discord expects `shards`; the gateway is configured with `configured` and waited for
    /// until `connected` sessions are up.
    async fn start_with(
        shards: u32,
        configured: whisperengine::config::AutoCount,
        connected: usize,
    ) -> DiscordRig {
        use crate::support::discord::DiscordEmulator;
        let llm = crate::support::openai_server::ScriptedLlm::start().await;
        let postgres = crate::support::pgvector::PgVector::start().await;
        let graph = crate::support::arcadedb::ArcadeDb::start().await;
        let redis = RedisPrefix::new();
        let emu = DiscordEmulator::start().await;
        emu.set_shard_total(u64::from(shards));
        let queues = redis.0.clone();

        let (worker_app, worker_dir) = worker_app(&postgres, &llm, &redis.0, &graph).await;
        let mut cluster =
            crate::support::app::settings(std::path::Path::new("/tmp"), "http://x").cluster;
        cluster.partitions = 4;
        let pool = redis_pool().await;
        let worker = whisperengine::cluster::worker::start(
            runtime(&worker_app),
            &cluster,
            Membership::new(pool, &redis.0, "w1", Duration::from_secs(3)),
            "w1".into(),
            &queues,
            worker_app.cluster_status(),
        )
        .await
        .unwrap();

        let gateway_dir = tempfile::tempdir().unwrap();
        let mut s = server_settings(gateway_dir.path(), &postgres, &llm, &redis.0, &graph);
        s.cluster = cluster.clone();
        s.cluster.role = whisperengine::config::ClusterRole::Gateway;
        s.cluster.node_id = "gw1".into();
        s.discord.api_url = emu.url();
        s.discord.ratelimiter = false;
        s.discord.shard_total = configured;
        let bot = emu.add_bot("token-aria", "aria");
        s.discord.tokens.insert("aria".into(), "token-aria".into());
        let gateway_app =
            crate::support::app::start(s.clone(), crate::support::app::extras(vec![])).await;
        let bots = whisperengine::transport::discord::start(&gateway_app, &s)
            .await
            .expect("the gateway's bot starts");
        emu.wait_connected(connected).await;
        DiscordRig {
            llm,
            postgres,
            _graph: graph,
            _redis: redis,
            emu,
            bot,
            queues,
            worker_app,
            worker,
            gateway_app,
            bots,
            _dirs: (worker_dir, gateway_dir),
            shards,
        }
    }

    /// Waits until the reply to `message` in `channel` shows `text`.
    async fn answered(&self, channel: u64, text: &str) {
        for _ in 0..800 {
            if self.emu.calls().iter().any(|c| {
                c.status < 300 && c.content.as_deref() == Some(text) && c.channel == channel
            }) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{text:?} never written: {:#?}", self.emu.calls());
    }

    async fn stop(self) {
        self.bots.shutdown().await;
        self.gateway_app.shutdown().await;
        self.worker.leave().await;
        self.worker_app.shutdown().await;
        let cleanup = Broker::connect(BROKER, Duration::from_secs(10), &self.queues)
            .await
            .unwrap();
        cleanup.delete_partitions(4).await.unwrap();
        for shard in 0..self.shards {
            let _ = cleanup
                .delete_queue(&format!("{}.replies.aria.{shard}", self.queues))
                .await;
        }
        cleanup.close().await;
    }
}

/// The whole path in cluster mode: a Discord message reaches the gateway (the real serenity
/// client against the emulator), goes into its user's partition on RabbitMQ, is answered by a
/// worker, and the reply comes back over the broker to the gateway's DiscordActor, which
/// writes it to the channel.
#[test]
fn a_discord_message_goes_through_the_broker_and_back() {
    use crate::support::discord::Incoming;
    crate::support::app::run_actix(|| async {
        let rig = DiscordRig::start(1).await;
        rig.emu.post(Incoming {
            author: 42,
            author_name: "sam".into(),
            guild: Some(500),
            channel: 600,
            content: format!("<@{}> hi over the broker", rig.bot),
            mentions: vec![rig.bot],
            ..Default::default()
        });
        rig.answered(600, "echo: hi over the broker").await;
        assert_eq!(
            rig.gateway_app.runtime().status().replies,
            0,
            "the gateway answered nothing itself"
        );
        assert_eq!(
            rig.worker_app.runtime().status().replies,
            1,
            "the worker did"
        );
        rig.stop().await;
    });
}

/// `/forget` goes into the user's partition behind the messages they sent before it: it runs
/// once they are answered and stored (so it reports their turns), and leaves no row of the
/// user in any store.
#[test]
fn forget_runs_after_the_users_queued_messages() {
    use crate::support::discord::Incoming;
    crate::support::app::run_actix(|| async {
        let rig = DiscordRig::start(1).await;
        // Slow replies: the messages are still queued when /forget arrives.
        rig.llm.set_echo_delay(Duration::from_millis(40));
        for _ in 0..200 {
            if rig.emu.commands(rig.bot).len() == 6 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let user = 4_343u64;
        for k in 0..5 {
            rig.emu.post(Incoming {
                author: user,
                author_name: "lou".into(),
                channel: 7_000,
                content: format!("queued message {k} about my cat Pixel"),
                ..Default::default()
            });
        }
        rig.emu.slash(rig.bot, user, "forget", &[("scope", "all")]);
        let mut answer = None;
        for _ in 0..1200 {
            answer =
                rig.emu.calls().into_iter().find(|c| {
                    (c.kind == "interaction" || c.kind == "followup") && c.content.is_some()
                });
            if answer.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let answer = answer.expect("the forget command answers").content.unwrap();
        assert!(
            answer.contains("forgotten: 5 conversation turns"),
            "the forget ran after the 5 queued turns: {answer}"
        );
        for k in 0..5 {
            rig.answered(
                7_000,
                &format!("echo: queued message {k} about my cat Pixel"),
            )
            .await;
        }
        crate::support::app::drain(&rig.worker_app).await;
        let (client, conn) =
            tokio_postgres::connect(&rig.postgres.url("whisper"), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        let key = format!("discord:{user}");
        for table in ["turns", "profiles", "memories"] {
            let n: i64 = client
                .query_one(
                    &format!("SELECT count(*) FROM {table} WHERE user_id = $1"),
                    &[&key],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 0, "{table} rows of the forgotten user");
        }
        let facts = rig.worker_app.control().data().facts(&key).await.unwrap();
        assert!(facts.is_empty(), "{facts:?}");
        rig.stop().await;
    });
}

/// Discord sharding: the gateway identifies every shard of the total Discord recommends
/// (`shard_total = "auto"`), a guild's messages arrive on shard `(guild_id >> 22) % total` and
/// DMs on shard 0, and each reply comes back on its shard's queue to the same bot.
#[test]
fn a_sharded_gateway_answers_on_every_shard() {
    use crate::support::discord::Incoming;
    crate::support::app::run_actix(|| async {
        let rig = DiscordRig::start(3).await;
        assert_eq!(rig.emu.shards_of("token-aria"), [(0, 3), (1, 3), (2, 3)]);
        assert_eq!(rig.emu.invalid_shards(), 0);
        // One guild per shard, and a DM.
        for stamp in 0..3u64 {
            let guild = (stamp << 22) | 17;
            rig.emu.post(Incoming {
                author: 50 + stamp,
                author_name: "sam".into(),
                guild: Some(guild),
                channel: 800 + stamp,
                content: format!("<@{}> hello from shard {stamp}", rig.bot),
                mentions: vec![rig.bot],
                ..Default::default()
            });
        }
        rig.emu.post(Incoming {
            author: 60,
            author_name: "dee".into(),
            channel: 900,
            content: "a direct message".into(),
            ..Default::default()
        });
        for stamp in 0..3u64 {
            rig.answered(800 + stamp, &format!("echo: hello from shard {stamp}"))
                .await;
        }
        rig.answered(900, "echo: a direct message").await;
        rig.stop().await;
    });
}

/// The configuration refuses a shard range that does not fit its total, naming the key.
#[test]
fn shard_ranges_are_checked() {
    for (key, value, named) in [
        ("WHISPER__DISCORD__SHARD_TOTAL", "0", "discord.shard_total"),
        ("WHISPER__DISCORD__SHARD_FIRST", "1", "discord.shard_first"),
    ] {
        // SAFETY of set_var: nextest runs each test in its own process.
        unsafe { std::env::set_var(key, value) };
        let error = load_from_env().err().expect("refused");
        assert!(error.to_string().contains(named), "{error}");
        unsafe { std::env::remove_var(key) };
    }
    unsafe {
        std::env::set_var("WHISPER__DISCORD__SHARD_TOTAL", "4");
        std::env::set_var("WHISPER__DISCORD__SHARD_FIRST", "2");
        std::env::set_var("WHISPER__DISCORD__SHARD_LAST", "4");
    }
    let error = load_from_env().err().expect("refused");
    assert!(error.to_string().contains("discord.shard_last"), "{error}");
    unsafe { std::env::set_var("WHISPER__DISCORD__SHARD_LAST", "3") };
    let loaded = load_from_env().expect("a range inside the total loads");
    assert_eq!(
        loaded.settings.discord.shard_total,
        whisperengine::config::AutoCount::Fixed(4)
    );
}

/// At-least-once delivery made exact in the store: a Discord message delivered twice (as after
/// a worker crashed before its ack) is answered again, but its turn is stored once.
#[test]
fn a_redelivered_message_is_stored_once() {
    use whisperengine::cluster::wire::{Inbound, Outbound};
    crate::support::app::run_actix(|| async {
        let llm = crate::support::openai_server::ScriptedLlm::start().await;
        let postgres = crate::support::pgvector::PgVector::start().await;
        let graph = crate::support::arcadedb::ArcadeDb::start().await;
        let redis = RedisPrefix::new();
        let prefix = prefix();
        let (app, _dir) = worker_app(&postgres, &llm, &redis.0, &graph).await;
        let mut cluster =
            crate::support::app::settings(std::path::Path::new("/tmp"), "http://x").cluster;
        cluster.partitions = 2;
        let pool = redis_pool().await;
        let worker = whisperengine::cluster::worker::start(
            runtime(&app),
            &cluster,
            Membership::new(pool, &redis.0, "w1", Duration::from_secs(3)),
            "w1".into(),
            &prefix,
            app.cluster_status(),
        )
        .await
        .unwrap();
        let gateway = Broker::connect(BROKER, Duration::from_secs(10), &prefix)
            .await
            .unwrap();
        let replies = format!("{prefix}.replies.gw");
        gateway.declare_queue(&replies).await.unwrap();
        let mut inbox = gateway.consume_queue(&replies, 16, "gw").await.unwrap();
        let message = Inbound {
            character: "aria".into(),
            user: "discord:4242".into(),
            scope: "guild:9".into(),
            channel: Some(99),
            display_name: "dee".into(),
            text: "remember this once".into(),
            message_id: 1_190_000_000_000_000_777,
            reply_to: replies.clone(),
            images: Vec::new(),
        };
        let partition = whisperengine::cluster::partition::partition_of(&message.user, 2);
        for _ in 0..2 {
            gateway.publish(partition, &work(&message)).await.unwrap();
        }
        let mut finals = 0;
        while finals < 2 {
            let d = tokio::time::timeout(Duration::from_secs(20), inbox.next())
                .await
                .expect("both deliveries answered")
                .unwrap();
            let out: Outbound = reply(&d.payload).unwrap();
            d.ack().await.unwrap();
            finals += usize::from(out.is_final());
        }
        crate::support::app::drain(&app).await;
        let (client, conn) =
            tokio_postgres::connect(&postgres.url("whisper"), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        let turns: i64 = client
            .query_one(
                "SELECT count(*) FROM turns WHERE user_id = 'discord:4242'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(turns, 1, "stored once");
        worker.leave().await;
        gateway.delete_partitions(2).await.unwrap();
        gateway.delete_queue(&replies).await.unwrap();
        app.shutdown().await;
    });
}
