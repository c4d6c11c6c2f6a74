//! `load-embedded`: the full embedded pipeline under load. Real all-MiniLM-L6-v2 embeddings (the
//! configured embedding workers and ONNX threads, printed), the fast-track classifier, memory search
//! and the facts provider over SQLite, memories written by background jobs; the instant
//! in-process model (fact extraction off: it answers no JSON). Users in a closed loop (each
//! user's next message when its reply arrives) at 1, 10, 100 and 1,000 users, with embeddings
//! batched (the defaults) and one sentence per inference (`max_batch = 1`, no wait: the
//! behaviour before batching).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use whisper_actors::sink::ChannelSink;
use whisper_actors::{ConversationKey, Scope, UserMessage};
use whisperengine::config::Settings;

use crate::support::app::{run_actix, settings, start};
use crate::support::openai_server::ScriptedLlm;

/// Small talk and questions that need memory, alternating per user.
fn text(n: u64) -> String {
    const TOPICS: [&str; 5] = [
        "my sister's flat",
        "the recipe",
        "my new job",
        "the trip",
        "my cat",
    ];
    if n.is_multiple_of(2) {
        "hey, how are you doing today?".to_owned()
    } else {
        format!(
            "what did I tell you about {} last week? ({n})",
            TOPICS[(n as usize / 2) % TOPICS.len()]
        )
    }
}

fn message(
    key: &ConversationKey,
    n: u64,
    sink: &actix::Recipient<whisper_actors::ReplyUpdate>,
) -> UserMessage {
    UserMessage {
        key: key.clone(),
        scope: Scope::Direct,
        channel: None,
        display_name: key.user.to_string(),
        text: text(n),
        message_id: n,
        received_at: Instant::now(),
        reply_to: sink.clone(),
        settled: None,
        images: Vec::new(),
    }
}

/// The embedding settings a run compares against the defaults, read once from the environment.
struct Tuning {
    /// `WHISPER_BENCH_EMBEDDING`: (pools.embedder, embedding.threads).
    embedding: Option<(usize, usize)>,
    /// `WHISPER_BENCH_MODEL_DIR`: embedding.model_dir.
    model_dir: Option<String>,
}

impl Tuning {
    fn from_env() -> Self {
        Tuning {
            embedding: std::env::var("WHISPER_BENCH_EMBEDDING").ok().map(|v| {
                let (w, t) = v.split_once(',').expect("workers,threads");
                (w.trim().parse().unwrap(), t.trim().parse().unwrap())
            }),
            model_dir: std::env::var("WHISPER_BENCH_MODEL_DIR").ok(),
        }
    }

    fn apply(&self, s: &mut Settings) {
        if let Some(dir) = &self.model_dir {
            s.embedding.model_dir = dir.into();
        }
        if let Some((workers, threads)) = self.embedding {
            s.pools.embedder = workers;
            s.embedding.threads = threads;
        }
    }
}

/// Messages per second, p50 and p99 reply latency (ms) of `users` users for `run` after `warm`;
/// `batching`: (max_batch, batch_wait), `None` for the defaults.
async fn closed_loop(
    batching: Option<(usize, Duration)>,
    tuning: &Tuning,
    users: usize,
    warm: Duration,
    run: Duration,
) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let llm = ScriptedLlm::start().await;
    let mut s = settings(dir.path(), &llm.base_url());
    s.logging.level = "warn".into();
    s.facts.extract = false;
    tuning.apply(&mut s);
    if let Some((max_batch, wait)) = batching {
        s.embedding.max_batch = max_batch;
        s.embedding.batch_wait = wait;
    }
    s.pools.llm_concurrency = whisperengine::config::AutoCount::Fixed(64);
    s.pools.llm_queue = 20_000;
    let app = start(s, super::instant()).await;
    let (sink, mut updates) = ChannelSink::start();
    let keys: Vec<ConversationKey> = (0..users)
        .map(|u| ConversationKey::new("aria", format!("load:{u}")))
        .collect();
    let mut sent: HashMap<ConversationKey, (u64, Instant)> = HashMap::new();
    for key in &keys {
        app.router().route(message(key, 1, &sink)).unwrap();
        sent.insert(key.clone(), (1, Instant::now()));
    }
    let started = Instant::now();
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let mut measured_from = None;
    loop {
        let update = updates.recv().await.unwrap();
        if !update.is_final() {
            continue;
        }
        let now = Instant::now();
        let (n, at) = sent[&update.key];
        if now - started >= warm {
            let from = *measured_from.get_or_insert(now);
            hist.record((now - at).as_micros() as u64).unwrap();
            if now - from >= run {
                let rate = hist.len() as f64 / (now - from).as_secs_f64();
                app.shutdown().await;
                return (
                    rate,
                    hist.value_at_quantile(0.5) as f64 / 1e3,
                    hist.value_at_quantile(0.99) as f64 / 1e3,
                );
            }
        }
        app.router()
            .route(message(&update.key, n + 1, &sink))
            .unwrap();
        sent.insert(update.key.clone(), (n + 1, Instant::now()));
    }
}

/// `WHISPER_BENCH_USERS` (e.g. "1,100") limits the user counts; `WHISPER_BENCH_BATCH`
/// ("max_batch,wait_us") replaces the defaults in the batched column, and
/// `WHISPER_BENCH_EMBEDDING` ("workers,threads": pools.embedder, embedding.threads) the
/// embedding threads in both, for tuning; `WHISPER_BENCH_MODEL_DIR` another embedding model
/// (e.g. `$WHISPER_CACHE/models/all-minilm-l6-v2`, the PyPI model before bot.sh rewrites it).
pub fn run() {
    let users: Vec<usize> = std::env::var("WHISPER_BENCH_USERS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 100, 1_000]);
    let batched: Option<(usize, Duration)> = std::env::var("WHISPER_BENCH_BATCH").ok().map(|v| {
        let (n, us) = v.split_once(',').expect("max_batch,wait_us");
        (
            n.trim().parse().unwrap(),
            Duration::from_micros(us.trim().parse().unwrap()),
        )
    });
    let tuning = Tuning::from_env();
    run_actix(|| async move {
        // What the runs use, printed from the settings they start from.
        let mut s = settings(std::path::Path::new("."), "");
        tuning.apply(&mut s);
        println!(
            "load-embedded: full embedded pipeline, pools.embedder = {}, embedding.threads = {}, model {}",
            s.pools.embedder,
            s.embedding.threads,
            tuning.model_dir.as_deref().unwrap_or("default")
        );
        println!(
            "| users | one sentence per inference: msg/s, p50, p99 | batched ({}): msg/s, p50, p99 |",
            batched.map_or("defaults".to_owned(), |(n, w)| format!(
                "max_batch {n}, wait {w:?}"
            ))
        );
        println!("|---|---|---|");
        for users in users {
            let (warm, run) = match users {
                1 => (Duration::from_secs(2), Duration::from_secs(5)),
                _ => (Duration::from_secs(3), Duration::from_secs(8)),
            };
            let before = closed_loop(Some((1, Duration::ZERO)), &tuning, users, warm, run).await;
            let after = closed_loop(batched, &tuning, users, warm, run).await;
            println!(
                "| {users} | {:.0}/s, {:.1} ms, {:.1} ms | {:.0}/s, {:.1} ms, {:.1} ms |",
                before.0, before.1, before.2, after.0, after.1, after.2
            );
        }
    });
}
