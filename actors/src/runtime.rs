//! Assembling and stopping the actor topology.
//!
//! ```text
//! transport ──route──▶ ShardRouter ──Route──▶ Shard[i] (arbiter i) ──▶ ConversationActor(char, user)
//!                                                                       │ context providers (parallel)
//!                                                                       │ Generate ──▶ LlmActor (own arbiter)
//!                                                                       └ ReplyUpdate ──▶ transport
//! ```

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::future::join_all;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::character::CharacterSet;
use crate::classifier::{ClassifierActor, ClassifierProvider, IntentSet};
use crate::conversation::context::Deadlines;
use crate::conversation::context::{ContextProvider, HistoryProvider, ProfileProvider};
use crate::conversation::{ConversationDeps, ConversationSettings};
use crate::graph::{FactExtraction, FactProvider, FactStore, FactTuning};
use crate::jobs::{JobHandler, JobQueue, JobSettings, JobSystem, JobWorker};
use crate::live::Live;
use crate::llm::{LlmActor, LlmPolicy};
use crate::memory::{
    DescribeImageHandler, MemoryProvider, MemorySettings, MemoryStore, RememberTurnHandler,
    SummariseHandler,
};
use crate::pool::Pool;
use crate::ports::{ChatModel, Embedder, HistoryStore};
use crate::routing::ring::HashRing;
use crate::routing::router::{Placement, ShardRouter};
use crate::routing::shard::{Drain, Rebalance, Releasing, Shard, ShardSettings};
pub use crate::shutdown::ShutdownReport;
use crate::stats::{PoolStats, RuntimeStats, StatusSnapshot};
use crate::supervision::RestartPolicy;
use crate::tools::{LookupFacts, RecallSummaries, SearchMemories, Tool, Toolbox};

#[derive(Clone, Debug)]
pub struct RuntimeSettings {
    pub shards: u32,
    pub virtual_nodes: u32,
    pub idle_timeout: Duration,
    pub max_conversations_per_shard: usize,
    pub edit_interval: Duration,
    pub token_budget: usize,
    /// What one image costs in the prompt budget (`context.image_tokens`).
    pub image_tokens: usize,
    pub history_turns: usize,
    pub history_deadline: Duration,
    pub profile_deadline: Duration,
    pub classifier_deadline: Duration,
    /// ClassifierActors in the pool (`pools.classifier`).
    pub classifier_pool: usize,
    pub memory: MemorySettings,
    pub jobs: JobSettings,
    /// On shutdown, how long queued background jobs may take to finish (they are durable:
    /// whatever is left runs at the next start).
    pub jobs_shutdown_grace: Duration,
    pub facts: FactSettings,
    pub tools: ToolSettings,
    pub restart: RestartPolicy,
    pub llm: LlmPolicy,
}

/// The pluggable parts: stores, model and any extra context providers.
pub struct RuntimeParts {
    pub characters: CharacterSet,
    pub history: Arc<dyn HistoryStore>,
    pub model: Arc<dyn ChatModel>,
    /// Providers beyond history, profile and the classifier (memories, facts...).
    pub extra_providers: Vec<Arc<dyn ContextProvider>>,
    /// Embeds incoming messages; without it there is no classifier or memory search.
    pub embedder: Option<Arc<dyn Embedder>>,
    /// Fast-track intents (needs `embedder`).
    pub intents: Option<IntentSet>,
    /// Long-term vector memory (needs `embedder`).
    pub memory: Option<Arc<dyn MemoryStore>>,
    /// The user's fact graph.
    pub facts: Option<Arc<dyn FactStore>>,
    /// The durable job queue for background work.
    pub jobs: Option<Arc<dyn JobQueue>>,
    /// The queue's backend, for the JobWorker pool's label in status.
    pub jobs_backend: String,
    /// Tools beyond the built-in ones (memories, facts, summaries).
    pub extra_tools: Vec<Arc<dyn Tool>>,
    /// Per-user message limits (none: unlimited).
    pub limiter: Option<Arc<dyn crate::limits::RateLimiter>>,
    /// Worker pools the adapters run, shown in status.
    pub pools: Vec<(String, Arc<PoolStats>)>,
    /// Where conversations read the time (`None`: the system clock).
    pub clock: Option<Arc<dyn crate::clock::Clock>>,
}

