//! One contract per store trait, run against every implementation: the embedded SQLite one and
//! the server one (PostgreSQL on this machine, in a schema of its own per test).
//!
//! One file on purpose: the contracts and the stores they run against are read side by side;
//! each contract is one function and each store one short test calling it.

use std::sync::Arc;
use std::time::Duration;

use whisper_actors::jobs::{Fate, JobQueue, NewJob, QueueCounts};
use whisper_actors::ports::{HistoryStore, Turn};
use whisper_actors::{ConversationKey, Scope};
use whisperengine::store::postgres::PgHistory;
use whisperengine::store::redis::jobs::RedisJobs;
use whisperengine::store::sqlite::jobs::SqliteJobs;
use whisperengine::store::sqlite::{self, SqliteHistory};

use crate::support::app::{Client, extras, is_done, run_actix, settings, start};
use crate::support::openai_server::ScriptedLlm;
pub use crate::support::servers::{PgSchema, RedisPrefix};

fn turn(key: &ConversationKey, scope: Scope, n: i64) -> Turn {
    Turn {
        key: key.clone(),
        scope,
        user_message: format!("m{n}"),
        reply: format!("r{n}"),
        created_at_ms: 1_000 + n * 10,
        replied_at_ms: 1_005 + n * 10,
        message_id: None,
    }
}

async fn history_contract(store: Arc<dyn HistoryStore>) {
    let a = ConversationKey::new("aria", "u:a");
    let a_marlowe = ConversationKey::new("marlowe", "u:a");
    let b = ConversationKey::new("aria", "u:b");
    assert!(
        store
            .recent_turns(&a, &Scope::Direct, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.profile("u:a").await.unwrap(), None);

    for n in 0..5 {
        store
            .record_turn(&turn(&a, Scope::Direct, n), "Ann")
            .await
            .unwrap();
    }
    store
        .record_turn(&turn(&a, Scope::Guild(1), 100), "Ann")
        .await
        .unwrap();
    store
        .record_turn(&turn(&a_marlowe, Scope::Direct, 200), "Annie")
        .await
        .unwrap();
    store
        .record_turn(&turn(&b, Scope::Direct, 300), "Bo")
        .await
        .unwrap();

    let texts = |turns: Vec<Turn>| {
        turns
            .into_iter()
            .map(|t| t.user_message)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        texts(store.recent_turns(&a, &Scope::Direct, 3).await.unwrap()),
        ["m2", "m3", "m4"],
        "the newest, oldest first"
    );
    assert_eq!(
        texts(store.recent_turns(&a, &Scope::Guild(1), 10).await.unwrap()),
        ["m100"]
    );
    assert!(
        store
            .recent_turns(&a, &Scope::Guild(2), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        texts(
            store
                .recent_turns(&a_marlowe, &Scope::Direct, 10)
                .await
                .unwrap()
        ),
        ["m200"]
    );
    let full = store.recent_turns(&a, &Scope::Direct, 1).await.unwrap();
    assert_eq!(full, vec![turn(&a, Scope::Direct, 4)]);

    let profile = store.profile("u:a").await.unwrap().unwrap();
    assert_eq!(
        profile.message_count, 7,
        "one profile across characters and scopes"
    );
    assert_eq!(profile.display_name, "Annie");
    assert_eq!(profile.first_seen_ms, 1_000);
    assert_eq!(profile.last_seen_ms, 1_005 + 200 * 10);

    assert_eq!(store.forget_user("u:a").await.unwrap(), (7, 1));
    assert!(
        store
            .recent_turns(&a, &Scope::Direct, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.profile("u:a").await.unwrap(), None);
    assert_eq!(
        store.profile("u:b").await.unwrap().unwrap().message_count,
        1
    );
    assert_eq!(store.forget_user("u:a").await.unwrap(), (0, 0));

    // A turn recorded again for the same Discord message (answered again after a crash) is
    // stored, and counted in the profile, once; turns without a message id always are.
    let d = ConversationKey::new("aria", "discord:7");
    let once = Turn {
        message_id: Some(1_190_000_000_000_000_001),
        ..turn(&d, Scope::Guild(5), 1)
    };
    store.record_turn(&once, "Dee").await.unwrap();
    store
        .record_turn(
            &Turn {
                reply: "the same message, answered again".into(),
                ..once.clone()
            },
            "Dee",
        )
        .await
        .unwrap();
    let plain = turn(&d, Scope::Guild(5), 2);
    store.record_turn(&plain, "Dee").await.unwrap();
    store.record_turn(&plain, "Dee").await.unwrap();
    let stored = store.recent_turns(&d, &Scope::Guild(5), 10).await.unwrap();
    let replies: Vec<&str> = stored.iter().map(|t| t.reply.as_str()).collect();
    assert_eq!(
        replies,
        ["r1", "r2", "r2"],
        "the first answer is the one kept"
    );
    assert_eq!(
        store
            .profile("discord:7")
            .await
            .unwrap()
            .unwrap()
            .message_count,
        3
    );
    store.forget_user("discord:7").await.unwrap();
}

#[test]
fn the_sqlite_history_store_meets_the_contract() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite::prepare(dir.path()).unwrap();
        history_contract(Arc::new(SqliteHistory::start(db, 2))).await;
    });
}

