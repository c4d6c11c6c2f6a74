//! The runtime end to end over in-memory doubles: router, shards, conversations, the LLM
//! actor, supervision, with no database and no HTTP.

mod doubles;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use whisper_actors::character::{Character, CharacterSet, ModelParams};
use whisper_actors::jobs::JobSettings;
use whisper_actors::llm::LlmPolicy;
use whisper_actors::memory::{MemorySettings, RankSettings};
use whisper_actors::messages::{ReplyStatus, ReplyUpdate, UserMessage};
use whisper_actors::pool::InjectPanic;
use whisper_actors::runtime::{FactSettings, ToolSettings};
use whisper_actors::sink::ChannelSink;
use whisper_actors::supervision::RestartPolicy;
use whisper_actors::{ConversationKey, Runtime, RuntimeParts, RuntimeSettings, Scope};

use doubles::{EchoModel, HistoryVec};

fn settings(shards: u32) -> RuntimeSettings {
    let ms = Duration::from_millis;
    RuntimeSettings {
        shards,
        virtual_nodes: 64,
        idle_timeout: Duration::from_secs(60),
        max_conversations_per_shard: 100,
        edit_interval: ms(50),
        token_budget: 2000,
        image_tokens: 800,
        history_turns: 10,
        history_deadline: ms(500),
        profile_deadline: ms(500),
        classifier_deadline: ms(500),
        classifier_pool: 1,
        memory: MemorySettings {
            rank: RankSettings {
                top_k: 5,
                min_similarity: 0.2,
                fusion_k: 2.0,
                recency_half_life: Duration::from_secs(86_400),
                recency_weight: 0.2,
                importance_weight: 0.2,
            },
            guild_memories_in_dm: false,
            deadline: ms(500),
            chunk_words: 100,
            summarise_every: 0,
            idle_summary_min_turns: 0,
        },
        jobs: JobSettings {
            workers: 1,
            lease: Duration::from_secs(30),
            max_attempts: 3,
            retry_backoff: ms(10),
            retry_backoff_max: ms(100),
            poll_interval: ms(50),
        },
        jobs_shutdown_grace: ms(100),
        facts: FactSettings {
            extract: false,
            hops: 1,
            token_budget: 300,
            deadline: ms(500),
            single_valued: Vec::new(),
            min_confidence: 0.5,
            model: None,
        },
        tools: ToolSettings {
            enabled: false,
            max_rounds: 0,
            timeout: ms(500),
            summaries: 3,
        },
        restart: RestartPolicy {
            max_restarts: 3,
            window: Duration::from_secs(10),
            backoff_initial: ms(10),
            backoff_max: ms(50),
        },
        llm: LlmPolicy {
            max_concurrent: 4,
            queue_capacity: 16,
            first_token_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            max_retries: 0,
            retry_backoff: ms(10),
            retry_backoff_max: ms(10),
        },
    }
}

fn runtime(shards: u32, history: Arc<HistoryVec>) -> Runtime {
    runtime_with(settings(shards), history, Arc::new(EchoModel))
}

fn runtime_with(
    settings: RuntimeSettings,
    history: Arc<HistoryVec>,
    model: Arc<dyn whisper_actors::ports::ChatModel>,
) -> Runtime {
    let params = ModelParams {
        model: None,
        temperature: 0.7,
        top_p: None,
        frequency_penalty: None,
        presence_penalty: None,
        max_tokens: 64,
        vision: None,
    };
    let aria = Character {
        id: "aria".into(),
        name: "Aria".into(),
        system_prompt: "You are Aria.".into(),
        model: params,
        fast_model: None,
    };
    Runtime::start(
        settings,
        RuntimeParts {
            characters: CharacterSet::new([aria]),
            history,
            model,
            extra_providers: Vec::new(),
            embedder: None,
            intents: None,
            memory: None,
            facts: None,
            jobs: None,
            jobs_backend: String::new(),
            extra_tools: Vec::new(),
            limiter: None,
            pools: Vec::new(),
            clock: None,
        },
    )
}

struct User {
    key: ConversationKey,
    sink: actix::Recipient<ReplyUpdate>,
    updates: mpsc::UnboundedReceiver<ReplyUpdate>,
    next: u64,
}

impl User {
    fn new(name: &str) -> Self {
        let (sink, updates) = ChannelSink::start();
        Self {
            key: ConversationKey::new("aria", name),
            sink,
            updates,
            next: 0,
        }
    }

    async fn ask(&mut self, runtime: &Runtime, text: &str) -> ReplyUpdate {
        self.next += 1;
        runtime
            .router()
            .route(UserMessage {
                key: self.key.clone(),
                scope: Scope::Direct,
                channel: None,
                display_name: self.key.user.to_string(),
                text: text.into(),
                message_id: self.next,
                received_at: Instant::now(),
                reply_to: self.sink.clone(),
                settled: None,
                images: Vec::new(),
            })
            .expect("routed");
        loop {
            let update = tokio::time::timeout(Duration::from_secs(10), self.updates.recv())
                .await
                .expect("a reply within 10 s")
                .expect("sink open");
            if update.message_id == self.next && update.is_final() {
                return update;
            }
        }
    }
}

fn done(update: &ReplyUpdate) -> bool {
    matches!(update.status, ReplyStatus::Done(_))
}

