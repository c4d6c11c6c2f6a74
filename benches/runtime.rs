//! Runtime benchmarks (`./bot.sh bench`). Each scenario runs in its own process so peak RSS is
//! its own.
//!
//! - `overhead`: one message at a time, from `route()` to the final update, with an instant
//!   in-process model (the runtime's own cost: routing, shard, conversation, parallel context
//!   from SQLite, prompt, LLM admission, relay, persistence) and again through HTTP against an
//!   instant OpenAI-compatible server on loopback.
//! - `load`: 10,000 users send 5 messages each, all at once: messages per second and peak RSS.
//! - `idle`: 100,000 conversation actors left idle: resident memory.
//! - `reshard`: 1,000 users in a closed loop while the ring goes from 2 to 4 shards: messages
//!   per second and p99 reply latency before, during and after, and conversations moved.
//! - `cluster`: cluster mode on real worker processes and RabbitMQ (see `cluster.rs`).

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "scenarios/cluster.rs"]
mod cluster;
#[path = "scenarios/footprint.rs"]
mod footprint;
#[path = "scenarios/load_embedded.rs"]
mod load_embedded;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use async_trait::async_trait;
use futures::StreamExt;
use hdrhistogram::Histogram;
use whisper_actors::ports::{ChatModel, ChatRequest, Embedder, LlmError, ModelDelta, TokenStream};
use whisper_actors::sink::ChannelSink;
use whisper_actors::{ConversationKey, Scope, UserMessage};
use whisperengine::app::{App, Extras};

use support::app::{run_actix, settings, start};
use support::openai_server::ScriptedLlm;

/// Answers at once with a fixed short reply: no model time at all.
struct InstantModel;

#[async_trait]
impl ChatModel for InstantModel {
    async fn stream(&self, _: ChatRequest) -> Result<TokenStream, LlmError> {
        let tokens = ["Hello", " there", ", friend", "!"].map(|t| Ok(ModelDelta::from(t)));
        Ok(futures::stream::iter(tokens).boxed())
    }
}

fn instant() -> Extras {
    Extras {
        providers: vec![],
        model: Some(Arc::new(InstantModel)),
        tools: Vec::new(),
        clock: None,
    }
}

fn proc_status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn message(
    key: &ConversationKey,
    id: u64,
    sink: &actix::Recipient<whisper_actors::ReplyUpdate>,
) -> UserMessage {
    UserMessage {
        key: key.clone(),
        scope: Scope::Console,
        channel: None,
        display_name: key.user.to_string(),
        text: format!("message number {id}, how are you today?"),
        message_id: id,
        received_at: Instant::now(),
        reply_to: sink.clone(),
        settled: None,
        images: Vec::new(),
    }
}

/// Sequential round trips over `users` users; returns the latency histogram in microseconds.
async fn round_trips(app: &App, users: usize, messages: usize) -> Histogram<u64> {
    let (sink, mut updates) = ChannelSink::start();
    let keys: Vec<ConversationKey> = (0..users)
        .map(|u| ConversationKey::new("aria", format!("bench:{u}")))
        .collect();
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for i in 0..messages {
        let key = &keys[i % users];
        let started = Instant::now();
        app.router().route(message(key, i as u64, &sink)).unwrap();
        loop {
            let update = updates.recv().await.unwrap();
            if update.is_final() {
                assert!(
                    matches!(update.status, whisper_actors::ReplyStatus::Done(_)),
                    "{update:?}"
                );
                break;
            }
        }
        hist.record(started.elapsed().as_micros() as u64).unwrap();
    }
    hist
}

fn report(label: &str, hist: &Histogram<u64>) {
    println!(
        "{label}: n={} p50={:.3} ms p90={:.3} ms p99={:.3} ms max={:.3} ms",
        hist.len(),
        hist.value_at_quantile(0.50) as f64 / 1e3,
        hist.value_at_quantile(0.90) as f64 / 1e3,
        hist.value_at_quantile(0.99) as f64 / 1e3,
        hist.max() as f64 / 1e3
    );
}

