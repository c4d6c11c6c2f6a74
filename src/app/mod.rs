//! Wiring: turns a validated configuration into a running runtime with its adapters.
//!
//! Used by every command that serves users (`chat` now, the Discord transport later) and by
//! the integration tests and benchmarks, so they all exercise the same assembly.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use whisper_actors::conversation::context::ContextProvider;
use whisper_actors::ports::{ChatModel, Embedder, HistoryStore};
use whisper_actors::stats::PoolStats;
use whisper_actors::{CharacterSet, Runtime, RuntimeParts, ShardRouter};

use crate::classifier;
use crate::config::{MemoryBackend, Settings};
use crate::embed::LocalEmbedder;
use crate::llm::local_server::LocalServer;
use crate::llm::openai::OpenAiChat;
use crate::status;
use crate::store::sqlite::{self};
use crate::transport::discord::channel::{ChannelContextProvider, ChannelLog};
use crate::transport::discord::policy::Access;
use whisper_actors::graph::GraphPool;
use whisper_actors::limits::RateLimiter;
use whisper_actors::memory::MemoryPool;
use whisper_actors::tools::Tool;

mod control;
pub mod reload;
mod settings;
mod stores;

pub use control::{ForgetReport, ForgetScope, UserControl, UserData};
pub use stores::open_user_data;
use stores::{fact_store, history_store, job_queue, limiter_for, memory_store, redis_extras};

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
    /// A clock to use instead of the system's (tests of the ages the prompt shows).
    pub clock: Option<Arc<dyn whisper_actors::clock::Clock>>,
}

/// Everything the app is made of, opened and wired but not yet serving. Built apart from
/// running, so a store that cannot be opened stops startup before any conversation exists.
struct Topology {
    history_resize: stores::Resizer,
    /// The Discord access rules in force.
    access: whisper_actors::live::Live<Access>,
    /// The DiscordActors' counters, by character.
    discord: std::collections::HashMap<String, Arc<PoolStats>>,
    user_data: UserData,
    /// Every pool the status shows, labelled `kind (backend)`.
    pools: Vec<(String, Arc<PoolStats>)>,
    history: Arc<dyn HistoryStore>,
    limiter: Arc<whisper_actors::limits::LiveLimiter>,
    redis_cache: Option<stores::RedisPool>,
    store_pools: (MemoryPool, GraphPool),
    embedder: Option<Arc<LocalEmbedder>>,
    intents: Option<whisper_actors::classifier::IntentSet>,
    local_llm: Option<LocalServer>,
    /// Where the model is served (for logs and the health check).
    endpoint: String,
    model: Arc<dyn ChatModel>,
    channel_log: Option<Arc<ChannelLog>>,
    providers: Vec<Arc<dyn ContextProvider>>,
    tools: Vec<Arc<dyn Tool>>,
    clock: Option<Arc<dyn whisper_actors::clock::Clock>>,
}

