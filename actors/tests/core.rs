//! The core crate's own tests: real actors (routed pools, job workers) over in-memory doubles.

mod doubles;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use whisper_actors::jobs::{
    Fate, Job, JobError, JobHandler, JobKind, JobQueue, JobSettings, JobSystem, JobWorker, NewJob,
};
use whisper_actors::key::{ConversationKey, Scope};
use whisper_actors::memory::{MemoryChunk, MemoryKind, MemoryPool, MemoryQuery, MemoryStore};
use whisper_actors::pool::InjectPanic;
use whisper_actors::stats::PoolStats;
use whisper_actors::supervision::RestartPolicy;

use doubles::{MemoryQueue, MemoryVec};

/// Panics on a payload that says so, succeeds otherwise.
struct PanicOnDemand;

#[async_trait]
impl JobHandler for PanicOnDemand {
    fn kind(&self) -> JobKind {
        JobKind::Summarise
    }
    async fn run(&self, job: &Job) -> Result<(), JobError> {
        if job.payload.contains("PANIC") {
            panic!("test hook: a job handler panicked");
        }
        Ok(())
    }
}

fn job(id: &str, payload: &str) -> NewJob {
    NewJob {
        id: id.into(),
        kind: JobKind::Summarise,
        user: "u".into(),
        payload: payload.into(),
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A panicking job fails like any failure (retried, then dead-lettered), the worker is counted
/// as restarted and goes on to run the next job.
#[actix_rt::test]
async fn a_job_worker_survives_a_panicking_job() {
    use actix::Actor;
    let queue = Arc::new(MemoryQueue::default());
    let stats = Arc::new(PoolStats::default());
    let settings = JobSettings {
        workers: 1,
        lease: Duration::from_secs(30),
        max_attempts: 2,
        retry_backoff: Duration::from_millis(1),
        retry_backoff_max: Duration::from_millis(1),
        poll_interval: Duration::from_millis(5),
    };
    let system = JobSystem::new(
        queue.clone() as Arc<dyn JobQueue>,
        vec![Arc::new(PanicOnDemand)],
        settings,
        stats.clone(),
    );
    system.submit(job("bad", "PANIC")).await.unwrap();
    system.submit(job("good", "fine")).await.unwrap();
    let _worker = JobWorker::new(system.clone()).start();

    until("both jobs to be settled", || {
        queue.acked.lock().unwrap().len() == 1 && queue.failed.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(*queue.acked.lock().unwrap(), ["good"]);
    let fates: Vec<_> = queue.failed.lock().unwrap().iter().map(|f| f.2).collect();
    assert_eq!(
        fates,
        [Fate::RetryIn(Duration::from_millis(1)), Fate::DeadLetter]
    );
    assert!(queue.failed.lock().unwrap()[0].1.contains("panicked"));
    assert_eq!(
        stats.restarts.get(),
        2,
        "each panicking run counts a restart"
    );
}

fn policy(max_restarts: u32) -> RestartPolicy {
    RestartPolicy {
        max_restarts,
        window: Duration::from_secs(10),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(40),
    }
}

fn chunk(user: &str, vector: [f32; 2]) -> MemoryChunk {
    MemoryChunk {
        key: ConversationKey::new("aria", user),
        scope: Scope::Direct,
        kind: MemoryKind::Message,
        group: format!("{user}:1"),
        chunk: 0,
        text: format!("{user} likes tea"),
        importance: 0.5,
        created_at_ms: 1,
        vector: Arc::from(&vector[..]),
    }
}

/// A panic inside a MemoryActor answers its caller with an error, the member restarts (counted)
/// and the pool keeps serving, with every member still routed to.
#[actix_rt::test]
async fn a_memory_pool_member_restarts_after_a_panic() {
    let stats = Arc::new(PoolStats::default());
    let pool = MemoryPool::start(Arc::new(MemoryVec::default()), 2, stats.clone(), policy(3));
    assert_eq!(stats.size.get(), 2);
    pool.add(vec![chunk("ann", [1.0, 0.0]), chunk("bob", [1.0, 0.0])])
        .await
        .unwrap();
    assert!(
        pool.0.call(InjectPanic).await.is_err(),
        "the panic answers with an error"
    );
    until("the restart to be counted", || stats.restarts.get() == 1).await;
    for _ in 0..4 {
        let found = pool
            .search(MemoryQuery {
                text: String::new(),
                key: ConversationKey::new("aria", "ann"),
                scopes: whisper_actors::memory::AllowedScopes::for_scope(&Scope::Direct, false),
                vector: Arc::from(&[1.0f32, 0.0][..]),
                limit: 5,
            })
            .await
            .unwrap();
        let texts: Vec<_> = found.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["ann likes tea"], "one user's memories only");
    }
    assert_eq!(stats.queue_depth.get(), 0);
}

/// Past its restart budget a member escalates to its pool, which replaces it with a fresh one;
/// a restart inside the budget waits out its backoff, holding (not failing) the next request.
#[actix_rt::test]
async fn a_member_past_its_budget_is_replaced_by_the_pool() {
    let stats = Arc::new(PoolStats::default());
    let pool = MemoryPool::start(Arc::new(MemoryVec::default()), 1, stats.clone(), policy(1));
    // Timed from before the panic: the backoff starts after it, however late this task runs.
    let started = std::time::Instant::now();
    assert!(pool.0.call(InjectPanic).await.is_err());
    pool.add(vec![chunk("ann", [1.0, 0.0])]).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(20),
        "the restarted member waited out its backoff before serving"
    );
    assert_eq!((stats.restarts.get(), stats.escalations.get()), (1, 0));

    assert!(pool.0.call(InjectPanic).await.is_err());
    until("the escalation", || stats.escalations.get() == 1).await;
    let listed = pool
        .list(&ConversationKey::new("aria", "ann"), 5)
        .await
        .expect("the fresh member serves");
    assert_eq!(listed.len(), 1, "the store behind the pool kept its data");
    assert_eq!(stats.restarts.get(), 2);
}

/// A store whose every add takes a while, and that counts its calls.
#[derive(Default)]
struct SlowMemory {
    inner: MemoryVec,
    adds: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl MemoryStore for SlowMemory {
    async fn add(&self, chunks: Vec<MemoryChunk>) -> Result<(), whisper_actors::ports::StoreError> {
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.adds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.add(chunks).await
    }
    async fn search(
        &self,
        query: MemoryQuery,
    ) -> Result<Vec<whisper_actors::memory::Candidate>, whisper_actors::ports::StoreError> {
        self.inner.search(query).await
    }
    async fn list(
        &self,
        key: &ConversationKey,
        limit: usize,
    ) -> Result<Vec<whisper_actors::memory::Candidate>, whisper_actors::ports::StoreError> {
        self.inner.list(key, limit).await
    }
    async fn forget_user(&self, user: &str) -> Result<u64, whisper_actors::ports::StoreError> {
        self.inner.forget_user(user).await
    }
}

/// A pool shrunk while every member is busy answers everything it already held; one grown
/// serves from its new members at once.
#[actix_rt::test]
async fn a_pool_resized_while_busy_finishes_what_it_holds() {
    let stats = Arc::new(PoolStats::default());
    let store = Arc::new(SlowMemory::default());
    let pool = MemoryPool::start(store.clone(), 4, stats.clone(), policy(3));
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.add(vec![chunk(&format!("u{i}"), [1.0, 0.0])]).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    pool.0.resize(1);
    assert_eq!(stats.size.get(), 1);
    for call in calls {
        call.await
            .unwrap()
            .expect("answered although its member retired");
    }
    assert_eq!(store.adds.load(std::sync::atomic::Ordering::SeqCst), 40);
    pool.0.resize(3);
    assert_eq!((pool.0.size(), stats.size.get()), (3, 3));
    pool.add(vec![chunk("after", [1.0, 0.0])]).await.unwrap();
}
