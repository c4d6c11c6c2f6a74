//! Cluster mode across real processes: the `whisperengine` binary as a gateway, workers and a
//! jobs member, on the real RabbitMQ, PostgreSQL 18 + pgvector, Redis and a Bolt server, with
//! Discord emulated on loopback (the gateway's serenity client talks to it over sockets).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use whisperengine::cluster::broker::Broker;

use crate::stores::RedisPrefix;
use crate::support::arcadedb::ArcadeDb;
use crate::support::cluster::{BROKER, Processes, member_env};
use crate::support::discord::{Call, DiscordEmulator, Incoming};
use crate::support::openai_server::ScriptedLlm;
use crate::support::pgvector::PgVector;

const BIN: &str = env!("CARGO_BIN_EXE_whisperengine");
const PARTITIONS: u32 = 16;

/// The servers a cluster runs on, and its processes.
struct Cluster {
    llm: ScriptedLlm,
    emu: DiscordEmulator,
    /// The bot's user id.
    aria: u64,
    postgres: PgVector,
    _graph: ArcadeDb,
    _redis: RedisPrefix,
    prefix: String,
    procs: Processes,
}

impl Cluster {
    async fn start() -> Cluster {
        let llm = ScriptedLlm::start().await;
        let emu = DiscordEmulator::start().await;
        let postgres = PgVector::start().await;
        let graph = ArcadeDb::start().await;
        let redis = RedisPrefix::new();
        let aria = emu.add_bot("token-aria", "aria");
        let prefix = redis.0.clone();
        let mut env = member_env(
            &llm.base_url(),
            &postgres.url("whisper"),
            &graph,
            &prefix,
            PARTITIONS,
        );
        for (k, v) in [
            ("WHISPER__DISCORD__TOKENS__ARIA", "token-aria".to_owned()),
            ("WHISPER__DISCORD__API_URL", emu.url()),
            ("WHISPER__DISCORD__RATELIMITER", "false".to_owned()),
        ] {
            env.push((k.to_owned(), v));
        }
        Cluster {
            llm,
            emu,
            aria,
            postgres,
            _graph: graph,
            _redis: redis,
            prefix,
            procs: Processes::new(BIN, env),
        }
    }

    fn spawn(&mut self, role: &str, node: &str) {
        self.procs.spawn(role, node, &[]);
    }

    fn signal(&self, node: &str, signal: libc::c_int) {
        self.procs.signal(node, signal);
    }

    fn log(&self, node: &str) -> String {
        self.procs.log(node)
    }

    async fn settled(&self, nodes: &[&str]) -> HashMap<String, BTreeSet<u32>> {
        self.procs.settled(nodes, PARTITIONS).await
    }

