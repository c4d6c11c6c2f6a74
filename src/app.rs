//! Wiring: turns a validated configuration into a running runtime with its adapters.
//!
//! Used by every command that serves users (`chat` now, the Discord transport later) and by
//! the integration tests and benchmarks, so they all exercise the same assembly.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use whisper_actors::ConversationKey;
use whisper_actors::context::ContextProvider;
use whisper_actors::llm::LlmPolicy;
use whisper_actors::memory::{Candidate, MemoryStore};
use whisper_actors::ports::{ChatModel, HistoryStore};
use whisper_actors::supervision::RestartPolicy;
use whisper_actors::{CharacterSet, Runtime, RuntimeParts, RuntimeSettings, ShardRouter};

use crate::classifier;
use crate::config::{FactsBackend, HistoryBackend, JobsBackend, MemoryBackend, Settings};
use crate::embed::LocalEmbedder;
use crate::llm::local_server::LocalServer;
use crate::llm::openai::OpenAiChat;
use crate::status;
use crate::store::neo4j_facts::Neo4jFacts;
use crate::store::postgres::PgHistory;
use crate::store::qdrant_memory::QdrantMemory;
use crate::store::redis_cache::{CachedHistory, RedisRateLimiter};
use crate::store::redis_jobs::RedisJobs;
use crate::store::sqlite::{self, SqliteHistory};
use crate::store::sqlite_facts::SqliteFacts;
use crate::store::sqlite_jobs::SqliteJobs;
use crate::store::sqlite_memory::SqliteMemory;
use crate::transport::discord::channel::{ChannelContextProvider, ChannelLog};
use crate::transport::discord::policy::Access;
use whisper_actors::facts::FactStore;
use whisper_actors::jobs::{JobQueue, JobSettings};
use whisper_actors::limits::{LocalRateLimiter, RateLimiter};
use whisper_actors::memory::{MemorySettings, RankSettings};
use whisper_actors::runtime::{FactSettings, ToolSettings};
use whisper_actors::store_actors::{GraphPool, MemoryPool};
use whisper_actors::tools::Tool;

/// Optional parts beyond what the configuration selects: extra context providers (the next
/// issues' memory and facts providers are wired here; tests use it for fault injection).
#[derive(Default)]
pub struct Extras {
    pub providers: Vec<Arc<dyn ContextProvider>>,
    /// A model to use instead of the configured endpoint (benchmarks isolate the runtime's
    /// own overhead with an in-process model).
    pub model: Option<Arc<dyn ChatModel>>,
    /// Tools beyond the built-in ones.
    pub tools: Vec<Arc<dyn Tool>>,
}

/// What "forget me" deleted, per store.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ForgetReport {
    pub live_conversations: usize,
    pub turns: u64,
    pub profiles: u64,
    pub memories: u64,
    pub facts: u64,
    pub jobs: u64,
}

impl std::fmt::Display for ForgetReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "forgotten: {} conversation turns, {} profile, {} memories, {} facts, {} queued jobs; {} live conversations dropped with their caches",
            self.turns,
            self.profiles,
            self.memories,
            self.facts,
            self.jobs,
            self.live_conversations
        )
    }
}

/// The user's data in every store: what "forget me" and `/memories` work on.
#[derive(Clone)]
pub struct UserData {
    /// The embedded database file (always present: it holds whichever stores are embedded).
    db: std::path::PathBuf,
    history: Arc<dyn HistoryStore>,
    memory: Arc<dyn MemoryStore>,
    facts: Arc<dyn FactStore>,
    jobs: Arc<dyn JobQueue>,
}

/// What "forget me" deletes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForgetScope {
    #[default]
    All,
    Memories,
    Facts,
    History,
}

impl UserData {
    /// Deletes everything stored about `user` (all characters, all scopes).
    pub async fn forget(&self, user: &str) -> anyhow::Result<ForgetReport> {
        self.forget_scoped(user, ForgetScope::All).await
    }