#[test]
fn the_postgres_history_store_meets_the_contract() {
    run_actix(|| async {
        let schema = PgSchema::create().await;
        let store = PgHistory::connect(&schema.url(), 4, Duration::from_secs(5))
            .await
            .unwrap();
        history_contract(Arc::new(store)).await;
        // Connecting again finds the schema migrated and changes nothing.
        PgHistory::connect(&schema.url(), 1, Duration::from_secs(5))
            .await
            .unwrap();
    });
}

/// A server that is not there is named, with its URL, after `storage.connect_timeout`.
#[test]
fn an_unreachable_postgres_is_a_clear_startup_error() {
    run_actix(|| async {
        let error = PgHistory::connect(
            "postgres://bot:hunter2@127.0.0.1:1/whisper",
            1,
            Duration::from_millis(500),
        )
        .await
        .err()
        .expect("no server on port 1");
        let text = error.to_string();
        assert!(
            text.contains("postgres at postgres://bot:***@127.0.0.1:1/whisper"),
            "{text}"
        );
        assert!(!text.contains("hunter2"));
    });
}

/// The whole bot with its history in PostgreSQL: a conversation survives a restart.
#[test]
fn the_bot_keeps_history_in_postgres_when_configured() {
    run_actix(|| async {
        let schema = PgSchema::create().await;
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.storage.history = whisperengine::config::HistoryBackend::Postgres;
        s.storage.postgres_url = schema.url().into();
        s.classifier.enabled = false;
        let app = start(s.clone(), extras(vec![])).await;
        let mut pia = Client::new("aria", "test:pia");
        assert!(is_done(&pia.ask(&app, "remember the blue umbrella").await));
        app.shutdown().await;

        let app = start(s, extras(vec![])).await;
        let mut pia = Client::new("aria", "test:pia");
        assert!(is_done(&pia.ask(&app, "what did I say?").await));
        let prompt = llm.requests().pop().unwrap().contents().join("\n");
        assert!(prompt.contains("remember the blue umbrella"), "{prompt}");
        app.shutdown().await;
        let (client, conn) = tokio_postgres::connect(&schema.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let n: i64 = client
            .query_one("SELECT COUNT(*) FROM turns WHERE user_id = 'test:pia'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
    });
}

fn counts(ready: u64, leased: u64, dead: u64) -> QueueCounts {
    QueueCounts {
        ready,
        leased,
        dead,
    }
}

fn new_job(id: &str, user: &str) -> NewJob {
    NewJob {
        id: id.into(),
        kind: whisper_actors::jobs::JobKind::Summarise,
        user: user.into(),
        payload: format!("payload of {id}"),
    }
}

async fn jobs_contract(q: Arc<dyn JobQueue>) {
    let long = Duration::from_secs(60);
    // Idempotent ids.
    assert!(q.enqueue(new_job("a", "u1")).await.unwrap());
    assert!(
        !q.enqueue(new_job("a", "u1")).await.unwrap(),
        "the same id is stored once"
    );
    assert!(q.enqueue(new_job("b", "u2")).await.unwrap());
    assert_eq!(q.counts().await.unwrap(), counts(2, 0, 0));

    // Leases: each job to one worker at a time.
    let first = q.lease(long).await.unwrap().unwrap();
    let second = q.lease(long).await.unwrap().unwrap();
    assert!(q.lease(long).await.unwrap().is_none());
    let mut ids = vec![first.id.clone(), second.id.clone()];
    ids.sort();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!((first.attempt, second.attempt), (1, 1));
    assert_eq!(first.payload, format!("payload of {}", first.id));
    assert_eq!(q.counts().await.unwrap(), counts(0, 2, 0));
    q.ack(&first.id).await.unwrap();
    assert_eq!(q.counts().await.unwrap(), counts(0, 1, 0));

    // A failure retries after its backoff, then dead-letters.
    q.fail(&second, "boom", Fate::RetryIn(Duration::from_millis(300)))
        .await
        .unwrap();
    assert!(q.lease(long).await.unwrap().is_none(), "not due yet");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = q.lease(long).await.unwrap().expect("due again");
    assert_eq!((again.id.as_str(), again.attempt), (second.id.as_str(), 2));
    q.fail(&again, "boom again", Fate::DeadLetter)
        .await
        .unwrap();
    assert_eq!(q.counts().await.unwrap(), counts(0, 0, 1));
    assert!(q.lease(long).await.unwrap().is_none());
    assert!(
        !q.enqueue(new_job(&second.id, "u2")).await.unwrap(),
        "a dead id is still known"
    );

    // A lease that is not acked in time makes the job due again (its worker died).
    let short = Duration::from_millis(200);
    q.enqueue(new_job("c", "u1")).await.unwrap();
    let c = q.lease(short).await.unwrap().unwrap();
    assert!(q.lease(short).await.unwrap().is_none(), "still leased");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let c2 = q.lease(short).await.unwrap().expect("lease expired");
    assert_eq!((c2.id.as_str(), c2.attempt), ("c", 2));
    assert_eq!(c.id, c2.id);
    q.ack("c").await.unwrap();

    // Forget: queued, leased and dead jobs of the user go; others stay.
    q.enqueue(new_job("d", "u1")).await.unwrap();
    q.enqueue(new_job("e", "u1")).await.unwrap();
    q.enqueue(new_job("f", "u3")).await.unwrap();
    let leased = q.lease(long).await.unwrap().unwrap();
    assert_eq!(q.forget_user("u2").await.unwrap(), 1, "the dead letter");
    let expected_u1 = 2;
    assert_eq!(q.forget_user("u1").await.unwrap(), expected_u1);
    let remaining = q.counts().await.unwrap();
    if leased.user == "u3" {
        assert_eq!(remaining, counts(0, 1, 0));
    } else {
        assert_eq!(remaining, counts(1, 0, 0));
        let f = q.lease(long).await.unwrap().unwrap();
        assert_eq!(f.id, "f");
    }
    assert_eq!(q.forget_user("u1").await.unwrap(), 0);
}

#[test]
fn the_sqlite_job_queue_meets_the_contract() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite::prepare(dir.path()).unwrap();
        jobs_contract(Arc::new(SqliteJobs::start(db))).await;
    });
}