fn overhead() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let llm = ScriptedLlm::start().await;
        let mut s = settings(dir.path(), &llm.base_url());
        s.logging.level = "warn".into();
        // The runtime alone: no local embedding inference and no background extraction.
        s.embedding.enabled = false;
        s.facts.extract = false;
        let app = start(s.clone(), instant()).await;
        round_trips(&app, 100, 1_000).await; // warm-up: actors started, SQLite cache warm
        let hist = round_trips(&app, 100, 10_000).await;
        report("overhead, instant in-process model (runtime only)", &hist);
        app.shutdown().await;

        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.facts.extract = false;
        let app = start(s, instant()).await;
        round_trips(&app, 100, 300).await;
        let hist = round_trips(&app, 100, 2_000).await;
        report(
            "overhead with the full embedded pipeline (embedding, classifier, memory, facts)",
            &hist,
        );
        app.shutdown().await;

        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.embedding.enabled = false;
        s.facts.extract = false;
        let app = start(s, Extras::default()).await;
        round_trips(&app, 100, 500).await;
        let hist = round_trips(&app, 100, 5_000).await;
        report(
            "overhead, instant OpenAI-compatible server over HTTP",
            &hist,
        );
        app.shutdown().await;
    });
}

fn load() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), "http://127.0.0.1:9/v1");
        // The runtime itself: no local inference or background extraction per message.
        s.embedding.enabled = false;
        s.facts.extract = false;
        s.pools.llm_concurrency = whisperengine::config::AutoCount::Fixed(64);
        s.pools.llm_queue = 20_000;
        s.runtime.max_conversations_per_shard = 20_000;
        let app = start(s, instant()).await;
        let (sink, mut updates) = ChannelSink::start();
        let users = 10_000usize;
        let per_user = 5u64;
        let keys: Vec<ConversationKey> = (0..users)
            .map(|u| ConversationKey::new("aria", format!("load:{u}")))
            .collect();
        let started = Instant::now();
        // Every user's first message at once; each next one when its reply arrives, as people
        // in a chat do.
        for key in &keys {
            app.router().route(message(key, 1, &sink)).unwrap();
        }
        let mut next: HashMap<ConversationKey, u64> = HashMap::new();
        let mut done = 0u64;
        let total = users as u64 * per_user;
        while done < total {
            let update = updates.recv().await.unwrap();
            if !update.is_final() {
                continue;
            }
            assert!(
                matches!(update.status, whisper_actors::ReplyStatus::Done(_)),
                "{update:?}"
            );
            done += 1;
            let sent = next.entry(update.key.clone()).or_insert(1);
            if *sent < per_user {
                *sent += 1;
                app.router()
                    .route(message(&update.key, *sent, &sink))
                    .unwrap();
            }
        }
        let elapsed = started.elapsed();
        println!(
            "load: {users} users x {per_user} messages = {total} replies in {:.2} s: {:.0} messages/s, peak RSS {:.1} MB",
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64(),
            mb(proc_status_kb("VmHWM:"))
        );
        app.shutdown().await;
    });
}