    /// Deletes what `scope` names about `user`. Queued jobs go first in every scope, so none
    /// re-creates what is deleted next.
    pub async fn forget_scoped(
        &self,
        user: &str,
        scope: ForgetScope,
    ) -> anyhow::Result<ForgetReport> {
        let all = scope == ForgetScope::All;
        let mut report = ForgetReport {
            jobs: self
                .jobs
                .forget_user(user)
                .await
                .context("forgetting queued jobs")?,
            ..Default::default()
        };
        if all || scope == ForgetScope::History {
            (report.turns, report.profiles) = self
                .history
                .forget_user(user)
                .await
                .context("forgetting history")?;
        }
        if all || scope == ForgetScope::Memories {
            report.memories = self
                .memory
                .forget_user(user)
                .await
                .context("forgetting memories")?;
        }
        if all || scope == ForgetScope::Facts {
            report.facts = self
                .facts
                .forget_user(user)
                .await
                .context("forgetting facts")?;
        }
        // Deleted rows are zeroed in place (secure_delete); the log's older page versions go too.
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || sqlite::checkpoint(&db)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                warn!(%error, "could not truncate the write-ahead log after a forget")
            }
            Err(error) => warn!(%error, "the write-ahead log checkpoint panicked"),
        }
        Ok(report)
    }

    /// The newest `limit` turns of a conversation in a scope, oldest first.
    pub async fn history(
        &self,
        key: &ConversationKey,
        scope: &whisper_actors::Scope,
        limit: usize,
    ) -> anyhow::Result<Vec<whisper_actors::ports::Turn>> {
        Ok(self.history.recent_turns(key, scope, limit).await?)
    }

    /// What the bot knows about the user across characters (first and last seen, messages).
    pub async fn profile(
        &self,
        user: &str,
    ) -> anyhow::Result<Option<whisper_actors::ports::Profile>> {
        Ok(self.history.profile(user).await?)
    }

    /// The user's current facts.
    pub async fn facts(&self, user: &str) -> anyhow::Result<Vec<whisper_actors::facts::Fact>> {
        Ok(self.facts.current(user).await?)
    }

    /// Background jobs waiting or running.
    pub async fn pending_jobs(&self) -> anyhow::Result<u64> {
        let c = self.jobs.counts().await?;
        Ok(c.ready + c.leased)
    }

    pub async fn memories(
        &self,
        key: &ConversationKey,
        limit: usize,
    ) -> anyhow::Result<Vec<Candidate>> {
        Ok(self.memory.list(key, limit).await?)
    }
}

/// The configured history store (embedded SQLite or PostgreSQL) and its pool's stats.
async fn history_store(
    settings: &Settings,
    db: &std::path::Path,
) -> anyhow::Result<(Arc<dyn HistoryStore>, Arc<whisper_actors::stats::PoolStats>)> {
    Ok(match settings.storage.history {
        HistoryBackend::Sqlite => {
            let store = SqliteHistory::start(db.to_owned(), settings.pools.history);
            let stats = store.stats();
            (Arc::new(store), stats)
        }
        HistoryBackend::Postgres => {
            let store = PgHistory::connect(
                settings.storage.postgres_url.expose(),
                settings.pools.postgres,
                settings.storage.connect_timeout,
            )
            .await
            .context("opening the history store (storage.history = \"postgres\")")?;
            let stats = store.stats();
            (Arc::new(store), stats)
        }
    })
}

/// With `storage.redis_cache`: profiles cached in Redis and rate limits counted there; else the
/// history store as is and an in-process limiter.
async fn redis_extras(
    settings: &Settings,
    history: Arc<dyn HistoryStore>,
) -> anyhow::Result<(Arc<dyn HistoryStore>, Option<Arc<dyn RateLimiter>>)> {
    let limits = &settings.limits;
    let s = &settings.storage;
    if !s.redis_cache {
        let limiter = (limits.messages_per_window > 0).then(|| {
            Arc::new(LocalRateLimiter::new(
                limits.messages_per_window as usize,
                limits.window,
            )) as Arc<dyn RateLimiter>
        });
        return Ok((history, limiter));
    }
    let pool = crate::store::redis_jobs::pool(s.redis_url.expose(), s.connect_timeout)
        .await
        .context("opening the Redis cache (storage.redis_cache = true)")?;
    let limiter = (limits.messages_per_window > 0).then(|| {
        Arc::new(RedisRateLimiter::new(
            pool.clone(),
            &s.redis_prefix,
            limits.messages_per_window,
            limits.window,
        )) as Arc<dyn RateLimiter>
    });
    let cached = CachedHistory::new(history, pool, &s.redis_prefix, s.cache_ttl);
    Ok((Arc::new(cached), limiter))
}