#[test]
fn the_redis_job_queue_meets_the_contract() {
    run_actix(|| async {
        let prefix = RedisPrefix::new();
        let queue = RedisJobs::connect(
            "redis://127.0.0.1:6379",
            &prefix.0,
            4,
            Duration::from_secs(5),
        )
        .await
        .expect("Redis on 127.0.0.1:6379");
        jobs_contract(Arc::new(queue)).await;
    });
}

/// The whole bot with its jobs on Redis Streams: memories are written by Redis-queued jobs.
#[test]
fn the_bot_runs_its_jobs_on_redis_when_configured() {
    run_actix(|| async {
        let prefix = RedisPrefix::new();
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.storage.jobs = whisperengine::config::JobsBackend::Redis;
        s.storage.redis_prefix = prefix.0.clone();
        s.classifier.enabled = false;
        let app = start(s, extras(vec![])).await;
        let mut rex = Client::new("aria", "test:rex");
        assert!(is_done(&rex.ask(&app, "my cat is called Miso").await));
        crate::support::app::drain(&app).await;
        let key = ConversationKey::new("aria", "test:rex");
        let memories = app.user_data().memories(&key, 10).await.unwrap();
        assert!(
            memories.iter().any(|m| m.text.contains("Miso")),
            "{memories:?}"
        );
        app.shutdown().await;
    });
}

