//! The planted-fact recall measurement behind `./bot.sh bench memory` and its slice test.
//!
//! The conversations of `tests/data/recall/conversations.json` (see `generate.py` there) go
//! through the real application — router, conversation actors, the real embedding model,
//! SQLite or the server stores, the background jobs — with a model stand-in that answers chat
//! turns with a short acknowledgement and extracts (and summarises) exactly the facts the data
//! set planted in each message, as a perfect model would. Every message carries its own time
//! on an injected clock, so the six months of a conversation read as six months.
//!
//! Then every question is asked as the user would ask it, and scored on what reached the
//! prompt: the expected value in the recalled memories (and at ranks 1, 3, 5, 10 of the same
//! recall), anywhere in the prompt, the stale value of a corrected fact without an "out of
//! date" mark, and values from other users' conversations. With `WHISPER_RECALL_DEBUG=1` every
//! question whose value misses the top 5 is printed with the ranking it got.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use whisper_actors::clock::ManualClock;
use whisper_actors::graph::FactStore;
use whisper_actors::memory::{MemoryProvider, MemoryStore};
use whisper_actors::ports::{ChatModel, ChatRequest, Embedder, LlmError, ModelDelta, TokenStream};
use whisper_actors::{ConversationKey, Scope};
use whisperengine::app::Extras;
use whisperengine::config::Settings;

use super::app::{Client, is_done, start};

const DAY_MS: i64 = 86_400_000;