/// The configured vector memory (embedded SQLite or Qdrant) and its pool's stats.
async fn memory_store(
    settings: &Settings,
    db: &std::path::Path,
    characters: Vec<String>,
) -> anyhow::Result<(Arc<dyn MemoryStore>, Arc<whisper_actors::stats::PoolStats>)> {
    let s = &settings.storage;
    Ok(match s.memory {
        MemoryBackend::Sqlite => {
            let store = SqliteMemory::start(
                db.to_owned(),
                settings.pools.memory,
                settings.memory.cached_users,
            );
            let stats = store.stats();
            (Arc::new(store), stats)
        }
        MemoryBackend::Qdrant => {
            let store = QdrantMemory::from_storage(s, characters)
                .await
                .context("opening the vector memory (storage.memory = \"qdrant\")")?;
            (Arc::new(store), Arc::new(Default::default()))
        }
    })
}

/// The configured fact graph (embedded SQLite or Neo4j over Bolt).
async fn fact_store(
    settings: &Settings,
    db: &std::path::Path,
) -> anyhow::Result<Arc<dyn FactStore>> {
    let s = &settings.storage;
    Ok(match s.facts {
        FactsBackend::Sqlite => Arc::new(SqliteFacts::start(db.to_owned())),
        FactsBackend::Neo4j => Arc::new(
            Neo4jFacts::from_storage(s)
                .await
                .context("opening the fact graph (storage.facts = \"neo4j\")")?,
        ),
    })
}

/// The configured job queue (embedded SQLite or Redis Streams).
async fn job_queue(settings: &Settings, db: &std::path::Path) -> anyhow::Result<Arc<dyn JobQueue>> {
    Ok(match settings.storage.jobs {
        JobsBackend::Sqlite => Arc::new(SqliteJobs::start(db.to_owned())),
        JobsBackend::Redis => Arc::new(
            RedisJobs::connect(
                settings.storage.redis_url.expose(),
                &settings.storage.redis_prefix,
                settings.storage.connect_timeout,
            )
            .await
            .context("opening the job queue (storage.jobs = \"redis\")")?,
        ),
    })
}

/// Opens the stores without starting the runtime (the `forget` command).
pub async fn open_user_data(settings: &Settings) -> anyhow::Result<UserData> {
    let db = sqlite::prepare(&settings.storage.data_dir)?;
    let (history, _) = history_store(settings, &db).await?;
    Ok(UserData {
        db: db.clone(),
        history,
        memory: memory_store(settings, &db, settings.character_ids()?)
            .await?
            .0,
        facts: fact_store(settings, &db).await?,
        jobs: job_queue(settings, &db).await?,
    })
}

pub struct App {
    user_data: UserData,
    runtime: Runtime,
    local_llm: Option<LocalServer>,
    reporter: JoinHandle<()>,
    endpoint: Option<crate::observe::Endpoint>,
    channel_log: Option<Arc<ChannelLog>>,
    store_pools: (MemoryPool, GraphPool),
    settings: Settings,
}

impl Settings {
    pub fn restart_policy(&self) -> RestartPolicy {
        RestartPolicy {
            max_restarts: self.supervision.max_restarts,
            window: self.supervision.window,
            backoff_initial: self.supervision.backoff_initial,
            backoff_max: self.supervision.backoff_max,
        }
    }