/// How facts are extracted and recalled.
#[derive(Clone, Debug)]
pub struct FactSettings {
    pub extract: bool,
    pub hops: usize,
    /// What the facts section may take of the prompt, in tokens.
    pub token_budget: usize,
    pub deadline: Duration,
    pub single_valued: Vec<String>,
    pub min_confidence: f32,
    /// Model for extraction; `None` uses the endpoint's default.
    pub model: Option<String>,
}

/// Which tools the model may call on the full path, and how.
#[derive(Clone, Debug)]
pub struct ToolSettings {
    pub enabled: bool,
    /// Model rounds that may call tools in one turn (0: tools off).
    pub max_rounds: u32,
    /// Deadline for each tool call.
    pub timeout: Duration,
    /// Summaries `recall_summaries` returns.
    pub summaries: usize,
}

pub struct Runtime {
    jobs: Option<(Arc<JobSystem>, Duration)>,
    router: ShardRouter,
    stats: Arc<RuntimeStats>,
    arbiters: Vec<Arbiter>,
    /// One per shard, in shard order (a resize adds and stops them).
    shard_arbiters: Arc<std::sync::Mutex<Vec<Arbiter>>>,
    /// What a shard started by a resize needs.
    shard_start: (Arc<ConversationDeps>, Live<ShardSettings>, u32),
    /// One resize at a time.
    resizing: Arc<tokio::sync::Mutex<()>>,
    tunables: Tunables,
    job_workers: Option<JobWorkers>,
    llm: Addr<LlmActor>,
    classifier: Option<Pool<ClassifierActor>>,
}

/// The background job workers, on one arbiter; each with its retirement flag.
struct JobWorkers {
    arbiter: Arbiter,
    system: Arc<JobSystem>,
    retire: std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>,
}

impl JobWorkers {
    fn resize(&self, workers: usize) {
        let mut retire = self.retire.lock().expect("workers lock");
        while retire.len() < workers {
            let flag: Arc<std::sync::atomic::AtomicBool> = Default::default();
            let (system, flag2) = (self.system.clone(), flag.clone());
            Supervisor::start_in_arbiter(&self.arbiter.handle(), move |_| {
                JobWorker::retirable(system, flag2)
            });
            retire.push(flag);
        }
        while retire.len() > workers {
            let flag = retire.pop().expect("non-empty");
            flag.store(true, std::sync::atomic::Ordering::Release);
        }
        // Idle workers wait for a poll or a wake-up: retired ones notice at once.
        self.system.wake.notify_waiters();
        self.system.stats.size.set(workers as u64);
    }
}

/// The settings a reload changes in place (see [`Runtime::retune`]).
struct Tunables {
    intents: Option<Live<IntentSet>>,
    rank: Live<crate::memory::RankSettings>,
    facts: Live<FactTuning>,
    deadlines: Live<Deadlines>,
    shard: Live<ShardSettings>,
}

/// What a resize did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResizeReport {
    pub from: usize,
    pub to: usize,
    /// Live conversations whose key the new ring places on another shard (the busy ones
    /// finish their messages where they are; the idle ones reload on their next message).
    pub moved: usize,
    pub live: usize,
}

impl Runtime {
    /// Starts the shards and the LLM actor. Must be called inside a running actix `System`.
    pub fn start(settings: RuntimeSettings, parts: RuntimeParts) -> Runtime {
        let job_stats = Arc::new(PoolStats::default());
        let classifier_stats = Arc::new(PoolStats::default());
        let mut pools = parts.pools;
        let classifies = parts.intents.is_some() && parts.embedder.is_some();
        if classifies {
            pools.push(("ClassifierActor".to_owned(), classifier_stats.clone()));
        }
        if parts.jobs.is_some() {
            pools.push((
                format!("JobWorker ({})", parts.jobs_backend),
                job_stats.clone(),
            ));
        }
        let stats = Arc::new(RuntimeStats::new(settings.shards as usize, pools));
        let clock = parts
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(crate::clock::SystemClock));