fn idle() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), "http://127.0.0.1:9/v1");
        // The runtime itself: no local inference or background extraction per message.
        s.embedding.enabled = false;
        s.facts.extract = false;
        s.pools.llm_concurrency = whisperengine::config::AutoCount::Fixed(64);
        s.pools.llm_queue = 200_000;
        s.runtime.max_conversations_per_shard = 100_000;
        s.runtime.idle_timeout = Duration::from_secs(3600);
        let app = start(s, instant()).await;
        let before = proc_status_kb("VmRSS:");
        let (sink, mut updates) = ChannelSink::start();
        let n: u64 = std::env::var("WHISPER_BENCH_IDLE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        // Conversations are created the way users arrive: a bounded number in flight at once,
        // so what is measured is the resident cost of idle actors, not a burst's peak.
        let window: u64 = std::env::var("WHISPER_BENCH_WINDOW")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000);
        let mut sent = 0u64;
        let mut done = 0u64;
        while done < n {
            while sent < n && sent - done < window {
                let key = ConversationKey::new("aria", format!("idle:{sent}"));
                app.router().route(message(&key, sent, &sink)).unwrap();
                sent += 1;
            }
            if updates.recv().await.unwrap().is_final() {
                done += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let live = app.runtime().status().live_conversations();
        let after = proc_status_kb("VmRSS:");
        println!(
            "idle: {live} live conversation actors: RSS {:.1} MB (runtime before them {:.1} MB, {:.2} KB per conversation incl. its warm history)",
            mb(after),
            mb(before),
            (after.saturating_sub(before)) as f64 / live as f64
        );
        app.shutdown().await;
    });
}

/// Embedding plus classification of single short messages, through the actors.
fn classifier() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), "http://127.0.0.1:9/v1");
        let embedder = whisperengine::embed::LocalEmbedder::start(&s.embedding, 1).unwrap();
        let intents = whisperengine::classifier::load(
            &s.classifier.intents,
            &dir.path().join("cache"),
            &embedder,
        )
        .await
        .unwrap();
        let classifier = whisper_actors::classifier::ClassifierActor::new(intents).start();
        let messages = [
            "hey there!",
            "thanks a lot",
            "what did I tell you about my sister?",
            "how's your day going?",
            "can you help me plan a trip to Rome next spring?",
        ];
        let mut embed_hist = Histogram::<u64>::new(3).unwrap();
        let mut total_hist = Histogram::<u64>::new(3).unwrap();
        for i in 0..1_000 {
            let text = messages[i % messages.len()].to_owned();
            let started = Instant::now();
            let vector = embedder
                .embed(vec![text.clone()])
                .await
                .unwrap()
                .pop()
                .unwrap();
            embed_hist
                .record(started.elapsed().as_micros() as u64)
                .unwrap();
            let _ = classifier
                .send(whisper_actors::classifier::Classify { text, vector })
                .await
                .unwrap();
            total_hist
                .record(started.elapsed().as_micros() as u64)
                .unwrap();
        }
        report("classifier: embedding alone", &embed_hist);
        report(
            "classifier: embedding + classification (the fast-track decision)",
            &total_hist,
        );
    });
}

/// 100,000 memories across 1,000 users; search latency within one user's partition.
fn search() {
    use whisper_actors::memory::{
        AllowedScopes, MemoryChunk, MemoryKind, MemoryQuery, MemoryStore,
    };
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let db = whisperengine::store::sqlite::prepare(dir.path()).unwrap();
        let store = whisperengine::store::sqlite::memory::SqliteMemory::start(db, 2, 1_000);
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut vector = || -> whisper_actors::ports::Embedding {
            (0..384)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed as f64 / u64::MAX as f64) as f32 - 0.5
                })
                .collect()
        };
        let users = 1_000;
        let per_user = 100;
        let started = Instant::now();
        for u in 0..users {
            let key = ConversationKey::new("aria", format!("mem:{u}"));
            let chunks = (0..per_user)
                .map(|i| MemoryChunk {
                    key: key.clone(),
                    scope: Scope::Direct,
                    kind: MemoryKind::Message,
                    group: format!("{u}:{i}"),
                    chunk: 0,
                    text: format!("memory {i} of user {u}"),
                    importance: 0.5,
                    created_at_ms: 0,
                    vector: vector(),
                })
                .collect();
            store.add(chunks).await.unwrap();
        }
        println!(
            "memory: stored {} memories for {users} users in {:.1} s",
            users * per_user,
            started.elapsed().as_secs_f64()
        );
        for (label, rounds) in [
            ("first search per user (partition loaded from SQLite)", 1),
            ("cached partition", 10),
        ] {
            let mut hist = Histogram::<u64>::new(3).unwrap();
            for round in 0..rounds {
                for u in 0..users {
                    let query = MemoryQuery {
                        text: String::new(),
                        key: ConversationKey::new("aria", format!("mem:{u}")),
                        scopes: AllowedScopes::for_scope(&Scope::Direct, true),
                        vector: vector(),
                        limit: 20,
                    };
                    let t = Instant::now();
                    let hits = store.search(query).await.unwrap();
                    hist.record(t.elapsed().as_micros() as u64).unwrap();
                    assert_eq!(hits.len(), 20, "round {round}");
                }
            }
            report(
                &format!("memory search, 100 memories/user, 100k total: {label}"),
                &hist,
            );
        }
    });
}