impl Topology {
    async fn build(
        settings: &Settings,
        characters: &CharacterSet,
        extras: Extras,
    ) -> anyhow::Result<Topology> {
        let db = sqlite::prepare(&settings.storage.data_dir)?;
        let (history, history_stats, history_resize) = history_store(settings, &db).await?;
        let (history, redis_cache) = redis_extras(settings, history).await?;
        let limiter = Arc::new(whisper_actors::limits::LiveLimiter::new(limiter_for(
            settings,
            redis_cache.as_ref(),
        )));
        let ids = characters.ids().map(str::to_owned).collect();
        let (memory, memory_stats) = memory_store(settings, &db, ids).await?;
        let (facts, fact_pool) = fact_store(settings, &db).await?;
        let jobs = job_queue(settings, &db).await?;
        // The card's MemoryActor and GraphActor pools front the stores for every backend:
        // everything that reads or writes memories and facts goes through them.
        let s = &settings.storage;
        let memory_pool_stats = Arc::new(PoolStats::default());
        let memory_pool = MemoryPool::start(
            memory,
            settings.pools.memory,
            memory_pool_stats.clone(),
            settings.restart_policy(),
        );
        let graph_pool_stats = Arc::new(PoolStats::default());
        let graph_pool = GraphPool::start(
            facts,
            settings.pools.graph,
            graph_pool_stats.clone(),
            settings.restart_policy(),
        );
        let user_data = UserData {
            db,
            history: history.clone(),
            memory: Arc::new(memory_pool.clone()),
            facts: Arc::new(graph_pool.clone()),
            jobs,
        };
        let backend = |b: &dyn std::fmt::Debug| format!("{b:?}").to_lowercase();
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
        pools.push(fact_pool);
        // One DiscordActor per bot token, started by the transport; counted from here.
        let discord: std::collections::HashMap<String, Arc<PoolStats>> = settings
            .discord
            .tokens
            .keys()
            .map(|character| (character.clone(), Arc::new(PoolStats::default())))
            .collect();
        for (character, stats) in &discord {
            pools.push((format!("DiscordActor ({character})"), stats.clone()));
        }
        let (embedder, intents) = embedder(settings, &mut pools).await?;
        let (local_llm, endpoint, model) = model(settings, extras.model).await?;
        // Discord bots see their guild channels' recent messages (fed by the gateway).
        let channel_context = &settings.discord.channel_context;
        let channel_log = (!settings.discord.tokens.is_empty() && channel_context.enabled)
            .then(|| Arc::new(ChannelLog::new(channel_context)));
        let access = whisper_actors::live::Live::new(Access::from(&settings.discord));
        let mut providers = extras.providers;
        if let Some(log) = &channel_log {
            providers.push(Arc::new(ChannelContextProvider::new(
                log.clone(),
                access.clone(),
                channel_context,
            )));
        }
        Ok(Topology {
            history_resize,
            access,
            discord,
            user_data,
            pools,
            history,
            limiter,
            redis_cache,
            store_pools: (memory_pool, graph_pool),
            embedder,
            intents,
            local_llm,
            endpoint,
            model,
            channel_log,
            providers,
            tools: extras.tools,
            clock: extras.clock,
        })
    }
}

/// The embedding model and the fast-track intents (embedded once at startup, cached).
async fn embedder(
    settings: &Settings,
    pools: &mut Vec<(String, Arc<PoolStats>)>,
) -> anyhow::Result<(
    Option<Arc<LocalEmbedder>>,
    Option<whisper_actors::classifier::IntentSet>,
)> {
    if !settings.embedding.enabled {
        info!("embedding.enabled = false: no fast track and no long-term memory");
        return Ok((None, None));
    }
    let embedder = LocalEmbedder::start(&settings.embedding, settings.pools.embedder)
        .context("loading the embedding model")?;
    let intents = if settings.classifier.enabled {
        let cache = settings.storage.data_dir.join("cache");
        Some(
            classifier::load(&settings.classifier.intents, &cache, &embedder)
                .await
                .context("loading the fast-track intents")?,
        )
    } else {
        None
    };
    pools.push(("EmbedderActor".to_owned(), embedder.stats()));
    Ok((Some(Arc::new(embedder)), intents))
}

/// The chat model: the configured endpoint, or a supervised local model server when none is
/// configured, or (benchmarks) an in-process model.
async fn model(
    settings: &Settings,
    in_process: Option<Arc<dyn ChatModel>>,
) -> anyhow::Result<(Option<LocalServer>, String, Arc<dyn ChatModel>)> {
    if let Some(model) = in_process {
        return Ok((None, "in-process model".to_owned(), model));
    }
    let local_llm = if settings.uses_local_llm() {
        info!("no llm.base_url configured: starting the local model server");
        Some(
            LocalServer::start(
                &settings.llm.local,
                settings.llm_concurrency(),
                &settings.storage.data_dir,
                settings.restart_policy(),
            )
            .await
            .context("starting the local model server")?,
        )
    } else {
        None
    };
    let endpoint = match &local_llm {
        Some(server) => server.base_url().to_owned(),
        None => settings.llm.base_url.expose().to_owned(),
    };
    let model = OpenAiChat::new(
        &endpoint,
        settings.llm.api_key.expose(),
        &settings.llm.model,
    )
    .context("building the HTTP client for the model endpoint")?;
    Ok((local_llm, endpoint, Arc::new(model)))
}