        let llm_arbiter = Arbiter::new();
        let (model, policy, llm_stats) = (parts.model, settings.llm.clone(), stats.clone());
        let llm = Supervisor::start_in_arbiter(&llm_arbiter.handle(), move |_| {
            LlmActor::new(model, policy, llm_stats)
        });

        let mut providers: Vec<Arc<dyn ContextProvider>> = vec![
            Arc::new(HistoryProvider {
                store: parts.history.clone(),
                limit: settings.history_turns,
                deadline: settings.history_deadline,
            }),
            Arc::new(ProfileProvider {
                store: parts.history.clone(),
                deadline: settings.profile_deadline,
            }),
        ];
        let mut classifier_addr = None;
        let mut live_intents = None;
        if let Some(intents) = parts.intents.filter(|_| classifies) {
            let intents = Live::new(intents);
            live_intents = Some(intents.clone());
            let counted = stats.clone();
            let classifier = Pool::start(
                "ClassifierActor",
                settings.classifier_pool,
                classifier_stats,
                settings.restart.clone(),
                move |restarts| {
                    ClassifierActor::counted(intents.clone(), counted.clone(), restarts)
                },
            );
            classifier_addr = Some(classifier.clone());
            providers.push(Arc::new(ClassifierProvider {
                classifier,
                deadline: settings.classifier_deadline,
            }));
        }
        let tunables = Tunables {
            rank: Live::new(settings.memory.rank.clone()),
            facts: Live::new(FactTuning {
                hops: settings.facts.hops,
                token_budget: settings.facts.token_budget,
            }),
            deadlines: Live::new(Deadlines::new()),
            intents: live_intents,
            shard: Live::new(ShardSettings {
                idle_timeout: settings.idle_timeout,
                max_conversations: settings.max_conversations_per_shard,
            }),
        };
        let memory = parts.memory.filter(|_| parts.embedder.is_some());
        if let Some(store) = &memory {
            providers.push(Arc::new(MemoryProvider {
                store: store.clone(),
                facts: parts.facts.clone(),
                rank: tunables.rank.clone(),
                guild_memories_in_dm: settings.memory.guild_memories_in_dm,
                deadline: settings.memory.deadline,
                clock: clock.clone(),
            }));
        }
        if let Some(store) = &parts.facts {
            providers.push(Arc::new(FactProvider {
                store: store.clone(),
                tuning: tunables.facts.clone(),
                deadline: settings.facts.deadline,
            }));
        }
        providers.extend(parts.extra_providers);

        let mut tools: Vec<Arc<dyn Tool>> = Vec::new();
        if settings.tools.enabled {
            if let (Some(store), Some(embedder)) = (&memory, &parts.embedder) {
                tools.push(Arc::new(SearchMemories {
                    store: store.clone(),
                    embedder: embedder.clone(),
                    rank: tunables.rank.clone(),
                    guild_memories_in_dm: settings.memory.guild_memories_in_dm,
                    clock: clock.clone(),
                }));
                tools.push(Arc::new(RecallSummaries {
                    store: store.clone(),
                    embedder: embedder.clone(),
                    guild_memories_in_dm: settings.memory.guild_memories_in_dm,
                    limit: settings.tools.summaries,
                    clock: clock.clone(),
                }));
            }
            if let Some(store) = &parts.facts {
                tools.push(Arc::new(LookupFacts {
                    store: store.clone(),
                    hops: settings.facts.hops,
                }));
            }
            tools.extend(parts.extra_tools);
        }
        let toolbox = Toolbox::new(tools, settings.tools.max_rounds, settings.tools.timeout);