/// Context assembly for full-path messages with every provider (history, profile, classifier,
/// memory) against real SQLite and real embeddings.
fn context() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), "http://127.0.0.1:9/v1");
        s.logging.level = "warn".into();
        let app = start(s, instant()).await;
        let (sink, mut updates) = ChannelSink::start();
        let key = ConversationKey::new("aria", "bench:context");
        let mut hist = Histogram::<u64>::new(3).unwrap();
        for i in 0..300u64 {
            let mut msg = message(&key, i, &sink);
            msg.text = format!("tell me something about topic number {i} and what I said before");
            app.router().route(msg).unwrap();
            loop {
                let update = updates.recv().await.unwrap();
                if let whisper_actors::ReplyStatus::Done(t) = &update.status {
                    if i >= 20 {
                        hist.record(t.context.as_micros() as u64).unwrap();
                    }
                    break;
                }
            }
        }
        report(
            "context assembly, all providers, memories accumulating",
            &hist,
        );
        app.shutdown().await;
    });
}

/// Closed-loop load (each user's next message when its reply arrives) while the runtime
/// re-shards 2 → 4: throughput and p99 in the second before, the second from the resize on,
/// and the second after it settled.
fn reshard() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), "http://127.0.0.1:9/v1");
        s.embedding.enabled = false;
        s.facts.extract = false;
        s.runtime.shards = 2;
        s.pools.llm_concurrency = whisperengine::config::AutoCount::Fixed(64);
        s.pools.llm_queue = 20_000;
        s.runtime.max_conversations_per_shard = 20_000;
        let app = start(s, instant()).await;
        let (sink, mut updates) = ChannelSink::start();
        let users = 1_000usize;
        let keys: Vec<ConversationKey> = (0..users)
            .map(|u| ConversationKey::new("aria", format!("reshard:{u}")))
            .collect();
        let mut sent_at: HashMap<ConversationKey, (u64, Instant)> = HashMap::new();
        for key in &keys {
            app.router().route(message(key, 1, &sink)).unwrap();
            sent_at.insert(key.clone(), (1, Instant::now()));
        }
        let warmup = Duration::from_secs(2);
        let phase = Duration::from_secs(1);
        let settled: std::cell::Cell<Option<Instant>> = std::cell::Cell::new(None);
        let resizing = async {
            tokio::time::sleep(warmup + phase).await;
            let at = Instant::now();
            let report = app.runtime().resize_shards(4).await;
            app.runtime().resize_settled().await;
            settled.set(Some(Instant::now()));
            (report, at)
        };
        let driving = async {
            // (finished at, latency) of every reply.
            let mut replies: Vec<(Instant, Duration)> = Vec::new();
            loop {
                let update = updates.recv().await.unwrap();
                if !update.is_final() {
                    continue;
                }
                assert!(
                    matches!(update.status, whisper_actors::ReplyStatus::Done(_)),
                    "{update:?}"
                );
                let now = Instant::now();
                let (n, at) = sent_at[&update.key];
                replies.push((now, now - at));
                if settled.get().is_some_and(|s| now - s >= phase) {
                    return replies;
                }
                app.router()
                    .route(message(&update.key, n + 1, &sink))
                    .unwrap();
                sent_at.insert(update.key.clone(), (n + 1, Instant::now()));
            }
        };
        let ((report, resized_at), replies) = futures::future::join(resizing, driving).await;
        let settled_at = settled.get().unwrap();
        let window = |from: Instant, to: Instant| {
            let mut hist = Histogram::<u64>::new(3).unwrap();
            for (at, latency) in &replies {
                if *at >= from && *at < to {
                    hist.record(latency.as_micros() as u64).unwrap();
                }
            }
            let secs = (to - from).as_secs_f64();
            (
                hist.len() as f64 / secs,
                hist.value_at_quantile(0.99) as f64 / 1e3,
                secs,
            )
        };
        for (label, (rate, p99, secs)) in [
            ("before (2 shards)", window(resized_at - phase, resized_at)),
            (
                "during (2 -> 4, until the hand-over settled)",
                window(
                    resized_at,
                    settled_at.max(resized_at + Duration::from_millis(1)),
                ),
            ),
            ("after (4 shards)", window(settled_at, settled_at + phase)),
        ] {
            println!("reshard {label}: {rate:.0} messages/s, p99 {p99:.2} ms over {secs:.2} s");
        }
        println!(
            "reshard: {} users, {} live conversations, {} moved ({:.0}%; the ring moves about 50% from 2 to 4), hand-over settled in {:.0} ms",
            users,
            report.live,
            report.moved,
            100.0 * report.moved as f64 / report.live.max(1) as f64,
            (settled_at - resized_at).as_secs_f64() * 1e3
        );
        drop(updates);
        app.shutdown().await;
    });
}