    /// Waits until the gateway's bot is connected.
    async fn gateway_ready(&self) {
        for _ in 0..2400 {
            if self.emu.connected() >= 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the gateway never connected: {}", self.log("gw1"));
    }

    /// Stops the members and deletes the deployment's queues.
    async fn cleanup(mut self) {
        self.procs.stop_all().await;
        let broker = Broker::connect(BROKER, Duration::from_secs(10), &self.prefix)
            .await
            .unwrap();
        broker.delete_partitions(PARTITIONS).await.unwrap();
        let _ = broker
            .delete_queue(&format!("{}.replies.aria.0", self.prefix))
            .await;
        broker.close().await;
    }
}

/// A user's message in a DM channel of their own.
fn dm(user: u64, text: String) -> Incoming {
    Incoming {
        author: user,
        author_name: format!("user{user}"),
        channel: 900_000 + user,
        content: text,
        ..Default::default()
    }
}

/// For each message: the Discord messages created in reply to it (a send answered with an
/// existing message for its nonce counts as the same one), and the text the reply shows now.
fn replies(calls: &[Call]) -> HashMap<u64, (BTreeSet<u64>, String)> {
    let mut by_message: HashMap<u64, u64> = HashMap::new();
    let mut out: HashMap<u64, (BTreeSet<u64>, String)> = HashMap::new();
    for call in calls.iter().filter(|c| c.status == 200) {
        match call.kind {
            "send" => {
                let (Some(to), Some(id)) = (call.reply_to, call.message) else {
                    continue;
                };
                by_message.insert(id, to);
                let entry = out.entry(to).or_default();
                entry.0.insert(id);
                if !call.nonce_reused {
                    entry.1 = call.content.clone().unwrap_or_default();
                }
            }
            "edit" => {
                if let Some(to) = call.message.and_then(|m| by_message.get(&m)) {
                    out.get_mut(to).unwrap().1 = call.content.clone().unwrap_or_default();
                }
            }
            _ => {}
        }
    }
    out
}

/// Waits until every message in `expected` (message id -> reply text) shows its reply.
async fn all_answered(cluster: &Cluster, expected: &HashMap<u64, String>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = replies(&cluster.emu.calls());
        let missing = expected
            .iter()
            .filter(|(id, text)| now.get(id).is_none_or(|(_, shown)| shown != *text))
            .count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} messages unanswered: {:?}\n{}",
            expected.len(),
            expected
                .iter()
                .filter(|(id, text)| now.get(id).is_none_or(|(_, shown)| shown != *text))
                .map(|(id, text)| (id, text, now.get(id).map(|(_, shown)| shown)))
                .take(5)
                .collect::<Vec<_>>(),
            cluster.procs.warnings()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts `per_user` messages for each user, all at once (serenity runs each event's handler in
/// a task of its own: the gateway must put each user's messages back in Discord's order);
/// returns message id -> expected reply, and each user's texts in order.
async fn post_round(
    cluster: &Cluster,
    users: &[u64],
    round: &str,
    per_user: usize,
) -> (HashMap<u64, String>, HashMap<u64, Vec<String>>) {
    let mut expected = HashMap::new();
    let mut texts: HashMap<u64, Vec<String>> = HashMap::new();
    for k in 0..per_user {
        for &user in users {
            let text = format!("{round} u{user} m{k}");
            let id = cluster.emu.post(dm(user, text.clone()));
            expected.insert(id, format!("echo: {text}"));
            texts.entry(user).or_default().push(text);
        }
    }
    (expected, texts)
}

/// Each user's turns in the history, in the order they were stored.
async fn history(cluster: &Cluster) -> HashMap<u64, Vec<String>> {
    let (client, conn) =
        tokio_postgres::connect(&cluster.postgres.url("whisper"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query("SELECT user_id, user_message FROM turns ORDER BY id", &[])
        .await
        .unwrap();
    let mut out: HashMap<u64, Vec<String>> = HashMap::new();
    for row in rows {
        let user: String = row.get(0);
        let user: u64 = user.trim_start_matches("discord:").parse().unwrap();
        out.entry(user).or_default().push(row.get(1));
    }
    out
}

/// One reply per message (nonce: a re-run after a crash writes into the same Discord
/// message), showing its own turn's text.
fn each_once(cluster: &Cluster, expected: &HashMap<u64, String>) {
    let now = replies(&cluster.emu.calls());
    for (id, text) in expected {
        let (messages, shown) = &now[id];
        assert_eq!(messages.len(), 1, "message {id}: {messages:?}");
        assert_eq!(shown, text);
    }
}

/// The headline scenario of cluster mode, on real processes: a gateway, three workers and a
/// jobs member answer 100 users × 10 messages through Discord while one worker is SIGKILLed
/// mid-stream (every message answered exactly once, per-user order kept, each turn stored
/// once); a fourth worker joins and takes only its rendezvous share (nothing moves between the
/// others); a worker leaving on SIGTERM hands its partitions over with no message run twice;
/// two users on two workers writing in one channel stay within the channel's write budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_processes_survives_a_kill_a_join_and_a_leave() {
    let mut cluster = Cluster::start().await;
    cluster.llm.set_echo_delay(Duration::from_millis(10));
    cluster.spawn("worker", "w1");
    cluster.spawn("worker", "w2");
    cluster.spawn("worker", "w3");
    cluster.spawn("jobs", "jobs1");
    cluster.settled(&["w1", "w2", "w3"]).await;
    cluster.spawn("gateway", "gw1");
    cluster.gateway_ready().await;

    // 100 users × 10 messages; w2 is killed mid-stream.
    let users: Vec<u64> = (0..100).map(|u| 7_000 + u).collect();
    let (expected, texts) = post_round(&cluster, &users, "a", 10).await;
    let started = Instant::now();
    loop {
        let answered = replies(&cluster.emu.calls())
            .iter()
            .filter(|(id, (_, shown))| expected.get(id) == Some(shown))
            .count();
        if answered >= 300 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {answered} answered; gateway:\n{}\nw1:\n{}",
            cluster.log("gw1"),
            cluster.log("w1")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.signal("w2", libc::SIGKILL);
    all_answered(&cluster, &expected, Duration::from_secs(120)).await;
    each_once(&cluster, &expected);
    let stored = history(&cluster).await;
    for user in &users {
        let asked: Vec<String> = cluster
            .llm
            .requests()
            .iter()
            .map(|r| r.last_user_message())
            .filter(|m| m.starts_with(&format!("a u{user} ")))
            .collect();
        assert_eq!(
            stored[user], texts[user],
            "user {user}: each turn once, in order (the model was asked {asked:?})"
        );
    }
    let reused = cluster
        .emu
        .calls()
        .iter()
        .filter(|c| c.nonce_reused)
        .count();
    eprintln!(
        "1,000 messages with a worker killed: {:?}; {reused} re-sent replies deduplicated by nonce",
        started.elapsed()
    );

    // A fourth worker joins: it takes its rendezvous share; nothing moves between the others.
    let before = cluster.settled(&["w1", "w3"]).await;
    cluster.spawn("worker", "w4");
    let after = cluster.settled(&["w1", "w3", "w4"]).await;
    for node in ["w1", "w3"] {
        assert!(
            after[node].is_subset(&before[node]),
            "{node} gained partitions on a join: {before:?} -> {after:?}"
        );
    }
    let members: Vec<String> = ["w1", "w3", "w4"].map(String::from).to_vec();
    let plan = whisperengine::cluster::placement::assign(&members, PARTITIONS, 1);
    for node in &members {
        let planned: BTreeSet<u32> = plan[node].owned.iter().copied().collect();
        assert_eq!(after[node], planned, "{node} owns its rendezvous share");
    }
    let (expected, texts) = post_round(&cluster, &users, "b", 2).await;
    all_answered(&cluster, &expected, Duration::from_secs(60)).await;
    each_once(&cluster, &expected);

    // w1 leaves on SIGTERM while messages are in flight: its turns finish and are acked, the
    // rest moves in order, nothing runs twice.
    let (expected, round_c) = post_round(&cluster, &users, "c", 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.signal("w1", libc::SIGTERM);
    all_answered(&cluster, &expected, Duration::from_secs(60)).await;
    let exit = cluster.procs.exit_of("w1").await;
    assert!(exit.success(), "w1 left cleanly: {}", cluster.log("w1"));
    assert!(cluster.log("w1").contains("left the cluster"));
    each_once(&cluster, &expected);
    let asked: Vec<String> = cluster
        .llm
        .requests()
        .iter()
        .map(|r| r.last_user_message())
        .collect();
    for text in round_c.values().flatten() {
        let runs = asked.iter().filter(|a| *a == text).count();
        assert_eq!(runs, 1, "{text:?} ran {runs} times over a graceful leave");
    }
    let stored = history(&cluster).await;
    for user in &users {
        let all: Vec<String> = texts[user].iter().chain(&round_c[user]).cloned().collect();
        let tail = &stored[user][stored[user].len() - 5..];
        assert_eq!(tail, &all[..], "user {user}: rounds b and c, in order");
    }

    // Two users whose partitions live on different workers, in one guild channel: the gateway
    // that owns the channel spends its write budget for both (at most 5 writes in any 5 s).
    cluster.settled(&["w3", "w4"]).await;
    let owners = whisperengine::cluster::placement::assign(
        &["w3".to_owned(), "w4".to_owned()],
        PARTITIONS,
        1,
    );
    let worker_of = |user: u64| {
        let p =
            whisperengine::cluster::partition::partition_of(&format!("discord:{user}"), PARTITIONS);
        owners
            .iter()
            .find(|(_, share)| share.owned.contains(&p))
            .map(|(node, _)| node.clone())
            .unwrap()
    };
    let a = (8_000..).find(|u| worker_of(*u) == "w3").unwrap();
    let b = (8_000..).find(|u| worker_of(*u) == "w4").unwrap();
    let bot = cluster.emu.calls().len();
    let aria = cluster.aria;
    let channel = 555_000;
    let mut expected = HashMap::new();
    for k in 0..6 {
        for user in [a, b] {
            let text = format!("shared u{user} m{k}");
            let id = cluster.emu.post(Incoming {
                author: user,
                author_name: format!("user{user}"),
                guild: Some(444_000),
                channel,
                content: format!("<@{aria}> {text}"),
                mentions: vec![aria],
                ..Default::default()
            });
            expected.insert(id, format!("echo: {text}"));
        }
    }
    all_answered(&cluster, &expected, Duration::from_secs(90)).await;
    let writes: Vec<Instant> = cluster.emu.calls()[bot..]
        .iter()
        .filter(|c| c.channel == channel && matches!(c.kind, "send" | "edit"))
        .map(|c| c.at)
        .collect();
    for (i, first) in writes.iter().enumerate() {
        let within = writes[i..]
            .iter()
            .take_while(|at| at.duration_since(*first) < Duration::from_secs(5))
            .count();
        assert!(within <= 5, "{within} writes within 5 s in one channel");
    }
    assert!(writes.len() >= 12, "every reply written: {writes:?}");
    cluster.cleanup().await;
}

/// Stops the RabbitMQ application (connections drop, durable queues and persistent messages
/// stay); starts it again when told or when dropped, so a failing test never leaves it down.
struct BrokerDown;

impl BrokerDown {
    fn stop() -> BrokerDown {
        rabbitmqctl("stop_app");
        BrokerDown
    }

    fn start(self) {
        drop(self);
    }
}

impl Drop for BrokerDown {
    fn drop(&mut self) {
        rabbitmqctl("start_app");
    }
}

fn rabbitmqctl(command: &str) {
    let out = std::process::Command::new("rabbitmqctl")
        .arg(command)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// RabbitMQ restarts under a running gateway and worker: both reconnect, the messages users
/// sent while it was down are published once it is back (the gateway keeps trying) and
/// answered once each, and the cluster goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_rides_out_a_broker_restart() {
    let mut cluster = Cluster::start().await;
    cluster.spawn("worker", "w1");
    cluster.settled(&["w1"]).await;
    cluster.spawn("gateway", "gw1");
    cluster.gateway_ready().await;
    let users: Vec<u64> = (0..5).map(|u| 9_100 + u).collect();
    let (before, _) = post_round(&cluster, &users, "before", 1).await;
    all_answered(&cluster, &before, Duration::from_secs(60)).await;

    let down = BrokerDown::stop();
    let (during, texts) = post_round(&cluster, &users, "during", 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    down.start();
    all_answered(&cluster, &during, Duration::from_secs(90)).await;
    each_once(&cluster, &during);
    for node in ["gw1", "w1"] {
        assert!(
            cluster.log(node).contains("reconnected to the broker"),
            "{node} reconnected:\n{}",
            cluster.log(node)
        );
    }
    let stored = history(&cluster).await;
    for user in &users {
        assert_eq!(
            stored[user][1..],
            texts[user][..],
            "user {user}: once, in order"
        );
    }
    let (after, _) = post_round(&cluster, &users, "after", 1).await;
    all_answered(&cluster, &after, Duration::from_secs(60)).await;
    cluster.cleanup().await;
}

/// A worker whose turn hangs past `cluster.watchdog` (the model accepts the request and never
/// answers, and `llm.request_timeout` is far away) exits with code 70; the broker hands the
/// message to the standby, which answers it. (Which of the two takes the message first is the
/// broker's: the owner, or a standby still ahead of it in line just after the start.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_exits_and_its_standby_answers() {
    use whisperengine::cluster::wire::{Inbound, ToGateway, Work};
    let mut cluster = Cluster::start().await;
    cluster
        .llm
        .script([crate::support::openai_server::Behavior::Hang]);
    let hung = [
        ("WHISPER__CLUSTER__WATCHDOG", "3s"),
        ("WHISPER__LLM__REQUEST_TIMEOUT", "10m"),
    ];
    cluster.procs.spawn("worker", "w1", &hung);
    cluster.procs.spawn("worker", "w2", &hung);
    cluster.settled(&["w1", "w2"]).await;
    let plan = whisperengine::cluster::placement::assign(
        &["w1".to_owned(), "w2".to_owned()],
        PARTITIONS,
        1,
    );
    let partition_of =
        |user: &str| whisperengine::cluster::partition::partition_of(user, PARTITIONS);
    let user = (0..)
        .map(|n| format!("discord:{n}"))
        .find(|u| plan["w1"].owned.contains(&partition_of(u)))
        .unwrap();
    let broker = Broker::connect(BROKER, Duration::from_secs(10), &cluster.prefix)
        .await
        .unwrap();
    let replies = format!("{}.replies.watchdog", cluster.prefix);
    broker.declare_queue(&replies).await.unwrap();
    let mut inbox = broker.consume_queue(&replies, 16, "test").await.unwrap();
    let message = Inbound {
        character: "aria".into(),
        user: user.clone(),
        scope: "dm".into(),
        channel: Some(1),
        display_name: "hung".into(),
        text: "are you there?".into(),
        message_id: 77,
        reply_to: replies.clone(),
        images: Vec::new(),
    };
    broker
        .publish(
            partition_of(&user),
            &serde_json::to_vec(&Work::Message(message)).unwrap(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let (hung, exit) = loop {
        if let Some(node) = ["w1", "w2"]
            .into_iter()
            .find(|n| cluster.procs.exited(n).is_some())
        {
            break (node, cluster.procs.exited(node).unwrap());
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no worker exited:\n{}\n{}",
            cluster.log("w1"),
            cluster.log("w2")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(70), "{}", cluster.log(hung));
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(cluster.log(hung).contains("cluster.watchdog"));
    loop {
        let delivery = tokio::time::timeout(Duration::from_secs(30), inbox.next())
            .await
            .expect("the standby answers")
            .unwrap();
        delivery.ack().await.unwrap();
        if let ToGateway::Reply(out) = serde_json::from_slice(&delivery.payload).unwrap()
            && out.is_final()
        {
            assert_eq!(out.text, "echo: are you there?");
            break;
        }
    }
    broker.delete_queue(&replies).await.unwrap();
    broker.close().await;
    cluster.cleanup().await;
}