        let jobs = parts.jobs.map(|queue| {
            let mut handlers: Vec<Arc<dyn JobHandler>> = Vec::new();
            if let (Some(store), Some(embedder)) = (&memory, &parts.embedder) {
                handlers.push(Arc::new(RememberTurnHandler {
                    store: store.clone(),
                    embedder: embedder.clone(),
                    chunk_words: settings.memory.chunk_words,
                }));
            }
            if let (Some(store), Some(embedder)) = (&memory, &parts.embedder) {
                handlers.push(Arc::new(DescribeImageHandler {
                    store: store.clone(),
                    embedder: embedder.clone(),
                    llm: llm.clone(),
                }));
                handlers.push(Arc::new(SummariseHandler {
                    history: parts.history.clone(),
                    store: store.clone(),
                    embedder: embedder.clone(),
                    llm: llm.clone(),
                    model: settings.facts.model.clone(),
                }));
            }
            if let Some(store) = &parts.facts {
                handlers.push(Arc::new(FactExtraction {
                    llm: llm.clone(),
                    store: store.clone(),
                    model: settings.facts.model.clone(),
                    single_valued: settings.facts.single_valued.clone(),
                    min_confidence: settings.facts.min_confidence,
                }));
            }
            JobSystem::new(queue, handlers, settings.jobs.clone(), job_stats)
        });

        let characters: crate::character::LiveCharacters =
            Arc::new(arc_swap::ArcSwap::from_pointee(parts.characters));
        let deps = Arc::new(ConversationDeps {
            clock: clock.clone(),
            characters: characters.clone(),
            embedder: parts.embedder,
            memory,
            jobs: jobs.clone(),
            extract_facts: settings.facts.extract && parts.facts.is_some(),
            summarise_every: Some(settings.memory.summarise_every),
            summarise_when_idle: settings.memory.idle_summary_min_turns,
            providers,
            tools: (!toolbox.is_empty()).then(|| Arc::new(toolbox)),
            limiter: parts.limiter,
            history: parts.history,
            llm: llm.clone(),
            settings: arc_swap::ArcSwap::from_pointee(conversation_settings(&settings)),
            deadlines: tunables.deadlines.clone(),
            stats: stats.clone(),
        });
        let shard_settings = tunables.shard.clone();