    pub fn runtime_settings(&self) -> RuntimeSettings {
        RuntimeSettings {
            shards: self.runtime.shards,
            virtual_nodes: self.runtime.virtual_nodes,
            idle_timeout: self.runtime.idle_timeout,
            max_conversations_per_shard: self.runtime.max_conversations_per_shard,
            edit_interval: self.streaming.edit_interval,
            token_budget: self.context.token_budget,
            history_turns: self.context.history_turns,
            history_deadline: self.context.history_deadline,
            profile_deadline: self.context.profile_deadline,
            classifier_deadline: self.context.classifier_deadline,
            memory: MemorySettings {
                rank: RankSettings {
                    top_k: self.memory.top_k,
                    min_similarity: self.memory.min_similarity,
                    recency_half_life: self.memory.recency_half_life,
                    recency_weight: self.memory.recency_weight,
                    importance_weight: self.memory.importance_weight,
                },
                guild_memories_in_dm: self.memory.guild_memories_in_dm,
                deadline: self.context.memory_deadline,
                chunk_words: self.memory.chunk_words,
                summarise_every: self.memory.summarise_every,
                idle_summary_min_turns: self.memory.idle_summary_min_turns,
            },
            jobs: JobSettings {
                workers: self.jobs.workers,
                lease: self.jobs.lease,
                max_attempts: self.jobs.max_attempts,
                retry_backoff: self.jobs.retry_backoff,
                retry_backoff_max: self.jobs.retry_backoff_max,
                poll_interval: self.jobs.poll_interval,
            },
            jobs_shutdown_grace: self.jobs.shutdown_grace,
            facts: FactSettings {
                extract: self.facts.extract,
                hops: self.facts.hops,
                deadline: self.context.facts_deadline,
                single_valued: self.facts.single_valued.clone(),
                min_confidence: self.facts.min_confidence,
                model: (!self.facts.model.is_empty()).then(|| self.facts.model.clone()),
            },
            tools: ToolSettings {
                enabled: self.tools.enabled,
                max_rounds: self.tools.max_rounds,
                timeout: self.tools.timeout,
                summaries: self.tools.summaries,
            },
            restart: self.restart_policy(),
            llm: LlmPolicy {
                max_concurrent: self.pools.llm_concurrency,
                queue_capacity: self.pools.llm_queue,
                first_token_timeout: self.llm.request_timeout,
                idle_timeout: self.llm.stream_idle_timeout,
                max_retries: self.llm.max_retries,
                retry_backoff: self.llm.retry_backoff,
                retry_backoff_max: self.llm.retry_backoff_max,
            },
        }
    }
}

impl App {
    /// Opens the stores, starts the model (local server if no endpoint is configured) and the
    /// runtime. Must run inside an actix `System`.
    pub async fn start(settings: Settings, characters: CharacterSet) -> anyhow::Result<App> {
        Self::start_with(settings, characters, Extras::default()).await
    }

