use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::app::{Client, drain, extras, is_done, run_actix, settings, start, wait_for};
use crate::support::openai_server::{FactsAnswer, ScriptedLlm};

fn fact(predicate: &str, object: &str) -> FactsAnswer {
    FactsAnswer::Text(format!(
        "[{{\"subject\":\"user\",\"predicate\":\"{predicate}\",\"object\":\"{object}\",\"confidence\":0.9}}]"
    ))
}

fn query<T: rusqlite::types::FromSql>(db: &Path, sql: &str) -> Vec<T> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn facts_section(system: &str) -> &str {
    let start = system
        .find("## Facts about the user")
        .expect("facts section");
    let rest = &system[start..];
    &rest[..rest[3..].find("\n## ").map(|i| i + 3).unwrap_or(rest.len())]
}

/// "I moved to Lisbon" closes the Porto fact (kept, with its end) and the prompt shows only the
/// current value.
#[test]
fn a_correction_supersedes_the_old_fact() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        llm.facts_for("I live in Porto these days", fact("lives_in", "Porto"));
        llm.facts_for("I moved to Lisbon last month", fact("lives_in", "Lisbon"));
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.classifier.enabled = false;
        let app = start(s, extras(vec![])).await;
        let mut rui = Client::new("aria", "test:rui");
        assert!(is_done(&rui.ask(&app, "I live in Porto these days").await));
        drain(&app).await;
        assert!(is_done(
            &rui.ask(&app, "I moved to Lisbon last month").await
        ));
        drain(&app).await;
        assert!(is_done(&rui.ask(&app, "where do I live now?").await));
        let system = llm.requests().pop().unwrap().contents()[0].clone();
        let facts = facts_section(&system);
        assert!(facts.contains("user lives in Lisbon"), "{facts}");
        assert!(!facts.contains("Porto"), "{facts}");

        let db = dir.path().join("whisperengine.db");
        let closed: Vec<String> = query(
            &db,
            "SELECT object FROM facts WHERE valid_to_ms IS NOT NULL",
        );
        let current: Vec<String> = query(&db, "SELECT object FROM facts WHERE valid_to_ms IS NULL");
        assert_eq!(
            (closed, current),
            (vec!["Porto".to_owned()], vec!["Lisbon".to_owned()])
        );
        // The question's own extraction job may still be running: wait, then look. Jobs are
        // at-least-once (a transient failure retries the request), so count messages, not calls.
        drain(&app).await;
        let mut extracted: Vec<String> = llm
            .fact_requests()
            .iter()
            .map(|r| r.last_user_message())
            .collect();
        extracted.sort();
        extracted.dedup();
        assert_eq!(
            extracted,
            vec![
                "I live in Porto these days".to_owned(),
                "I moved to Lisbon last month".to_owned(),
                "where do I live now?".to_owned(),
            ],
            "every message is extracted (the classifier is off, so all take the full path)"
        );
        app.shutdown().await;
    });
}

/// Malformed extraction output is never stored half-parsed: the job is retried, then
/// dead-lettered with its error.
#[test]
fn malformed_facts_are_retried_then_dead_lettered() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        llm.facts_for(
            "my brother Tom is a chef",
            FactsAnswer::Text("Tom is a chef!".into()),
        );
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.jobs.max_attempts = 3;
        let app = start(s, extras(vec![])).await;
        let mut ivo = Client::new("aria", "test:ivo");
        assert!(is_done(&ivo.ask(&app, "my brother Tom is a chef").await));
        drain(&app).await;
        let db = dir.path().join("whisperengine.db");
        let dead: Vec<String> = query(&db, "SELECT last_error FROM jobs WHERE state = 'dead'");
        assert_eq!(dead.len(), 1);
        assert!(dead[0].contains("no JSON in the answer"), "{}", dead[0]);
        assert_eq!(llm.fact_requests().len(), 3, "one request per attempt");
        assert!(query::<String>(&db, "SELECT object FROM facts").is_empty());
        app.shutdown().await;
    });
}

