use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use whisper_actors::conversation::context::{
    ContextPiece, ContextProvider, ContextRequest, PieceKind, ProviderError, Section,
};
use whisper_actors::messages::{FailureKind, ReplyStatus};

use crate::support::app::{Client, extras, is_done, run_actix, settings, start, started, wait_for};
use crate::support::openai_server::ScriptedLlm;

/// Test hook: a context provider that panics when the message says so.
struct PanicOnDemand;

#[async_trait]
impl ContextProvider for PanicOnDemand {
    fn name(&self) -> &'static str {
        "panic-on-demand"
    }
    fn kind(&self) -> PieceKind {
        PieceKind::Section
    }
    fn deadline(&self) -> Duration {
        Duration::from_secs(1)
    }
    async fn fetch(&self, request: &ContextRequest) -> Result<ContextPiece, ProviderError> {
        if request.text.contains("PANIC") {
            panic!("test hook: injected panic");
        }
        Ok(ContextPiece::Section(Section {
            title: "Test".into(),
            body: "ok".into(),
        }))
    }
}

/// A panic mid-reply gives the user an apology, the actor restarts and the next message works;
/// past `max_restarts` the failure escalates to the shard and a fresh actor takes over.
#[test]
fn a_panicking_handler_is_restarted_then_escalated() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.supervision.max_restarts = 2;
        s.supervision.backoff_initial = Duration::from_millis(10);
        let app = start(s, extras(vec![Arc::new(PanicOnDemand)])).await;
        let mut bob = Client::new("aria", "test:bob");
        let crashed = |u: &whisper_actors::ReplyUpdate| {
            u.status == ReplyStatus::Failed(FailureKind::Crashed) && u.text.contains("Sorry")
        };

        assert!(crashed(&bob.ask(&app, "PANIC one").await));
        let reply = bob.ask(&app, "hello").await;
        assert!(is_done(&reply), "{reply:?}");
        assert_eq!(reply.text, "echo: hello");
        assert_eq!(app.runtime().status().restarts(), 1);

        assert!(crashed(&bob.ask(&app, "PANIC two").await));
        assert_eq!(app.runtime().status().restarts(), 2);
        assert!(crashed(&bob.ask(&app, "PANIC three").await));
        wait_for(&app, "the escalated actor to be dropped", |s| {
            s.escalations() == 1 && s.live_conversations() == 0
        })
        .await;
        let status = app.runtime().status();
        assert_eq!(
            (status.restarts(), status.escalations()),
            (2, 1),
            "{status:?}"
        );
        assert_eq!(
            status.live_conversations(),
            0,
            "the shard dropped the escalated actor"
        );

        let reply = bob.ask(&app, "hello again").await;
        assert!(is_done(&reply), "{reply:?}");
        assert_eq!(started(&app), 2);
        app.shutdown().await;
    });
}

/// Waits until the status shows pool `name` with `restarts` restarts.
async fn pool_restarts(app: &whisperengine::app::App, name: &str, restarts: u64) {
    for _ in 0..200 {
        let status = app.runtime().status();
        if status
            .pools
            .iter()
            .any(|p| p.name == name && p.restarts == restarts)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{name} never showed {restarts} restarts: {:?}",
        app.runtime().status().pools
    );
}

/// A panic inside a MemoryActor or GraphActor answers its caller with an error (no hang), the
/// member is restarted and counted, and the next request to the pool works.
#[test]
fn memory_and_graph_actors_survive_a_panic() {
    use whisper_actors::graph::FactStore;
    use whisper_actors::memory::MemoryStore;
    use whisper_actors::pool::InjectPanic;
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.pools.memory = 1;
        s.pools.graph = 1;
        let app = start(s, extras(vec![])).await;
        let key = whisper_actors::ConversationKey::new("aria", "test:pan");

        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            app.memory_pool().0.call(InjectPanic),
        )
        .await
        .expect("the caller is answered");
        assert!(answer.is_err());
        pool_restarts(&app, "MemoryActor (sqlite)", 1).await;
        assert!(app.memory_pool().list(&key, 5).await.is_ok(), "works again");

        let answer =
            tokio::time::timeout(Duration::from_secs(5), app.graph_pool().0.call(InjectPanic))
                .await
                .expect("the caller is answered");
        assert!(answer.is_err());
        pool_restarts(&app, "GraphActor (sqlite)", 1).await;
        assert!(
            app.graph_pool().current("test:pan").await.is_ok(),
            "works again"
        );

        // A conversation (memory search, fact lookup, remember job) still works end to end.
        let mut pan = Client::new("aria", "test:pan");
        assert!(is_done(&pan.ask(&app, "still there?").await));
        app.shutdown().await;
    });
}

/// Status lists each (pool, size) of `expected`.
fn assert_pools(app: &whisperengine::app::App, expected: &[(&str, u64)]) {
    let pools: Vec<(String, u64)> = app
        .runtime()
        .status()
        .pools
        .into_iter()
        .map(|p| (p.name, p.size))
        .collect();
    for (name, size) in expected {
        assert!(
            pools.iter().any(|(n, s)| n == name && s == size),
            "{name} {size} not in {pools:?}"
        );
    }
}

