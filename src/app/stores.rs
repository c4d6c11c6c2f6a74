//! Store selection: which backend serves history, memories, facts and jobs, from the
//! configuration, opened and waited for.

use std::sync::Arc;

use whisper_actors::stats::PoolStats;

#[cfg(not(feature = "server"))]
use crate::store::not_built;
#[cfg(feature = "server")]
use anyhow::Context as _;
use whisper_actors::memory::MemoryStore;
use whisper_actors::ports::HistoryStore;

use crate::config::{FactsBackend, HistoryBackend, JobsBackend, MemoryBackend, Settings};
#[cfg(feature = "server")]
use crate::store::neo4j::Neo4jFacts;
#[cfg(feature = "server")]
use crate::store::postgres::PgHistory;
#[cfg(feature = "server")]
use crate::store::qdrant::QdrantMemory;
#[cfg(feature = "server")]
use crate::store::redis::cache::{CachedHistory, RedisRateLimiter};
#[cfg(feature = "server")]
use crate::store::redis::jobs::RedisJobs;
use crate::store::sqlite::facts::SqliteFacts;
use crate::store::sqlite::jobs::SqliteJobs;
use crate::store::sqlite::memory::SqliteMemory;
use crate::store::sqlite::{self, SqliteHistory};
use whisper_actors::graph::FactStore;
use whisper_actors::jobs::JobQueue;
use whisper_actors::limits::{LocalRateLimiter, RateLimiter};

use super::control::UserData;

/// The Redis pool the cache and the shared rate limiter use; in a build without the server
/// backends there is none to have (`config::load` refuses `storage.redis_cache` there).
#[cfg(feature = "server")]
pub(crate) type RedisPool = deadpool_redis::Pool;
#[cfg(not(feature = "server"))]
pub(crate) type RedisPool = std::convert::Infallible;

/// The configured history store (embedded SQLite or PostgreSQL) and its pool's stats.
/// Resizes a store's pool live (`pools.history` / `pools.postgres`).
pub(super) type Resizer = Arc<dyn Fn(usize) + Send + Sync>;

pub(super) async fn history_store(
    settings: &Settings,
    db: &std::path::Path,
) -> anyhow::Result<(
    Arc<dyn HistoryStore>,
    Arc<whisper_actors::stats::PoolStats>,
    Resizer,
)> {
    Ok(match settings.storage.history {
        HistoryBackend::Sqlite => {
            let store = Arc::new(SqliteHistory::start(db.to_owned(), settings.pools.history));
            let stats = store.stats();
            let handle = store.clone();
            (store, stats, Arc::new(move |n| handle.resize(n)))
        }
        #[cfg(not(feature = "server"))]
        HistoryBackend::Postgres => return Err(not_built("storage.history = \"postgres\"")),
        #[cfg(feature = "server")]
        HistoryBackend::Postgres => {
            let store = PgHistory::connect(
                settings.storage.postgres_url.expose(),
                settings.pools.postgres,
                settings.storage.connect_timeout,
            )
            .await
            .context("opening the history store (storage.history = \"postgres\")")?;
            let store = Arc::new(store);
            let stats = store.stats();
            let handle = store.clone();
            (store, stats, Arc::new(move |n| handle.resize(n)))
        }
    })
}

/// With `storage.redis_cache`: profiles cached in Redis and rate limits counted there; else the
/// history store as is and an in-process limiter.
pub(super) async fn redis_extras(
    settings: &Settings,
    history: Arc<dyn HistoryStore>,
) -> anyhow::Result<(Arc<dyn HistoryStore>, Option<RedisPool>)> {
    let s = &settings.storage;
    if !s.redis_cache {
        return Ok((history, None));
    }
    #[cfg(not(feature = "server"))]
    return Err(not_built("storage.redis_cache = true"));
    #[cfg(feature = "server")]
    {
        let pool = crate::store::redis::jobs::pool(
            s.redis_url.expose(),
            settings.pools.redis,
            s.connect_timeout,
        )
        .await
        .context("opening the Redis cache (storage.redis_cache = true)")?;
        let cached = CachedHistory::new(history, pool.clone(), &s.redis_prefix, s.cache_ttl);
        Ok((Arc::new(cached), Some(pool)))
    }
}