    pub async fn start_with(
        settings: Settings,
        characters: CharacterSet,
        extras: Extras,
    ) -> anyhow::Result<App> {
        let data_dir = settings.storage.data_dir.clone();
        let db = sqlite::prepare(&data_dir)?;
        let (history, history_stats) = history_store(&settings, &db).await?;
        let (history, limiter) = redis_extras(&settings, history).await?;
        let ids = characters.ids().map(str::to_owned).collect();
        let (memory, memory_stats) = memory_store(&settings, &db, ids).await?;
        let facts = fact_store(&settings, &db).await?;
        let jobs = job_queue(&settings, &db).await?;
        // The card's MemoryActor and GraphActor pools front the stores for every backend:
        // everything that reads or writes memories and facts goes through them.
        let s = &settings.storage;
        let memory_pool_stats = Arc::new(whisper_actors::stats::PoolStats::default());
        let memory_pool =
            MemoryPool::start(memory, settings.pools.memory, memory_pool_stats.clone());
        let graph_pool_stats = Arc::new(whisper_actors::stats::PoolStats::default());
        let graph_pool = GraphPool::start(facts, settings.pools.graph, graph_pool_stats.clone());
        let memory: Arc<dyn MemoryStore> = Arc::new(memory_pool.clone());
        let facts: Arc<dyn FactStore> = Arc::new(graph_pool.clone());
        let backend = |b: &dyn std::fmt::Debug| format!("{b:?}").to_lowercase();
        let user_data = UserData {
            db: db.clone(),
            history: history.clone(),
            memory: memory.clone(),
            facts: facts.clone(),
            jobs: jobs.clone(),
        };

        let mut pools = vec![
            (format!("history ({})", backend(&s.history)), history_stats),
            (
                format!("MemoryActor ({})", backend(&s.memory)),
                memory_pool_stats,
            ),
            (
                format!("GraphActor ({})", backend(&s.facts)),
                graph_pool_stats,
            ),
        ];
        if s.memory == MemoryBackend::Sqlite {
            pools.push(("memory threads (sqlite)".to_owned(), memory_stats));
        }
        let (embedder, intents) = if settings.embedding.enabled {
            let embedder = LocalEmbedder::start(&settings.embedding, settings.pools.embedder)
                .context("loading the embedding model")?;
            let intents = if settings.classifier.enabled {
                let cache = data_dir.join("cache");
                Some(
                    classifier::load(&settings.classifier.intents, &cache, &embedder)
                        .await
                        .context("loading the fast-track intents")?,
                )
            } else {
                None
            };
            pools.push(("EmbedderActor".to_owned(), embedder.stats()));
            (
                Some(Arc::new(embedder) as Arc<dyn whisper_actors::ports::Embedder>),
                intents,
            )
        } else {
            info!("embedding.enabled = false: no fast track and no long-term memory");
            (None, None)
        };

        let local_llm = if extras.model.is_none() && settings.uses_local_llm() {
            info!("no llm.base_url configured: starting the local model server");
            Some(
                LocalServer::start(
                    &settings.llm.local,
                    settings.pools.llm_concurrency,
                    &data_dir,
                    settings.restart_policy(),
                )
                .await
                .context("starting the local model server")?,
            )
        } else {
            None
        };
        let endpoint = match (&extras.model, &local_llm) {
            (Some(_), _) => "in-process model".to_owned(),
            (None, Some(server)) => server.base_url().to_owned(),
            (None, None) => settings.llm.base_url.expose().to_owned(),
        };
        let model: Arc<dyn ChatModel> = match extras.model {
            Some(model) => model,
            None => Arc::new(
                OpenAiChat::new(
                    &endpoint,
                    settings.llm.api_key.expose(),
                    &settings.llm.model,
                )
                .context("building the HTTP client for the model endpoint")?,
            ),
        };

        // Discord bots see their guild channels' recent messages (fed by the gateway).
        let channel_context = &settings.discord.channel_context;
        let channel_log = (!settings.discord.tokens.is_empty() && channel_context.enabled)
            .then(|| Arc::new(ChannelLog::new(channel_context)));
        let mut providers = extras.providers;
        if let Some(log) = &channel_log {
            providers.push(Arc::new(ChannelContextProvider::new(
                log.clone(),
                Arc::new(Access::from(&settings.discord)),
                channel_context,
            )));
        }
        let runtime = Runtime::start(
            settings.runtime_settings(),
            RuntimeParts {
                characters,
                model,
                pools,
                history,
                extra_providers: providers,
                extra_tools: extras.tools,
                limiter,
                embedder,
                intents,
                memory: Some(memory),
                facts: Some(facts),
                jobs: Some(jobs),
            },
        );
        let stats = runtime.stats();
        info!(target: "whisperengine::status", "{}", stats.snapshot().summary_line());
        let metrics = if settings.metrics.address.is_empty() {
            None
        } else {
            let llm = endpoint.starts_with("http").then(|| endpoint.clone());
            Some(
                crate::observe::Endpoint::start(
                    &settings.metrics.address,
                    stats.clone(),
                    user_data.clone(),
                    llm,
                )
                .await?,
            )
        };
        let reporter =
            status::spawn_reporter(stats, data_dir, settings.runtime.status_interval, endpoint);
        Ok(App {
            user_data,
            runtime,
            local_llm,
            reporter,
            endpoint: metrics,
            channel_log,
            store_pools: (memory_pool, graph_pool),
            settings,
        })
    }

    pub fn router(&self) -> ShardRouter {
        self.runtime.router()
    }

    /// The guild channels' recent messages, when Discord bots with channel context run.
    pub fn channel_log(&self) -> Option<Arc<ChannelLog>> {
        self.channel_log.clone()
    }