fn new_fact(subject: &str, predicate: &str, object: &str) -> whisper_actors::graph::NewFact {
    whisper_actors::graph::NewFact {
        replaces: None,
        subject: subject.into(),
        predicate: predicate.into(),
        object: object.into(),
        confidence: 0.9,
    }
}

/// The fact contract, through the GraphActor pool the app puts in front of every backend (it
/// normalises subjects before the store sees them).
async fn facts_contract(backend: Arc<dyn whisper_actors::graph::FactStore>) {
    use whisper_actors::graph::FactStore as _;
    let store =
        whisper_actors::graph::GraphPool::start(backend, 2, Default::default(), Default::default());
    let single = vec!["lives_in".to_owned()];
    let triples = |facts: Vec<whisper_actors::graph::Fact>| {
        let mut t: Vec<String> = facts
            .into_iter()
            .map(|f| format!("{} {} {}", f.subject, f.predicate, f.object))
            .collect();
        t.sort();
        t
    };
    assert!(store.current("u:a").await.unwrap().is_empty());
    let stored = store
        .upsert(
            "u:a",
            vec![
                new_fact("user", "lives_in", "Porto"),
                new_fact("User", "sister", "Ana"),
                new_fact("Ana", "works_at", "the library"),
            ],
            "I live in Porto; my sister Ana works at the library",
            &single,
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(stored, 3);
    assert_eq!(
        store
            .upsert(
                "u:a",
                vec![new_fact("user", "lives_in", "porto")],
                "again",
                &single,
                1_500
            )
            .await
            .unwrap(),
        0,
        "the same current fact (any case) is stored once"
    );
    store
        .upsert(
            "u:b",
            vec![new_fact("user", "lives_in", "Oslo")],
            "b",
            &single,
            1_000,
        )
        .await
        .unwrap();
    assert_eq!(
        triples(store.current("u:a").await.unwrap()),
        [
            "Ana works_at the library",
            "user lives_in Porto",
            "user sister Ana"
        ]
    );
    let current = store.current("u:a").await.unwrap();
    let porto = current.iter().find(|f| f.object == "Porto").unwrap();
    assert_eq!((porto.valid_from_ms, porto.valid_to_ms), (1_000, None));
    assert!((porto.confidence - 0.9).abs() < 1e-6);
    assert!(porto.source.contains("Porto"));

    // A correction closes the old value; other predicates keep theirs.
    store
        .upsert(
            "u:a",
            vec![new_fact("user", "lives_in", "Lisbon")],
            "moved",
            &single,
            2_000,
        )
        .await
        .unwrap();
    assert_eq!(
        triples(store.current("u:a").await.unwrap()),
        [
            "Ana works_at the library",
            "user lives_in Lisbon",
            "user sister Ana"
        ]
    );
    assert_eq!(
        triples(store.current("u:b").await.unwrap()),
        ["user lives_in Oslo"]
    );

    // Predicates nobody configured: `favourite_*` holds one value by itself, and a fact that
    // names the value it replaces closes it, whatever the predicate.
    for (fact, at) in [
        (new_fact("user", "favourite_food", "bibimbap"), 3_000),
        (new_fact("user", "favourite_food", "ramen"), 3_100),
        (new_fact("user", "likes", "jazz"), 3_200),
        (
            whisper_actors::graph::NewFact {
                replaces: Some("Jazz".into()),
                ..new_fact("user", "likes", "techno")
            },
            3_300,
        ),
    ] {
        store
            .upsert("u:a", vec![fact], "changes", &single, at)
            .await
            .unwrap();
    }
    assert_eq!(
        triples(store.current("u:a").await.unwrap()),
        [
            "Ana works_at the library",
            "user favourite_food ramen",
            "user likes techno",
            "user lives_in Lisbon",
            "user sister Ana"
        ]
    );

    // The closed facts, each with when it was closed: what recall marks memories against.
    let mut corrected: Vec<(String, Option<i64>)> = store
        .corrected("u:a")
        .await
        .unwrap()
        .into_iter()
        .map(|f| {
            (
                format!("{} {} {}", f.subject, f.predicate, f.object),
                f.valid_to_ms,
            )
        })
        .collect();
    corrected.sort();
    assert!(
        corrected.contains(&("user favourite_food bibimbap".to_owned(), Some(3_100))),
        "{corrected:?}"
    );
    assert!(
        corrected.contains(&("user likes jazz".to_owned(), Some(3_300))),
        "{corrected:?}"
    );
    assert!(
        store
            .corrected("u:b")
            .await
            .unwrap()
            .iter()
            .all(|f| f.object != "bibimbap"),
        "another user's corrections are not theirs"
    );

    // Forget counts every fact of the user, closed ones included, and nobody else's.
    assert_eq!(store.forget_user("u:a").await.unwrap(), 8);
    assert!(store.corrected("u:a").await.unwrap().is_empty());
    assert!(store.current("u:a").await.unwrap().is_empty());
    assert_eq!(store.current("u:b").await.unwrap().len(), 1);
}

#[test]
fn the_sqlite_fact_store_meets_the_contract() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite::prepare(dir.path()).unwrap();
        facts_contract(Arc::new(
            whisperengine::store::sqlite::facts::SqliteFacts::start(db, 2),
        ))
        .await;
    });
}