        let arbiters = vec![llm_arbiter];
        let mut shards = Vec::with_capacity(settings.shards as usize);
        let mut shard_arbiters = Vec::with_capacity(settings.shards as usize);
        for id in 0..settings.shards as usize {
            let (arbiter, shard) = start_shard(id, &deps, &shard_settings);
            shards.push(shard);
            shard_arbiters.push(arbiter);
        }
        let job_workers = jobs.as_ref().map(|system| {
            let workers = JobWorkers {
                arbiter: Arbiter::new(),
                system: system.clone(),
                retire: std::sync::Mutex::new(Vec::new()),
            };
            workers.resize(settings.jobs.workers);
            workers
        });
        let ring = HashRing::new(settings.shards, settings.virtual_nodes);
        let router = ShardRouter::new(ring, shards, characters.clone(), stats.clone());
        info!(
            shards = settings.shards,
            llm_concurrency = settings.llm.max_concurrent,
            "runtime started"
        );
        Runtime {
            jobs: jobs.map(|j| (j, settings.jobs_shutdown_grace)),
            router,
            stats,
            arbiters,
            shard_arbiters: Arc::new(std::sync::Mutex::new(shard_arbiters)),
            shard_start: (deps, shard_settings, settings.virtual_nodes),
            tunables,
            job_workers,
            resizing: Arc::new(tokio::sync::Mutex::new(())),
            llm,
            classifier: classifier_addr,
        }
    }

    /// Re-shards to `shards` shards while conversations go on: new shards start at once, the
    /// router switches to the new ring, and every conversation whose key moved is handed over
    /// (its in-flight and queued messages answered where they are, in order, before its new
    /// shard starts it). Removed shards stop once they hold nothing. Returns when the ring is
    /// switched; the hand-over finishes in the background (see [`Self::resize_settled`]).
    pub async fn resize_shards(&self, shards: usize) -> ResizeReport {
        let _one_at_a_time = self.resizing.lock().await;
        // A previous hand-over finishes first: two overlapping ones would need two rings.
        self.settle().await;
        let current = self.router.placement();
        let from = current.shards.len();
        let shards = shards.clamp(1, 1024);
        let (deps, shard_settings, virtual_nodes) = &self.shard_start;
        let ring = Arc::new(HashRing::new(shards as u32, *virtual_nodes));
        let mut all: Vec<Addr<Shard>> = current.shards.to_vec();
        for id in from..shards {
            let (arbiter, shard) = start_shard(id, deps, shard_settings);
            all.push(shard);
            self.shard_arbiters
                .lock()
                .expect("arbiters lock")
                .push(arbiter);
        }
        let live = self.stats.snapshot().live_conversations() as usize;
        let moved = if from == shards {
            0
        } else {
            let counts = join_all(all.iter().enumerate().map(|(i, s)| {
                s.send(Rebalance {
                    ring: ring.clone(),
                    me: (i < shards).then_some(i as u32),
                })
            }));
            self.router.set_placement(Placement {
                ring: ring.clone(),
                shards: all[..shards].to_vec().into(),
                handover: Some(all.clone().into()),
            });
            counts.await.into_iter().map(|r| r.unwrap_or(0)).sum()
        };
        info!(from, to = shards, live, moved, "re-sharded");
        ResizeReport {
            from,
            to: shards,
            moved,
            live,
        }
    }

    /// Waits until the last resize's hand-over is done: no shard holds a conversation it no
    /// longer owns, removed shards are drained and stopped, and messages stop carrying the
    /// hand-over list.
    pub async fn resize_settled(&self) {
        let _one_at_a_time = self.resizing.lock().await;
        self.settle().await;
    }

    async fn settle(&self) {
        let placement = self.router.placement();
        let Some(all) = placement.handover.clone() else {
            return;
        };
        loop {
            let releasing = join_all(all.iter().map(|s| s.send(Releasing))).await;
            if releasing.into_iter().all(|r| r.unwrap_or(0) == 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let keep = placement.shards.len();
        for removed in all.iter().skip(keep) {
            let (tx, rx) = oneshot::channel();
            removed.do_send(Drain(tx));
            let _ = rx.await;
        }
        self.router.set_placement(Placement {
            ring: placement.ring.clone(),
            shards: placement.shards.clone(),
            handover: None,
        });
        let mut arbiters = self.shard_arbiters.lock().expect("arbiters lock");
        let keep = keep.min(arbiters.len());
        for arbiter in arbiters.drain(keep..) {
            arbiter.stop();
        }
        self.stats.retain_shards(keep);
    }

    /// Applies the live parts of `settings` to the running runtime: streaming cadence, token
    /// budget, history length, provider deadlines, memory ranking, fact selection, idle and
    /// conversation limits. Each turn reads them when it starts; shards at their next sweep.
    /// (Shards, pools and LLM admission have their own calls.)
    pub fn retune(&self, settings: &RuntimeSettings) {
        self.shard_start
            .0
            .settings
            .store(Arc::new(conversation_settings(settings)));
        self.tunables.rank.set(settings.memory.rank.clone());
        self.tunables.facts.set(FactTuning {
            hops: settings.facts.hops,
            token_budget: settings.facts.token_budget,
        });
        self.tunables.deadlines.set(Deadlines::from([
            ("history", settings.history_deadline),
            ("profile", settings.profile_deadline),
            ("classifier", settings.classifier_deadline),
            ("memory", settings.memory.deadline),
            ("facts", settings.facts.deadline),
        ]));
        self.tunables.shard.set(ShardSettings {
            idle_timeout: settings.idle_timeout,
            max_conversations: settings.max_conversations_per_shard,
        });
    }

    /// Runs `workers` background job workers (`jobs.workers`): more start at once; retired
    /// ones finish the job they run first.
    pub fn resize_job_workers(&self, workers: usize) {
        if let Some(pool) = &self.job_workers {
            pool.resize(workers);
        }
    }

    /// Swaps the fast-track intents (examples and thresholds) every ClassifierActor uses.
    /// False when the runtime has no classifier (`classifier.enabled` changes need a restart).
    pub fn set_intents(&self, intents: IntentSet) -> bool {
        match &self.tunables.intents {
            Some(live) => {
                live.set(intents);
                true
            }
            None => false,
        }
    }

    /// Swaps the character set: a conversation reads its persona at its next message; a
    /// removed character's messages are refused by the router (and logged by the transport).
    pub fn set_characters(&self, characters: CharacterSet) {
        self.shard_start.0.characters.store(Arc::new(characters));
    }

    /// The LlmActor (admission to the model).
    pub fn llm(&self) -> &Addr<LlmActor> {
        &self.llm
    }

    /// The ClassifierActor pool, when the fast track runs.
    pub fn classifier(&self) -> Option<&Pool<ClassifierActor>> {
        self.classifier.as_ref()
    }

    /// The background job system, if the runtime has a queue.
    pub fn jobs(&self) -> Option<&Arc<JobSystem>> {
        self.jobs.as_ref().map(|(jobs, _)| jobs)
    }

    pub fn router(&self) -> ShardRouter {
        self.router.clone()
    }

    pub fn stats(&self) -> Arc<RuntimeStats> {
        self.stats.clone()
    }

    pub fn status(&self) -> StatusSnapshot {
        self.stats.snapshot()
    }

    /// Graceful stop: refuse new messages, wait (up to `timeout`) until every accepted message
    /// has been answered and stored, then stop the arbiters. Returns whether it drained fully.
    pub async fn shutdown(self, timeout: Duration) -> ShutdownReport {
        self.router.stop_accepting();
        let deadline = tokio::time::Instant::now() + timeout;
        let shards = self.router.all_shards();
        let drains = shards.iter().enumerate().map(|(shard, addr)| {
            let (tx, rx) = oneshot::channel();
            addr.do_send(Drain(tx));
            async move {
                tokio::time::timeout_at(deadline, rx)
                    .await
                    .is_err()
                    .then_some(shard)
            }
        });
        let mut report = ShutdownReport {
            undrained_shards: join_all(drains).await.into_iter().flatten().collect(),
            ..Default::default()
        };
        if !report.undrained_shards.is_empty() {
            warn!(?timeout, shards = ?report.undrained_shards, "shutdown timed out with replies still in flight on these shards");
        }
        if let Some((jobs, grace)) = &self.jobs {
            let deadline = tokio::time::Instant::now() + *grace;
            loop {
                match jobs.queue.counts().await {
                    Ok(c) if c.ready + c.leased == 0 => break,
                    Ok(c) if tokio::time::Instant::now() >= deadline => {
                        info!(
                            ready = c.ready,
                            leased = c.leased,
                            "background jobs left for the next start"
                        );
                        report.jobs_left = c.ready + c.leased;
                        break;
                    }
                    Err(_) => break,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            report.jobs_lost = jobs.backlog_len();
            if report.jobs_lost > 0 {
                error!(
                    kept = report.jobs_lost,
                    "the job queue stayed unavailable: jobs kept in memory are lost with this process"
                );
            }
        }
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
        for arbiter in self.shard_arbiters.lock().expect("arbiters lock").iter() {
            arbiter.stop();
        }
        if let Some(workers) = &self.job_workers {
            workers.arbiter.stop();
        }
        report
    }
}

/// Starts shard `id` under a Supervisor on an arbiter of its own.
fn start_shard(
    id: usize,
    deps: &Arc<ConversationDeps>,
    settings: &Live<ShardSettings>,
) -> (Arbiter, Addr<Shard>) {
    let arbiter = Arbiter::new();
    let (deps, settings) = (deps.clone(), settings.clone());
    let shard =
        Supervisor::start_in_arbiter(&arbiter.handle(), move |_| Shard::new(id, deps, settings));
    (arbiter, shard)
}

fn conversation_settings(settings: &RuntimeSettings) -> ConversationSettings {
    ConversationSettings {
        edit_interval: settings.edit_interval,
        token_budget: settings.token_budget,
        image_tokens: settings.image_tokens,
        history_turns: settings.history_turns,
        restart: settings.restart.clone(),
        memory_chunk_words: settings.memory.chunk_words,
    }
}