pub struct App {
    user_data: UserData,
    runtime: Runtime,
    local_llm: Option<LocalServer>,
    reporter: JoinHandle<()>,
    endpoint: Option<crate::observe::Endpoint>,
    channel_log: Option<Arc<ChannelLog>>,
    store_pools: (MemoryPool, GraphPool),
    discord: std::collections::HashMap<String, Arc<PoolStats>>,
    embedder: Option<Arc<LocalEmbedder>>,
    /// As started: what restart-only keys mean for this process.
    settings: Settings,
    /// The configuration in force: the startup one with every applied reload's live keys.
    in_force: std::sync::Mutex<(Settings, CharacterSet)>,
    reloads: std::sync::atomic::AtomicU64,
    /// The Discord access rules in force (`[discord]` lists are live).
    access: whisper_actors::live::Live<Access>,
    /// A cluster member's role and partitions, for the status file.
    cluster_status: status::ClusterSlot,
    /// Resizes the history store's pool (SQLite threads or PostgreSQL connections).
    history_resize: stores::Resizer,
    /// The intents file as the classifier in force read it.
    intents_text: std::sync::Mutex<Option<String>>,
    /// `[limits]` in force, and the Redis pool a rebuilt limiter counts in.
    limits: (
        Arc<whisper_actors::limits::LiveLimiter>,
        Option<stores::RedisPool>,
    ),
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
        let topology = Topology::build(&settings, &characters, extras).await?;
        Self::run(settings, characters, topology).await
    }

    /// Starts the runtime over a built topology, then the metrics endpoint and status reporter.
    async fn run(settings: Settings, characters: CharacterSet, t: Topology) -> anyhow::Result<App> {
        let characters_in_force = characters.clone();
        let runtime = Runtime::start(
            settings.runtime_settings(),
            RuntimeParts {
                characters,
                model: t.model,
                pools: t.pools,
                history: t.history,
                extra_providers: t.providers,
                extra_tools: t.tools,
                limiter: Some(t.limiter.clone() as Arc<dyn RateLimiter>),
                embedder: t.embedder.clone().map(|e| e as Arc<dyn Embedder>),
                intents: t.intents,
                memory: Some(t.user_data.memory.clone()),
                facts: Some(t.user_data.facts.clone()),
                jobs: Some(t.user_data.jobs.clone()),
                jobs_backend: format!("{:?}", settings.storage.jobs).to_lowercase(),
                clock: t.clock,
            },
        );
        let stats = runtime.stats();
        stats.config_generation.set(1);
        stats
            .config_loaded_at_ms
            .set(whisper_actors::clock::unix_ms() as u64);
        info!(target: "whisperengine::status", "{}", stats.snapshot().summary_line());
        let metrics = if settings.metrics.address.is_empty() {
            None
        } else {
            let llm = t.endpoint.starts_with("http").then(|| t.endpoint.clone());
            Some(
                crate::observe::Endpoint::start(
                    &settings.metrics.address,
                    stats.clone(),
                    t.user_data.clone(),
                    llm,
                )
                .await?,
            )
        };
        // Model loading left free pages in the heap.
        crate::heap::trim();
        let cluster_status: status::ClusterSlot = Default::default();
        let reporter = status::spawn_reporter(
            stats,
            settings.storage.data_dir.clone(),
            settings.runtime.status_interval,
            t.endpoint,
            cluster_status.clone(),
        );
        Ok(App {
            user_data: t.user_data,
            runtime,
            local_llm: t.local_llm,
            reporter,
            endpoint: metrics,
            channel_log: t.channel_log,
            store_pools: t.store_pools,
            discord: t.discord,
            embedder: t.embedder,
            in_force: std::sync::Mutex::new((settings.clone(), characters_in_force)),
            limits: (t.limiter, t.redis_cache),
            cluster_status,
            history_resize: t.history_resize,
            access: t.access,
            intents_text: std::sync::Mutex::new(
                std::fs::read_to_string(&settings.classifier.intents).ok(),
            ),
            reloads: Default::default(),
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

    /// The EmbedderActor pool, when embeddings are enabled.
    pub fn embedder(&self) -> Option<&Arc<LocalEmbedder>> {
        self.embedder.as_ref()
    }

    /// The counters of `character`'s DiscordActor (shown in status with every pool).
    pub fn discord_stats(&self, character: &str) -> Arc<PoolStats> {
        self.discord.get(character).cloned().unwrap_or_default()
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Where a cluster member reports its partitions (shown by `status`).
    pub fn cluster_status(&self) -> status::ClusterSlot {
        self.cluster_status.clone()
    }

    /// The Discord access rules in force; a reload swaps them.
    pub fn access(&self) -> whisper_actors::live::Live<Access> {
        self.access.clone()
    }

    /// Re-reads the configuration layers `source` names and the character files, and applies
    /// what changed while conversations go on (see [`reload`]). A file with any error changes
    /// nothing. The outcome is logged and written to `<data_dir>/reload.json`, where
    /// `whisperengine reload` reads it.
    pub async fn reload(&self, source: &crate::config::Overrides) -> reload::ReloadOutcome {
        use std::sync::atomic::Ordering;
        let attempt = self.reloads.fetch_add(1, Ordering::SeqCst) + 1;
        let (running, running_characters) = self.in_force.lock().expect("config lock").clone();
        let stats = self.runtime.stats();
        let planned = match reload::plan(source, &running, &running_characters) {
            Ok(plan) => match self.reload_intents(&plan.settings).await {
                Ok(intents) => Ok((plan, intents)),
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        let outcome = match planned {
            Err(error) => {
                warn!(error = %format!("{error:#}"), "reload rejected; nothing changed");
                reload::ReloadOutcome::rejected(attempt, stats.config_generation.get(), &error)
            }
            Ok((mut plan, intents)) => {
                if let Some((set, text)) = intents {
                    self.runtime.set_intents(set);
                    *self.intents_text.lock().expect("intents lock") = Some(text);
                    if !plan.changes.iter().any(|c| c.key == "classifier.intents") {
                        plan.changes.push(reload::Change {
                            key: "classifier.intents".into(),
                            from: "the file as loaded".into(),
                            to: "its edited examples and thresholds".into(),
                            live: true,
                        });
                    }
                }
                let mut in_force = running.clone();
                let mut retune = false;
                for change in plan.live() {
                    retune |= self.apply(&change.key, &plan, &mut in_force).await;
                }
                if retune {
                    self.runtime.retune(&in_force.runtime_settings());
                }
                let characters = if plan
                    .changes
                    .iter()
                    .any(|c| c.key.starts_with("characters."))
                {
                    self.runtime.set_characters(plan.characters.clone());
                    plan.characters.clone()
                } else {
                    running_characters
                };
                if plan.live().next().is_some() {
                    stats.config_generation.inc();
                    stats
                        .config_loaded_at_ms
                        .set(whisper_actors::clock::unix_ms() as u64);
                }
                *self.in_force.lock().expect("config lock") = (in_force, characters);
                for change in &plan.changes {
                    let effect = if change.live {
                        "applied"
                    } else {
                        "needs a restart"
                    };
                    info!(key = %change.key, from = %change.from, to = %change.to, effect, "configuration changed");
                }
                reload::ReloadOutcome::applied(attempt, stats.config_generation.get(), plan.changes)
            }
        };
        outcome.write(&self.settings.storage.data_dir);
        outcome
    }

    /// The intents file again, when it (or its path) changed and the classifier runs: embedded
    /// and validated before anything is applied, so a broken file changes nothing.
    async fn reload_intents(
        &self,
        new: &Settings,
    ) -> anyhow::Result<Option<(whisper_actors::classifier::IntentSet, String)>> {
        let (Some(embedder), true) = (&self.embedder, new.classifier.enabled) else {
            return Ok(None);
        };
        if self.runtime.classifier().is_none() {
            return Ok(None);
        }
        let path = &new.classifier.intents;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("key `classifier.intents`: cannot read {}", path.display()))?;
        if self.intents_text.lock().expect("intents lock").as_deref() == Some(text.as_str()) {
            return Ok(None);
        }
        let cache = new.storage.data_dir.join("cache");
        let set = classifier::load(path, &cache, embedder.as_ref())
            .await
            .with_context(|| format!("loading the fast-track intents from {}", path.display()))?;
        Ok(Some((set, text)))
    }

    /// Applies one live key from `plan` and records it in `in_force`; true when the key is
    /// one [`Runtime::retune`] applies (once, after all of them are recorded).
    async fn apply(&self, key: &str, plan: &reload::ReloadPlan, in_force: &mut Settings) -> bool {
        let new = &plan.settings;
        match key {
            "runtime.idle_timeout" => in_force.runtime.idle_timeout = new.runtime.idle_timeout,
            "runtime.max_conversations_per_shard" => {
                in_force.runtime.max_conversations_per_shard =
                    new.runtime.max_conversations_per_shard
            }
            k if k.starts_with("streaming.") => in_force.streaming = new.streaming.clone(),
            k if k.starts_with("context.") => in_force.context = new.context.clone(),
            k if k.starts_with("memory.") => {
                let (m, n) = (&mut in_force.memory, &new.memory);
                m.top_k = n.top_k;
                m.min_similarity = n.min_similarity;
                m.recency_half_life = n.recency_half_life;
                m.recency_weight = n.recency_weight;
                m.importance_weight = n.importance_weight;
                m.fusion_k = n.fusion_k;
            }
            k if k.starts_with("limits.") => {
                in_force.limits = new.limits.clone();
                // A new limiter starts its windows afresh.
                let (live, redis) = &self.limits;
                live.set(limiter_for(in_force, redis.as_ref()));
                return false;
            }
            k if k.starts_with("discord.") => {
                let (d, n) = (&mut in_force.discord, &new.discord);
                d.ignore_bots = n.ignore_bots;
                d.dm_policy = n.dm_policy;
                d.dm_allowlist = n.dm_allowlist.clone();
                d.open_channels = n.open_channels.clone();
                d.allowed_channels = n.allowed_channels.clone();
                d.blocked_channels = n.blocked_channels.clone();
                d.allowed_users = n.allowed_users.clone();
                d.blocked_users = n.blocked_users.clone();
                d.allowed_roles = n.allowed_roles.clone();
                d.blocked_roles = n.blocked_roles.clone();
                d.admins = n.admins.clone();
                self.access.set(Access::from(&*d));
                return false;
            }
            "classifier.intents" => {
                // Loaded and swapped with the file's contents above.
                in_force.classifier.intents = new.classifier.intents.clone();
                return false;
            }
            "facts.hops" => in_force.facts.hops = new.facts.hops,
            "facts.token_budget" => in_force.facts.token_budget = new.facts.token_budget,
            _ => {
                self.apply_sized(key, new, in_force).await;
                return false;
            }
        }
        true
    }

    /// Applies a size: shards, a pool, LLM admission.
    async fn apply_sized(&self, key: &str, new: &Settings, in_force: &mut Settings) {
        match key {
            "runtime.shards" => {
                let report = self
                    .runtime
                    .resize_shards(new.runtime.shards as usize)
                    .await;
                info!(
                    from = report.from,
                    to = report.to,
                    moved = report.moved,
                    "shards resized"
                );
                in_force.runtime.shards = new.runtime.shards;
            }
            "pools.memory" => {
                self.store_pools.0.0.resize(new.pools.memory);
                in_force.pools.memory = new.pools.memory;
            }
            "pools.history" if new.storage.history == crate::config::HistoryBackend::Sqlite => {
                (self.history_resize)(new.pools.history);
                in_force.pools.history = new.pools.history;
            }
            "pools.postgres" if new.storage.history == crate::config::HistoryBackend::Postgres => {
                (self.history_resize)(new.pools.postgres);
                in_force.pools.postgres = new.pools.postgres;
            }
            "pools.embedder" => {
                if let Some(embedder) = &self.embedder {
                    embedder.resize(new.pools.embedder);
                }
                in_force.pools.embedder = new.pools.embedder;
            }
            "jobs.workers" => {
                self.runtime.resize_job_workers(new.jobs.workers);
                in_force.jobs.workers = new.jobs.workers;
            }
            "pools.history" | "pools.postgres" => {
                // The other backend's size: nothing runs with it.
                in_force.pools.history = new.pools.history;
                in_force.pools.postgres = new.pools.postgres;
            }
            "pools.graph" => {
                self.store_pools.1.0.resize(new.pools.graph);
                in_force.pools.graph = new.pools.graph;
            }
            "pools.classifier" => {
                if let Some(pool) = self.runtime.classifier() {
                    pool.resize(new.pools.classifier);
                }
                in_force.pools.classifier = new.pools.classifier;
            }
            "pools.llm_concurrency" | "pools.llm_queue" => {
                let resize = whisper_actors::llm::ResizeLlm {
                    max_concurrent: new.llm_concurrency(),
                    queue_capacity: new.pools.llm_queue,
                };
                let _ = self.runtime.llm().send(resize).await;
                in_force.pools.llm_concurrency = new.pools.llm_concurrency;
                in_force.pools.llm_queue = new.pools.llm_queue;
            }
            other => warn!(
                key = other,
                "a live key without an apply step; it takes effect at restart"
            ),
        }
    }

    /// Drains replies in flight, then stops the runtime and the local model server.
    pub async fn shutdown(self) {
        let report = self
            .runtime
            .shutdown(self.settings.runtime.shutdown_timeout)
            .await;
        if report.drained() {
            info!("runtime stopped; everything drained");
        } else {
            warn!(%report, "runtime stopped");
        }
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