/// A job is never lost: the bot is SIGKILLed while a fact extraction is in flight; on the next
/// start the expired lease makes the job due again and it runs to completion.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_interrupted_by_sigkill_completes_after_restart() {
    const MESSAGE: &str = "I adopted a parrot named Kiwi";
    let llm = ScriptedLlm::start().await;
    llm.facts_for(MESSAGE, FactsAnswer::Hang);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("whisperengine.db");
    let bot = || {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_whisperengine"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["chat", "--user", "kai"])
            .env("WHISPER__LLM__BASE_URL", llm.base_url())
            .env("WHISPER__LLM__MODEL", "scripted")
            .env("WHISPER__CLASSIFIER__ENABLED", "false")
            .env("WHISPER__JOBS__LEASE", "1s")
            .env("WHISPER__JOBS__POLL_INTERVAL", "100ms")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        cmd.spawn().unwrap()
    };

    let mut first = bot();
    let mut stdin = first.stdin.take().unwrap();
    stdin
        .write_all(format!("{MESSAGE}\n").as_bytes())
        .await
        .unwrap();
    let mut lines = BufReader::new(first.stdout.take().unwrap()).lines();
    assert_eq!(
        lines.next_line().await.unwrap().unwrap(),
        format!("echo: {MESSAGE}")
    );
    for _ in 0..200 {
        if !llm.fact_requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        llm.fact_requests().len(),
        1,
        "the extraction job is in flight"
    );
    first.start_kill().unwrap(); // SIGKILL
    first.wait().await.unwrap();
    let states: Vec<String> = query(&db, "SELECT state FROM jobs WHERE kind = 'extract_facts'");
    assert_eq!(
        states,
        vec!["leased".to_owned()],
        "the job died holding its lease"
    );

    llm.facts_for(MESSAGE, FactsAnswer::Text(
        "[{\"subject\":\"user\",\"predicate\":\"has_pet\",\"object\":\"Kiwi\",\"confidence\":0.95}]".into(),
    ));
    let mut second = bot();
    let mut pets: Vec<String> = Vec::new();
    for _ in 0..250 {
        pets = query(&db, "SELECT object FROM facts WHERE predicate = 'has_pet'");
        if !pets.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    drop(second.stdin.take());
    second.wait().await.unwrap();
    assert_eq!(pets, vec!["Kiwi".to_owned()]);
    assert!(
        query::<String>(&db, "SELECT id FROM jobs").is_empty(),
        "acknowledged and removed"
    );
    assert_eq!(llm.fact_requests().len(), 2);
}

/// Every `memory.summarise_every` messages a background job summarises the recent turns into a
/// summary memory, which is then recalled like any other.
#[test]
fn conversations_are_summarised_into_memories() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.memory.summarise_every = 3;
        s.facts.extract = false;
        let app = start(s, extras(vec![])).await;
        let mut eve = Client::new("aria", "test:eve");
        for text in [
            "I'm training for the Lisbon marathon",
            "my knee hurts after long runs",
            "I bought new running shoes",
        ] {
            assert!(is_done(&eve.ask(&app, text).await));
        }
        drain(&app).await;
        let summaries = llm.summary_requests();
        assert_eq!(summaries.len(), 1, "one summary after three messages");
        let transcript = summaries[0].last_user_message();
        assert!(
            transcript.contains("Lisbon marathon") && transcript.contains("running shoes"),
            "{transcript}"
        );
        let db = dir.path().join("whisperengine.db");
        let stored: Vec<String> = query(&db, "SELECT text FROM memories WHERE kind = 'summary'");
        assert_eq!(
            stored,
            vec!["Summary: I'm training for the Lisbon marathon".to_owned()]
        );

        assert!(is_done(
            &eve.ask(&app, "how is my marathon training going?").await
        ));
        let system = llm.requests().pop().unwrap().contents()[0].clone();
        assert!(
            system.contains("summary: Summary: I'm training for the Lisbon marathon"),
            "{system}"
        );
        app.shutdown().await;
    });
}

/// When a conversation goes idle, the turns since its last summary are summarised (if there
/// are at least `memory.idle_summary_min_turns`), so a short session is not forgotten.
#[test]
fn an_idle_conversation_is_summarised() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.memory.summarise_every = 100;
        s.memory.idle_summary_min_turns = 2;
        s.runtime.idle_timeout = Duration::from_millis(300);
        s.facts.extract = false;
        let app = start(s, extras(vec![])).await;
        let mut mia = Client::new("aria", "test:mia");
        let mut noa = Client::new("aria", "test:noa");
        for text in [
            "I start my new job at the bakery on Monday",
            "I'm nervous about it",
        ] {
            assert!(is_done(&mia.ask(&app, text).await));
        }
        assert!(is_done(&noa.ask(&app, "just one message from me").await));
        wait_for(&app, "both conversations passivated", |s| {
            s.shards.iter().map(|s| s.passivated).sum::<u64>() == 2
        })
        .await;
        drain(&app).await;
        let summaries = llm.summary_requests();
        assert_eq!(summaries.len(), 1, "one summary: noa said too little");
        let transcript = summaries[0].last_user_message();
        assert!(
            transcript.contains("bakery") && transcript.contains("nervous"),
            "{transcript}"
        );
        let db = dir.path().join("whisperengine.db");
        let stored: Vec<String> = query(&db, "SELECT user_id FROM memories WHERE kind = 'summary'");
        assert_eq!(stored, vec!["test:mia".to_owned()]);
        app.shutdown().await;
    });
}