/// The pools' sizes come from `[pools]` and status names each pool with its backend.
#[test]
fn status_shows_every_pool_with_its_backend_and_size() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.pools.memory = 3;
        s.pools.graph = 2;
        s.pools.history = 4;
        s.pools.classifier = 2;
        s.jobs.workers = 3;
        let app = start(s, extras(vec![])).await;
        assert_pools(
            &app,
            &[
                ("history (sqlite)", 4),
                ("MemoryActor (sqlite)", 3),
                ("GraphActor (sqlite)", 2),
                ("memory threads (sqlite)", 3),
                ("fact threads (sqlite)", 2),
                ("EmbedderActor", 1),
                ("ClassifierActor", 2),
                ("JobWorker (sqlite)", 3),
            ],
        );
        app.shutdown().await;
    });
}

/// The same in server mode: history in PostgreSQL, facts in a Bolt graph, jobs on Redis.
#[test]
fn status_shows_server_pools_with_their_backends() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let schema = crate::stores::PgSchema::create().await;
        let graph = crate::support::arcadedb::ArcadeDb::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.pools.memory = 3;
        s.pools.graph = 2;
        s.pools.postgres = 5;
        s.pools.neo4j = 4;
        s.storage.history = whisperengine::config::HistoryBackend::Postgres;
        s.storage.postgres_url = schema.url().into();
        s.storage.jobs = whisperengine::config::JobsBackend::Redis;
        let prefix = crate::stores::RedisPrefix::new();
        s.storage.redis_prefix = prefix.0.clone();
        graph.configure(&mut s);
        let app = start(s, extras(vec![])).await;
        assert_pools(
            &app,
            &[
                ("history (postgres)", 5),
                ("MemoryActor (sqlite)", 3),
                ("GraphActor (neo4j)", 2),
                ("neo4j connections", 4),
                ("JobWorker (redis)", 2),
            ],
        );
        let mut ola = Client::new("aria", "test:ola");
        assert!(is_done(&ola.ask(&app, "hello over the servers").await));
        app.shutdown().await;
    });
}

/// A panic in the LlmActor or the ClassifierActor is caught (the arbiter's thread lives on),
/// the actor restarts and is counted, and the next message is answered normally.
#[test]
fn the_llm_and_classifier_actors_survive_a_panic() {
    use whisper_actors::pool::InjectPanic;
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), &llm.base_url());
        let app = start(s, extras(vec![])).await;
        let runtime = app.runtime();
        assert!(runtime.llm().send(InjectPanic).await.unwrap().is_err());
        let classifier = runtime.classifier().expect("the fast track runs").clone();
        assert!(classifier.call(InjectPanic).await.is_err());
        wait_for(&app, "the restarts counted", |s| {
            s.llm.restarts == 1
                && s.classifier_restarts == 1
                && s.pools
                    .iter()
                    .any(|p| p.name == "ClassifierActor" && p.restarts == 1)
        })
        .await;
        let mut kim = Client::new("aria", "test:kim");
        let reply = kim.ask(&app, "tell me about the weather tomorrow").await;
        assert!(is_done(&reply), "{reply:?}");
        let hello = kim.ask(&app, "hi!").await;
        assert!(is_done(&hello), "{hello:?}");
        app.shutdown().await;
    });
}

/// A panic in a shard's own handler is caught: the shard restarts fresh (its users'
/// conversations reload from the store), the restart is counted, and its users are answered.
#[test]
fn a_shard_survives_a_panic_and_restarts_fresh() {
    use whisper_actors::pool::InjectPanic;
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.runtime.shards = 1;
        let app = start(s, extras(vec![])).await;
        let mut lou = Client::new("aria", "test:lou");
        assert!(is_done(&lou.ask(&app, "my boat is called Saga").await));
        let shard = app.router().shards()[0].clone();
        assert!(shard.send(InjectPanic).await.unwrap().is_err());
        wait_for(&app, "the shard restart counted", |s| s.shard_restarts == 1).await;
        wait_for(&app, "a fresh shard", |s| s.live_conversations() == 0).await;
        let reply = lou.ask(&app, "what is my boat called?").await;
        assert!(is_done(&reply), "{reply:?}");
        let prompt = llm.requests().pop().unwrap().contents().join("\n");
        assert!(
            prompt.contains("my boat is called Saga"),
            "history reloaded: {prompt}"
        );
        app.shutdown().await;
    });
}

/// A panic inside an EmbedderActor (ONNX Runtime) answers with an error, the SyncArbiter builds
/// a fresh session, the restart is counted on the pool, and the next message is embedded and
/// classified again.
#[test]
fn the_embedder_survives_a_panic() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.pools.embedder = 1;
        let app = start(s, extras(vec![])).await;
        let embedder = app.embedder().expect("embeddings are on");
        assert!(embedder.inject_panic().await.is_err());
        pool_restarts(&app, "EmbedderActor", 1).await;
        // The next request to it is answered by a fresh session (built on the restart).
        use whisper_actors::ports::Embedder as _;
        let vectors = embedder.embed(vec!["hello there".into()]).await.unwrap();
        assert_eq!(vectors[0].len(), embedder.dimensions());
        let mut ida = Client::new("aria", "test:ida");
        let hello = ida.ask(&app, "hi!").await;
        assert!(is_done(&hello), "{hello:?}");
        let route = match &hello.status {
            ReplyStatus::Done(timings) => timings.route,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            route,
            Some(whisper_actors::classifier::Route::Fast),
            "the fresh session embeds and the classifier routes"
        );
        app.shutdown().await;
    });
}