    /// The local model server's pid, when the embedded default runs one.
    /// Where `/metrics` and `/healthz` listen, if enabled.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.endpoint.as_ref().map(|e| e.address)
    }

    pub fn local_llm_pid(&self) -> Option<u32> {
        self.local_llm.as_ref().and_then(LocalServer::pid)
    }

    /// "Forget me": drops the user's live conversations (and their caches) on every shard,
    /// then deletes their history, profile and memories.
    /// "Forget me": stops the user's conversations, lets a turn already in flight finish (it
    /// would otherwise store its turn, memories and facts behind the delete), drops queued jobs,
    /// waits out the user's running ones, then deletes every store's rows.
    pub async fn forget(&self, user: &str) -> anyhow::Result<ForgetReport> {
        self.control().forget(user, ForgetScope::All).await
    }

    /// A cheap handle for transports' user commands (forget, profile, status).
    pub fn control(&self) -> UserControl {
        UserControl {
            data: self.user_data.clone(),
            router: self.runtime.router(),
            jobs: self.runtime.jobs().cloned(),
            stats: self.runtime.stats(),
            grace: self.settings.runtime.shutdown_timeout,
            channel_log: self.channel_log.clone(),
        }
    }

    pub fn user_data(&self) -> &UserData {
        &self.user_data
    }

    /// The MemoryActor pool (every memory read and write goes through it).
    pub fn memory_pool(&self) -> &MemoryPool {
        &self.store_pools.0
    }

    /// The GraphActor pool (every fact read and write goes through it).
    pub fn graph_pool(&self) -> &GraphPool {
        &self.store_pools.1
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Drains replies in flight, then stops the runtime and the local model server.
    pub async fn shutdown(self) {
        let drained = self
            .runtime
            .shutdown(self.settings.runtime.shutdown_timeout)
            .await;
        info!(drained, "runtime stopped");
        self.store_pools.0.0.stop();
        self.store_pools.1.0.stop();
        self.reporter.abort();
        if let Some(endpoint) = self.endpoint {
            endpoint.stop();
        }
        status::clear(&self.settings.storage.data_dir);
        if let Some(server) = self.local_llm {
            server.shutdown().await;
        }
    }
}

/// What a transport's user commands need from the running app, cloneable into handlers.
#[derive(Clone)]
pub struct UserControl {
    data: UserData,
    router: ShardRouter,
    jobs: Option<Arc<whisper_actors::jobs::JobSystem>>,
    stats: Arc<whisper_actors::stats::RuntimeStats>,
    grace: Duration,
    channel_log: Option<Arc<ChannelLog>>,
}

impl UserControl {
    /// "Forget me": stops the user's conversations, lets a turn already in flight finish (it
    /// would otherwise store its turn, memories and facts behind the delete), drops queued jobs,
    /// waits out the user's running ones, then deletes what `scope` names.
    pub async fn forget(&self, user: &str, scope: ForgetScope) -> anyhow::Result<ForgetReport> {
        let forgotten = self.router.forget_user(user).await;
        if let Some(log) = &self.channel_log {
            log.forget(user);
        }
        if !forgotten.finished(self.grace).await {
            warn!(user, grace = ?self.grace, "a turn of the forgotten user is still running; deleting anyway");
        }
        let mut queued_jobs = 0;
        if let Some(jobs) = &self.jobs {
            queued_jobs = self
                .data
                .jobs
                .forget_user(user)
                .await
                .context("forgetting queued jobs")?;
            queued_jobs += jobs.forget_backlog(user);
            let deadline = tokio::time::Instant::now() + self.grace;
            while jobs.running_for(user) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let mut report = self.data.forget_scoped(user, scope).await?;
        report.jobs += queued_jobs;
        report.live_conversations = forgotten.count();
        info!(user, ?scope, %report, "user forgotten");
        Ok(report)
    }

    pub fn data(&self) -> &UserData {
        &self.data
    }

    pub fn status(&self) -> whisper_actors::stats::StatusSnapshot {
        self.stats.snapshot()
    }

    pub fn router(&self) -> &ShardRouter {
        &self.router
    }
}