/// The limiter `[limits]` asks for: counted in Redis when the Redis cache is on (shared by
/// every bot process), else in process; none when `messages_per_window` is 0.
pub(super) fn limiter_for(
    settings: &Settings,
    redis: Option<&RedisPool>,
) -> Option<Arc<dyn RateLimiter>> {
    let limits = &settings.limits;
    if limits.messages_per_window == 0 {
        return None;
    }
    let limiter: Arc<dyn RateLimiter> = match redis {
        #[cfg(not(feature = "server"))]
        Some(never) => match *never {},
        #[cfg(feature = "server")]
        Some(pool) => Arc::new(RedisRateLimiter::new(
            pool.clone(),
            &settings.storage.redis_prefix,
            limits.messages_per_window,
            limits.window,
        )),
        None => Arc::new(LocalRateLimiter::new(
            limits.messages_per_window as usize,
            limits.window,
        )),
    };
    Some(for_transports(limiter, limits))
}

fn for_transports(
    limiter: Arc<dyn RateLimiter>,
    limits: &crate::config::LimitsSection,
) -> Arc<dyn RateLimiter> {
    Arc::new(whisper_actors::limits::ForTransports::new(
        limiter,
        limits.transports.clone(),
    ))
}

/// The configured vector memory (embedded SQLite or Qdrant) and its pool's stats.
pub(super) async fn memory_store(
    settings: &Settings,
    db: &std::path::Path,
    characters: Vec<String>,
) -> anyhow::Result<(Arc<dyn MemoryStore>, Arc<whisper_actors::stats::PoolStats>)> {
    let s = &settings.storage;
    #[cfg(not(feature = "server"))]
    let _ = characters;
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
        #[cfg(not(feature = "server"))]
        MemoryBackend::Qdrant | MemoryBackend::Postgres => {
            return Err(not_built("storage.memory"));
        }
        #[cfg(feature = "server")]
        MemoryBackend::Qdrant => {
            let store = QdrantMemory::from_storage(s, characters)
                .await
                .context("opening the vector memory (storage.memory = \"qdrant\")")?;
            (Arc::new(store), Arc::new(Default::default()))
        }
        #[cfg(feature = "server")]
        MemoryBackend::Postgres => {
            let store = crate::store::postgres::memory::PgMemory::connect(
                s.postgres_url.expose(),
                settings.pools.postgres,
                s.connect_timeout,
            )
            .await
            .context("opening the vector memory (storage.memory = \"postgres\", needs pgvector)")?;
            let stats = store.stats();
            (Arc::new(store), stats)
        }
    })
}

/// The configured fact graph (embedded SQLite or Neo4j over Bolt) and its worker or
/// connection pool, labelled for status.
pub(super) async fn fact_store(
    settings: &Settings,
    db: &std::path::Path,
) -> anyhow::Result<(Arc<dyn FactStore>, (String, Arc<PoolStats>))> {
    let s = &settings.storage;
    Ok(match s.facts {
        FactsBackend::Sqlite => {
            let store = SqliteFacts::start(db.to_owned(), settings.pools.graph);
            let stats = store.stats();
            (Arc::new(store), ("fact threads (sqlite)".to_owned(), stats))
        }
        #[cfg(not(feature = "server"))]
        FactsBackend::Neo4j => return Err(not_built("storage.facts = \"neo4j\"")),
        #[cfg(feature = "server")]
        FactsBackend::Neo4j => {
            let store = Neo4jFacts::from_storage(s, settings.pools.neo4j)
                .await
                .context("opening the fact graph (storage.facts = \"neo4j\")")?;
            // neo4rs keeps its pool to itself: the size is what it may open.
            let stats = Arc::new(PoolStats::default());
            stats.size.set(settings.pools.neo4j as u64);
            (Arc::new(store), ("neo4j connections".to_owned(), stats))
        }
    })
}

/// The configured job queue (embedded SQLite or Redis Streams).
pub(super) async fn job_queue(
    settings: &Settings,
    db: &std::path::Path,
) -> anyhow::Result<Arc<dyn JobQueue>> {
    Ok(match settings.storage.jobs {
        JobsBackend::Sqlite => Arc::new(SqliteJobs::start(db.to_owned())),
        #[cfg(not(feature = "server"))]
        JobsBackend::Redis => return Err(not_built("storage.jobs = \"redis\"")),
        #[cfg(feature = "server")]
        JobsBackend::Redis => Arc::new(
            RedisJobs::connect(
                settings.storage.redis_url.expose(),
                &settings.storage.redis_prefix,
                settings.pools.redis,
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
    let (history, _, _) = history_store(settings, &db).await?;
    Ok(UserData {
        db: db.clone(),
        history,
        memory: memory_store(settings, &db, settings.character_ids()?)
            .await?
            .0,
        facts: fact_store(settings, &db).await?.0,
        jobs: job_queue(settings, &db).await?,
    })
}