#[derive(Clone, Debug, Deserialize)]
pub struct Dataset {
    pub seed: u64,
    pub days: u32,
    pub users: Vec<User>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct User {
    pub id: String,
    pub messages: Vec<Message>,
    pub questions: Vec<Question>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Message {
    pub day: f64,
    pub text: String,
    pub facts: Vec<PlantedFact>,
}

#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct PlantedFact {
    pub subject: String,
    pub predicate: String,
    pub object: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Question {
    pub slot: String,
    pub text: String,
    pub expect: String,
    pub stale: Option<String>,
    pub kind: String,
}

impl Dataset {
    pub fn load() -> Self {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/recall/conversations.json");
        let text = std::fs::read_to_string(&path).expect("the recall data set");
        serde_json::from_str(&text).expect("the recall data set parses")
    }

    /// The first `users` users, with every planted, distractor and correction message but only
    /// every `filler_every`-th filler message: the same questions on a shorter conversation.
    pub fn slice(&self, users: usize, filler_every: usize) -> Self {
        let users = self
            .users
            .iter()
            .take(users)
            .map(|u| {
                let mut filler = 0;
                let messages = u
                    .messages
                    .iter()
                    .filter(|m| {
                        let planted = !m.facts.is_empty() || is_distractor(m);
                        filler += usize::from(!planted);
                        planted || filler % filler_every == 0
                    })
                    .cloned()
                    .collect();
                User {
                    messages,
                    ..u.clone()
                }
            })
            .collect();
        Self {
            users,
            ..self.clone()
        }
    }

    fn messages(&self) -> usize {
        self.users.iter().map(|u| u.messages.len()).sum()
    }
}

/// A distractor names a value of some slot without planting it; filler names none. Any
/// capitalised word or a number after the first word is a good enough tell for the slice.
fn is_distractor(m: &Message) -> bool {
    m.text.split_whitespace().skip(1).any(|w| {
        w.chars()
            .next()
            .is_some_and(|c| c.is_uppercase() || c.is_ascii_digit())
    })
}

/// The model stand-in: acknowledges chat turns (and keeps the last chat prompt), and answers
/// extraction and summary requests with the facts the data set planted in the text.
pub struct PlantedModel {
    facts: HashMap<String, Vec<PlantedFact>>,
    pub last_prompt: Mutex<Option<ChatRequest>>,
    pub chat_turns: std::sync::atomic::AtomicU64,
}

impl PlantedModel {
    pub fn new(dataset: &Dataset) -> Self {
        let facts = dataset
            .users
            .iter()
            .flat_map(|u| u.messages.iter())
            .filter(|m| !m.facts.is_empty())
            .map(|m| (m.text.clone(), m.facts.clone()))
            .collect();
        Self {
            facts,
            last_prompt: Mutex::new(None),
            chat_turns: Default::default(),
        }
    }

    fn answer(&self, request: &ChatRequest) -> String {
        let user_text = request
            .messages
            .iter()
            .filter(|m| m.role == whisper_actors::ports::Role::User)
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        match request.response_schema.as_ref().map(|s| s.name) {
            Some("facts") => {
                let facts: Vec<serde_json::Value> = self
                    .facts
                    .get(user_text.trim())
                    .into_iter()
                    .flatten()
                    .map(|f| {
                        let mut v = serde_json::to_value(f).unwrap();
                        v["confidence"] = serde_json::json!(0.95);
                        v
                    })
                    .collect();
                serde_json::json!({ "facts": facts }).to_string()
            }
            Some("summary") => {
                // What a good summariser keeps: the durable things the user said, in order.
                let mut said: Vec<&str> = self
                    .facts
                    .keys()
                    .filter(|text| user_text.contains(text.as_str()))
                    .map(String::as_str)
                    .collect();
                said.sort_by_key(|t| user_text.find(t));
                let summary = if said.is_empty() {
                    "We chatted about everyday things.".to_owned()
                } else {
                    format!("We chatted; the user told me: {}.", said.join("; "))
                };
                serde_json::json!({ "summary": summary }).to_string()
            }
            _ => {
                self.chat_turns
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *self.last_prompt.lock().unwrap() = Some(request.clone());
                const REPLIES: [&str; 5] = [
                    "Got it, thanks for telling me.",
                    "I see! Tell me more whenever you like.",
                    "That makes sense.",
                    "Interesting, I'll keep that in mind.",
                    "Okay!",
                ];
                REPLIES[user_text.len() % REPLIES.len()].to_owned()
            }
        }
    }
}

#[async_trait]
impl ChatModel for PlantedModel {
    async fn stream(&self, request: ChatRequest) -> Result<TokenStream, LlmError> {
        let answer = self.answer(&request);
        Ok(futures::stream::iter([Ok(ModelDelta::from(answer.as_str()))]).boxed())
    }
}

/// What reached the prompts of the questions.
#[derive(Clone, Debug, Default)]
pub struct Scores {
    pub questions: usize,
    /// Questions whose expected value is in the top 1, 3, 5, 10 recalled memories.
    pub recall_at: [usize; 4],
    /// ... in the memory section of the real prompt.
    pub in_memory_section: usize,
    /// ... anywhere in the real prompt (memories, facts, history).
    pub in_prompt: usize,
    pub corrected: usize,
    /// Corrected questions whose prompt has the current value.
    pub corrected_current: usize,
    /// Corrected questions whose prompt states the old value without marking it out of date.
    pub stale_unmarked: usize,
    /// Questions whose prompt holds a value from another user's conversation.
    pub leaks: usize,
    pub messages: usize,
    pub replay_seconds: f64,
}

impl Scores {
    pub fn rate(&self, n: usize) -> f64 {
        n as f64 / self.questions.max(1) as f64
    }
    pub fn corrected_rate(&self, n: usize) -> f64 {
        n as f64 / self.corrected.max(1) as f64
    }
}

/// Whether `phrase` appears in `text` as whole words, case-insensitively.
pub fn mentions(text: &str, phrase: &str) -> bool {
    whisper_actors::text::contains_words(&text.to_lowercase(), &phrase.to_lowercase())
}

/// Replays `dataset` through an app started with `settings` and scores its questions.
pub async fn measure(dataset: &Dataset, mut settings: Settings) -> Scores {
    let started = Instant::now();
    // The conversations end a day before the real now: the job queue's own clock is real.
    let base = whisper_actors::clock::unix_ms() - (dataset.days as i64 + 2) * DAY_MS;
    let clock = Arc::new(ManualClock::new(base));
    let model = Arc::new(PlantedModel::new(dataset));
    settings.limits.messages_per_window = 0;
    let app = start(
        settings.clone(),
        Extras {
            providers: vec![],
            model: Some(model.clone()),
            tools: Vec::new(),
            clock: Some(clock.clone()),
        },
    )
    .await;

    // Every user's messages, in time order across users.
    let mut clients: Vec<Client> = dataset
        .users
        .iter()
        .map(|u| Client::new("aria", &u.id).in_scope(Scope::Direct))
        .collect();
    let mut timeline: Vec<(f64, usize, &Message)> = dataset
        .users
        .iter()
        .enumerate()
        .flat_map(|(u, user)| user.messages.iter().map(move |m| (m.day, u, m)))
        .collect();
    timeline.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for (day, u, m) in &timeline {
        clock.set(base + (day * DAY_MS as f64) as i64);
        let reply = clients[*u].ask(&app, &m.text).await;
        assert!(is_done(&reply), "{reply:?}");
    }
    // A whole replay's background jobs: minutes on a slow machine.
    super::app::drain_within(&app, Duration::from_secs(600)).await;
    let replay_seconds = started.elapsed().as_secs_f64();

    // Recall at ranks 1..10, through the same provider code the prompt uses.
    let mut rank_settings = settings.runtime_settings().memory.rank;
    rank_settings.top_k = 10;
    let ranked_recall = MemoryProvider {
        store: Arc::new(app.memory_pool().clone()) as Arc<dyn MemoryStore>,
        facts: settings
            .facts
            .extract
            .then(|| Arc::new(app.graph_pool().clone()) as Arc<dyn FactStore>),
        rank: rank_settings.into(),
        guild_memories_in_dm: settings.memory.guild_memories_in_dm,
        deadline: Duration::from_secs(5),
        clock: clock.clone(),
    };
    let embedder = app.embedder().expect("embeddings are on").clone();

    // Another user's values: what they planted that this user never said.
    let planted: Vec<BTreeSet<String>> = dataset
        .users
        .iter()
        .map(|u| {
            u.messages
                .iter()
                .flat_map(|m| m.facts.iter().map(|f| f.object.clone()))
                .collect()
        })
        .collect();

    let mut scores = Scores {
        messages: dataset.messages(),
        replay_seconds,
        ..Scores::default()
    };
    let asked_at = base + (dataset.days as i64 + 1) * DAY_MS;
    for (u, user) in dataset.users.iter().enumerate() {
        let own_text: String = user
            .messages
            .iter()
            .map(|m| m.text.to_lowercase())
            .collect::<Vec<_>>()
            .join("\n");
        let foreign: Vec<&String> = planted
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != u)
            .flat_map(|(_, values)| values.iter())
            .filter(|v| !mentions(&own_text, v))
            .collect();
        for (i, q) in user.questions.iter().enumerate() {
            clock.set(asked_at + i as i64 * 60_000);
            let vector = embedder
                .embed(vec![q.text.clone()])
                .await
                .expect("embedding")
                .pop()
                .unwrap();
            let key = ConversationKey::new("aria", user.id.as_str());
            let ranked = ranked_recall
                .recall(&key, &Scope::Direct, &q.text, vector)
                .await
                .expect("recall");
            let position = ranked
                .iter()
                .position(|(_, c)| mentions(&c.text, &q.expect));
            if std::env::var_os("WHISPER_RECALL_DEBUG").is_some() && position.is_none_or(|p| p >= 5)
            {
                eprintln!(
                    "MISS {} [{}] expect {:?} at {position:?}",
                    q.text, user.id, q.expect
                );
                for (score, c) in &ranked {
                    eprintln!(
                        "    {score:.4} sim {:.3} kw {:?} {}",
                        c.similarity, c.keyword_rank, c.text
                    );
                }
            }
            for (slot, k) in [1, 3, 5, 10].into_iter().enumerate() {
                if position.is_some_and(|p| p < k) {
                    scores.recall_at[slot] += 1;
                }
            }

            let reply = clients[u].ask(&app, &q.text).await;
            assert!(is_done(&reply), "{reply:?}");
            let prompt = model
                .last_prompt
                .lock()
                .unwrap()
                .take()
                .expect("a chat prompt");
            let whole: String = prompt
                .messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n");
            let memories = memory_section(&prompt.messages[0].content);
            scores.questions += 1;
            scores.in_memory_section += usize::from(mentions(memories, &q.expect));
            scores.in_prompt += usize::from(mentions(&whole, &q.expect));
            if let Some(stale) = &q.stale {
                scores.corrected += 1;
                scores.corrected_current += usize::from(mentions(&whole, &q.expect));
                let unmarked = whole.lines().any(|line| {
                    mentions(line, stale)
                        && !mentions(line, &q.expect)
                        && !line.contains("out of date")
                        && !line.contains("since superseded")
                });
                scores.stale_unmarked += usize::from(unmarked);
            }
            scores.leaks += usize::from(foreign.iter().any(|v| mentions(&whole, v)));
        }
    }
    app.shutdown().await;
    scores
}

/// The body of the prompt's memory section.
fn memory_section(system: &str) -> &str {
    let Some(start) = system.find("## What you remember about this user") else {
        return "";
    };
    let rest = &system[start..];
    match rest[3..].find("\n## ") {
        Some(end) => &rest[..end + 3],
        None => rest,
    }
}

/// The table the benchmark prints (and the README quotes).
pub fn report(label: &str, s: &Scores) {
    println!(
        "{label}: {} questions over {} messages (replayed in {:.0} s)",
        s.questions, s.messages, s.replay_seconds
    );
    println!(
        "  recall@1 {:.2}  @3 {:.2}  @5 {:.2}  @10 {:.2}  | in the prompt's memories {:.2}, anywhere in the prompt {:.2}",
        s.rate(s.recall_at[0]),
        s.rate(s.recall_at[1]),
        s.rate(s.recall_at[2]),
        s.rate(s.recall_at[3]),
        s.rate(s.in_memory_section),
        s.rate(s.in_prompt)
    );
    println!(
        "  corrected facts: current value in the prompt {:.2}, stale value unmarked {:.2} (of {})  | prompts with another user's value: {}",
        s.corrected_rate(s.corrected_current),
        s.corrected_rate(s.stale_unmarked),
        s.corrected,
        s.leaks
    );
}

/// What the server stores that run here need to stay up (and be cleaned up) for a run.
pub struct ServerStores {
    _postgres: super::pgvector::PgVector,
    _prefix: super::servers::RedisPrefix,
    _graph: super::arcadedb::ArcadeDb,
}

/// Points `s` at the server stores this machine runs: history and vector memories in
/// PostgreSQL with pgvector (a server of its own), jobs on Redis Streams, facts on a Bolt
/// graph server.
pub async fn server_stores(s: &mut Settings) -> ServerStores {
    use whisperengine::config::{HistoryBackend, JobsBackend, MemoryBackend};
    let postgres = super::pgvector::PgVector::start().await;
    let prefix = super::servers::RedisPrefix::new();
    let graph = super::arcadedb::ArcadeDb::start().await;
    s.storage.history = HistoryBackend::Postgres;
    s.storage.memory = MemoryBackend::Postgres;
    s.storage.postgres_url = postgres.url("whisper").into();
    s.storage.jobs = JobsBackend::Redis;
    s.storage.redis_prefix = prefix.0.clone();
    graph.configure(s);
    ServerStores {
        _postgres: postgres,
        _prefix: prefix,
        _graph: graph,
    }
}