#[test]
fn the_neo4j_fact_store_meets_the_contract_on_a_real_bolt_server() {
    run_actix(|| async {
        let server = crate::support::arcadedb::ArcadeDb::start().await;
        let store = whisperengine::store::neo4j::Neo4jFacts::connect(
            &server.bolt_uri,
            "root",
            crate::support::arcadedb::PASSWORD,
            crate::support::arcadedb::DATABASE,
            4,
            Duration::from_secs(20),
        )
        .await
        .expect("connects to ArcadeDB over Bolt");
        facts_contract(Arc::new(store)).await;
    });
}

/// The whole bot with its fact graph on a Bolt server: extraction writes there, the next
/// prompt reads from there.
#[test]
fn the_bot_keeps_facts_in_neo4j_when_configured() {
    run_actix(|| async {
        let graph = crate::support::arcadedb::ArcadeDb::start().await;
        let llm = ScriptedLlm::start().await;
        llm.facts_for(
            "I moved to Bergen in spring",
            crate::support::openai_server::FactsAnswer::Text(
                r#"[{"subject":"user","predicate":"lives_in","object":"Bergen","confidence":0.9}]"#
                    .into(),
            ),
        );
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.classifier.enabled = false;
        graph.configure(&mut s);
        let app = start(s, extras(vec![])).await;
        let mut ida = Client::new("aria", "test:ida");
        assert!(is_done(&ida.ask(&app, "I moved to Bergen in spring").await));
        crate::support::app::drain(&app).await;
        assert!(is_done(&ida.ask(&app, "where do I live?").await));
        let system = llm.requests().pop().unwrap().contents()[0].clone();
        assert!(system.contains("user lives in Bergen"), "{system}");
        let report = app.forget("test:ida").await.unwrap();
        assert_eq!(report.facts, 1);
        assert!(app.user_data().facts("test:ida").await.unwrap().is_empty());
        app.shutdown().await;
    });
}