/// Each user's conversation sees its own history and nobody else's, across shards.
#[actix_rt::test]
async fn conversations_keep_their_own_history() {
    let history = Arc::new(HistoryVec::default());
    let runtime = runtime(2, history.clone());
    let (mut ann, mut bob) = (User::new("ann"), User::new("bob"));
    assert!(done(&ann.ask(&runtime, "my cat is Tom").await));
    assert!(done(&bob.ask(&runtime, "my dog is Rex").await));
    let reply = ann.ask(&runtime, "what is my pet?").await;
    assert!(reply.text.contains("my cat is Tom"), "{}", reply.text);
    assert!(
        !reply.text.contains("Rex"),
        "another user's turn leaked: {}",
        reply.text
    );
    // Turns are stored after the reply goes out: a graceful shutdown waits for them.
    let report = runtime.shutdown(Duration::from_secs(1)).await;
    assert!(report.drained(), "{report}");
    let stored = history.0.lock().unwrap().len();
    assert_eq!(stored, 3);
}

/// A shard that panics restarts fresh; its users' next messages are answered with their
/// history reloaded from the store.
#[actix_rt::test]
async fn a_panicking_shard_restarts_and_reloads_from_the_store() {
    let history = Arc::new(HistoryVec::default());
    let runtime = runtime(1, history.clone());
    let mut ann = User::new("ann");
    assert!(done(&ann.ask(&runtime, "my boat is Saga").await));
    let shard = runtime.router().shards()[0].clone();
    assert!(shard.send(InjectPanic).await.unwrap().is_err());
    for _ in 0..200 {
        if runtime.status().shard_restarts == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(runtime.status().shard_restarts, 1);
    let reply = ann.ask(&runtime, "what is my boat?").await;
    assert!(done(&reply), "{reply:?}");
    assert!(
        reply.text.contains("my boat is Saga"),
        "history reloaded: {}",
        reply.text
    );
    let report = runtime.shutdown(Duration::from_secs(1)).await;
    assert!(report.drained(), "{report}");
}

/// Answers with the message and the previous user message in its prompt (the history the
/// conversation had), a little slowly, so messages are in flight while the ring changes.
struct SlowEcho;

#[async_trait::async_trait]
impl whisper_actors::ports::ChatModel for SlowEcho {
    async fn stream(
        &self,
        request: whisper_actors::ports::ChatRequest,
    ) -> Result<whisper_actors::ports::TokenStream, whisper_actors::ports::LlmError> {
        tokio::time::sleep(Duration::from_millis(3)).await;
        let users: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == whisper_actors::ports::Role::User)
            .map(|m| m.content.as_str())
            .collect();
        let previous = users.len().checked_sub(2).map_or("none", |i| users[i]);
        let answer = format!(
            "echo: {} | previous: {previous}",
            users.last().unwrap_or(&"")
        );
        Ok(Box::pin(futures::stream::iter([Ok(
            whisper_actors::ports::ModelDelta::Text(answer),
        )])))
    }
}

/// 50 users × 20 messages, all sent at once, while the ring goes 2 → 5 → 3 shards: every
/// message is answered exactly once, each user's replies come in order, and each reply's
/// prompt holds the user's previous message (history followed the conversation to its new
/// shard).
#[actix_rt::test]
async fn resharding_under_load_keeps_every_promise() {
    let mut s = settings(2);
    s.llm.max_concurrent = 64;
    s.llm.queue_capacity = 2_000;
    let history = Arc::new(HistoryVec::default());
    let runtime = runtime_with(s, history.clone(), Arc::new(SlowEcho));
    let (sink, mut updates) = ChannelSink::start();
    let users: Vec<ConversationKey> = (0..50)
        .map(|u| ConversationKey::new("aria", format!("u{u}")))
        .collect();
    let router = runtime.router();
    let send = |key: &ConversationKey, n: u64| {
        router
            .route(UserMessage {
                key: key.clone(),
                scope: Scope::Direct,
                channel: None,
                display_name: key.user.to_string(),
                text: format!("{} says m{n}", key.user),
                message_id: n,
                received_at: Instant::now(),
                reply_to: sink.clone(),
                settled: None,
                images: Vec::new(),
            })
            .expect("routed")
    };
    let mut resized = Vec::new();
    for n in 1..=20u64 {
        for key in &users {
            send(key, n);
        }
        if n == 5 {
            resized.push(runtime.resize_shards(5).await);
        }
        if n == 12 {
            resized.push(runtime.resize_shards(3).await);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut finals: std::collections::HashMap<String, Vec<(u64, String)>> = Default::default();
    let mut count = 0;
    while count < 50 * 20 {
        let update = tokio::time::timeout(Duration::from_secs(20), updates.recv())
            .await
            .expect("every reply within 20 s")
            .expect("sink open");
        if update.is_final() {
            assert!(done(&update), "{update:?}");
            finals
                .entry(update.key.user.to_string())
                .or_default()
                .push((update.message_id, update.text.clone()));
            count += 1;
        }
    }
    for key in &users {
        let replies = &finals[&*key.user];
        let ids: Vec<u64> = replies.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ids,
            (1..=20).collect::<Vec<u64>>(),
            "{}: in order, once each",
            key.user
        );
        for (id, text) in replies.iter().skip(1) {
            assert!(
                text.ends_with(&format!("previous: {} says m{}", key.user, id - 1)),
                "{} m{id}: the previous turn is in the prompt: {text}",
                key.user
            );
        }
    }
    runtime.resize_settled().await;
    assert_eq!(resized[0].from, 2);
    assert_eq!(resized[1].to, 3);
    assert!(resized.iter().all(|r| r.moved > 0), "{resized:?}");
    assert_eq!(runtime.status().shards.len(), 3, "removed shards stopped");
    let report = runtime.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained(), "{report}");
    let stored = history.0.lock().unwrap();
    assert_eq!(stored.len(), 50 * 20, "each turn stored once");
}