/// The planted-fact conversations (`tests/data/recall`) through the real pipeline: what reaches
/// the prompt from memory alone (`facts.extract` off) and with facts, on the embedded store
/// and on the server stores that run here (PostgreSQL with pgvector for history and memories,
/// a Bolt graph, Redis jobs).
fn memory() {
    use support::recall::{Dataset, measure, report};
    let dataset = Dataset::load();
    let server = std::env::args().any(|a| a == "--server");
    run_actix(|| async {
        for with_facts in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = settings(dir.path(), "http://127.0.0.1:9/v1");
            s.logging.level = "warn".into();
            s.facts.extract = with_facts;
            let _servers = if server {
                Some(support::recall::server_stores(&mut s).await)
            } else {
                None
            };
            let scores = measure(&dataset, s).await;
            let label = match (with_facts, server) {
                (false, false) => "memory alone (facts.extract = false), embedded SQLite",
                (true, false) => "with facts, embedded SQLite",
                (false, true) => "memory alone, server stores",
                (true, true) => "with facts, server stores",
            };
            report(label, &scores);
        }
    });
}

fn main() {
    let scenario = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    match scenario.as_deref() {
        Some("overhead") => overhead(),
        Some("load") => load(),
        Some("idle") => idle(),
        Some("classifier") => classifier(),
        Some("search") => search(),
        Some("reshard") => reshard(),
        Some("memory") => memory(),
        Some("context") => context(),
        Some("cluster") => cluster::run(),
        Some("load-embedded") => load_embedded::run(),
        Some("footprint") => footprint::run(),
        Some(other) => {
            panic!(
                "unknown scenario {other:?}: overhead, load, load-embedded, footprint, idle, classifier, search, memory, reshard, context or cluster"
            )
        }
        None => {
            let exe = std::env::current_exe().unwrap();
            for scenario in [
                "overhead",
                "load",
                "load-embedded",
                "footprint",
                "idle",
                "classifier",
                "search",
                "memory",
                "reshard",
                "context",
                "cluster",
            ] {
                let status = Command::new(&exe).arg(scenario).status().unwrap();
                assert!(status.success(), "scenario {scenario} failed");
            }
        }
    }
}