fn unit(axis: usize) -> whisper_actors::ports::Embedding {
    let mut v = vec![0.0f32; 384];
    v[axis] = 1.0;
    v.into()
}

fn chunk(
    (character, user): (&str, &str),
    scope: Scope,
    (group, n): (&str, u32),
    text: &str,
    at: i64,
    vector: whisper_actors::ports::Embedding,
) -> whisper_actors::memory::MemoryChunk {
    whisper_actors::memory::MemoryChunk {
        key: ConversationKey::new(character, user),
        scope,
        kind: whisper_actors::memory::MemoryKind::Message,
        group: group.into(),
        chunk: n,
        text: text.into(),
        importance: 0.5,
        created_at_ms: at,
        vector,
    }
}

async fn memory_contract(store: Arc<dyn whisper_actors::memory::MemoryStore>) {
    use whisper_actors::memory::{AllowedScopes, MemoryQuery};
    let chunks = vec![
        chunk(
            ("aria", "u:a"),
            Scope::Direct,
            ("g1", 0),
            "my sister Ana",
            1_000,
            unit(0),
        ),
        chunk(
            ("aria", "u:a"),
            Scope::Direct,
            ("g1", 1),
            "lives in Porto",
            1_000,
            unit(0),
        ),
        chunk(
            ("aria", "u:a"),
            Scope::Guild(1),
            ("g2", 0),
            "guild talk about maps",
            2_000,
            unit(1),
        ),
        chunk(
            ("aria", "u:b"),
            Scope::Direct,
            ("g3", 0),
            "b's own secret",
            3_000,
            unit(0),
        ),
        chunk(
            ("marlowe", "u:a"),
            Scope::Direct,
            ("g4", 0),
            "told to marlowe",
            4_000,
            unit(0),
        ),
    ];
    store.add(chunks.clone()).await.unwrap();
    store.add(chunks).await.unwrap(); // a job that runs twice stores each chunk once
    let a = ConversationKey::new("aria", "u:a");
    let groups = |found: &[whisper_actors::memory::Candidate]| {
        found.iter().map(|c| c.group.clone()).collect::<Vec<_>>()
    };
    let query = |key: &ConversationKey, scopes, vector| MemoryQuery {
        text: String::new(),
        key: key.clone(),
        scopes,
        vector,
        limit: 10,
    };

    let dm = store
        .search(query(&a, AllowedScopes::Only(Scope::Direct), unit(0)))
        .await
        .unwrap();
    assert_eq!(groups(&dm), ["g1"], "own DM only, one candidate per group");
    assert_eq!(
        dm[0].text, "my sister Ana lives in Porto",
        "chunks re-joined in order"
    );
    assert!(
        (dm[0].similarity - 1.0).abs() < 1e-4,
        "{}",
        dm[0].similarity
    );

    let guild = store
        .search(query(&a, AllowedScopes::Only(Scope::Guild(1)), unit(0)))
        .await
        .unwrap();
    assert!(
        groups(&guild).iter().all(|g| g == "g2"),
        "a DM never reaches a guild: {guild:?}"
    );
    let everywhere = store
        .search(query(&a, AllowedScopes::DirectAndGuilds, unit(1)))
        .await
        .unwrap();
    assert_eq!(
        groups(&everywhere)[0],
        "g2",
        "guild memories follow into DMs"
    );
    assert!(groups(&everywhere).contains(&"g1".to_owned()));
    let b = store
        .search(query(
            &ConversationKey::new("aria", "u:b"),
            AllowedScopes::DirectAndGuilds,
            unit(0),
        ))
        .await
        .unwrap();
    assert_eq!(groups(&b), ["g3"], "never another user's memories");

    let listed = store.list(&a, 10).await.unwrap();
    assert_eq!(
        groups(&listed),
        ["g2", "g1"],
        "newest first, per conversation"
    );

    // Ties in creation time (a summary and the reply it ends with) are broken the same way in
    // every store, by group id, descending: not by insertion order or point ids.
    let c = ConversationKey::new("aria", "u:c");
    for (group, text, axis) in [
        ("turn:9", "the last reply", 2),
        ("summary:9", "a summary", 3),
    ] {
        store
            .add(vec![chunk(
                ("aria", "u:c"),
                Scope::Direct,
                (group, 0),
                text,
                5_000,
                unit(axis),
            )])
            .await
            .unwrap();
    }
    assert_eq!(
        groups(&store.list(&c, 10).await.unwrap()),
        ["turn:9", "summary:9"]
    );
    assert_eq!(groups(&store.list(&c, 1).await.unwrap()), ["turn:9"]);

    assert_eq!(store.forget_user("u:a").await.unwrap(), 4);
    assert!(store.list(&a, 10).await.unwrap().is_empty());
    assert!(
        store
            .list(&ConversationKey::new("marlowe", "u:a"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .list(&ConversationKey::new("aria", "u:b"), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn the_sqlite_memory_store_meets_the_contract() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite::prepare(dir.path()).unwrap();
        memory_contract(Arc::new(
            whisperengine::store::sqlite::memory::SqliteMemory::start(db, 2, 100),
        ))
        .await;
    });
}

#[test]
fn the_postgres_memory_store_meets_the_contract_with_pgvector() {
    run_actix(|| async {
        let server = crate::support::pgvector::PgVector::start().await;
        let store = whisperengine::store::postgres::memory::PgMemory::connect(
            &server.url("whisper"),
            2,
            Duration::from_secs(10),
        )
        .await
        .expect("pgvector store opens");
        memory_contract(Arc::new(store)).await;
    });
}

/// Only where a Qdrant server is reachable (`QDRANT_URL`, gRPC, e.g. http://127.0.0.1:6334):
/// none can run on the development machines.
#[test]
#[ignore = "needs a Qdrant server: set QDRANT_URL (./bot.sh test then runs it)"]
fn the_qdrant_memory_store_meets_the_contract_where_qdrant_runs() {
    let url = crate::support::qdrant::url();
    run_actix(|| async move {
        let prefix = format!("test_{}", std::process::id());
        let store = crate::support::qdrant::store(&url, &prefix).await;
        memory_contract(store.clone()).await;
        crate::support::qdrant::drop_prefix(&url, &prefix).await;
    });
}

/// Where Qdrant runs: two writers racing to create a character's collection both succeed, and a
/// collection left without its payload indexes (a crash between creating it and its indexes)
/// is repaired on first use instead of breaking `/memories` for good.
#[test]
#[ignore = "needs a Qdrant server: set QDRANT_URL (./bot.sh test then runs it)"]
fn qdrant_collections_are_ensured_whoever_made_them() {
    use qdrant_client::qdrant::{CreateCollectionBuilder, Distance, VectorParamsBuilder};
    let url = crate::support::qdrant::url();
    run_actix(|| async move {
        let prefix = format!("test_{}_race", std::process::id());
        let (one, two) = (
            crate::support::qdrant::store(&url, &prefix).await,
            crate::support::qdrant::store(&url, &prefix).await,
        );
        let write = |store: Arc<whisperengine::store::qdrant::QdrantMemory>, n: u32| async move {
            use whisper_actors::memory::MemoryStore;
            store
                .add(vec![chunk(
                    ("aria", "u:r"),
                    Scope::Direct,
                    (&format!("g{n}"), 0),
                    "x",
                    1,
                    unit(0),
                )])
                .await
        };
        let (a, b) = futures::join!(write(one.clone(), 1), write(two.clone(), 2));
        a.expect("first writer");
        b.expect("second writer: \"already exists\" is success");

        let client = crate::support::qdrant::client(&url);
        client
            .create_collection(
                CreateCollectionBuilder::new(format!("{prefix}_marlowe"))
                    .vectors_config(VectorParamsBuilder::new(384, Distance::Cosine)),
            )
            .await
            .unwrap();
        let fresh = crate::support::qdrant::store(&url, &prefix).await;
        use whisper_actors::memory::MemoryStore;
        fresh
            .list(&ConversationKey::new("marlowe", "u:r"), 10)
            .await
            .expect("listing repairs the missing created_at_ms index");
        crate::support::qdrant::drop_prefix(&url, &prefix).await;
    });
}

/// Where Qdrant runs: a deployment whose prefix extends ours (`P_staging`) is invisible to us:
/// forget, backup and restore touch only `P_<character>`.
#[test]
#[ignore = "needs a Qdrant server: set QDRANT_URL (./bot.sh test then runs it)"]
fn qdrant_prefixes_never_leak_into_each_other() {
    use whisper_actors::memory::MemoryStore;
    let url = crate::support::qdrant::url();
    run_actix(|| async move {
        let ours = format!("test_{}_pfx", std::process::id());
        let theirs = format!("{ours}_staging");
        let (mine, other) = (
            crate::support::qdrant::store(&url, &ours).await,
            crate::support::qdrant::store(&url, &theirs).await,
        );
        let memory = |text: &str| chunk(("aria", "u:p"), Scope::Direct, ("g", 0), text, 1, unit(0));
        mine.add(vec![memory("ours")]).await.unwrap();
        other.add(vec![memory("theirs")]).await.unwrap();

        let rows = mine.export_rows().await.unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["character"], "aria");
        mine.import_rows(&rows).await.unwrap();
        assert_eq!(mine.forget_user("u:p").await.unwrap(), 1, "only our point");
        let left = other
            .list(&ConversationKey::new("aria", "u:p"), 10)
            .await
            .unwrap();
        assert_eq!(left.len(), 1, "the other deployment keeps its memory");
        assert_eq!(left[0].text, "theirs");
        crate::support::qdrant::drop_prefix(&url, &ours).await;
        crate::support::qdrant::drop_prefix(&url, &theirs).await;
    });
}

/// A first write racing a first search for the same user (two worker threads) never leaves the
/// cached partition with a row twice (recalled text repeated) or without it.
#[test]
fn the_sqlite_memory_cache_never_doubles_or_drops_rows() {
    use whisper_actors::memory::{AllowedScopes, MemoryQuery, MemoryStore};
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite::prepare(dir.path()).unwrap();
        let store = whisperengine::store::sqlite::memory::SqliteMemory::start(db, 4, 10_000);
        for round in 0..300 {
            let user = format!("u:{round}");
            let query = || MemoryQuery {
                text: String::new(),
                key: ConversationKey::new("aria", user.as_str()),
                scopes: AllowedScopes::Only(Scope::Direct),
                vector: unit(0),
                limit: 5,
            };
            let memory = chunk(
                ("aria", &user),
                Scope::Direct,
                ("g", 0),
                "only once",
                1,
                unit(0),
            );
            let (added, searched) = futures::join!(store.add(vec![memory]), store.search(query()));
            added.unwrap();
            searched.unwrap();
            let found = store.search(query()).await.unwrap();
            assert_eq!(found.len(), 1, "round {round}: {found:?}");
            assert_eq!(found[0].text, "only once", "round {round}");
        }
    });
}
