use std::time::Duration;

use crate::support::app::{Client, extras, is_done, run_actix, settings, start};

/// The embedded default's llama-server is a supervised child: killed, it is restarted on the
/// same port and the conversation carries on.
#[test]
fn the_local_model_server_is_restarted_when_it_dies() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), "");
        s.llm.model = String::new();
        s.llm.retry_backoff = Duration::from_millis(500);
        let app = start(s, extras(vec![])).await;
        let first = app.local_llm_pid().expect("local server running");

        let mut ivy = Client::new("aria", "test:ivy");
        let reply = ivy.ask(&app, "Hello!").await;
        assert!(
            is_done(&reply) && !reply.text.trim().is_empty(),
            "{reply:?}"
        );

        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);
        let mut restarted = None;
        for _ in 0..200 {
            match app.local_llm_pid() {
                Some(pid) if pid != first => {
                    restarted = Some(pid);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        assert!(restarted.is_some(), "llama-server was not restarted");

        let reply = ivy.ask(&app, "Are you back?").await;
        assert!(
            is_done(&reply) && !reply.text.trim().is_empty(),
            "{reply:?}"
        );
        app.shutdown().await;
    });
}

/// With structured outputs (a JSON schema the local llama-server turns into a grammar) the
/// bundled small model answers fact extraction and summaries in valid JSON every time: no
/// background job fails on its answer. Facts it stores are ones the messages say.
#[test]
fn the_local_model_answers_background_jobs_in_valid_json() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), "");
        s.llm.model = String::new();
        s.classifier.enabled = false;
        s.facts.extract = true;
        s.memory.summarise_every = 2;
        s.jobs.max_attempts = 1;
        let app = start(s, extras(vec![])).await;
        let messages = [
            "My sister Maren lives in Salzburg.",
            "I work at the city library as an archivist.",
            "My favourite food is ramen.",
            "I have a dog called Biscuit.",
        ];
        let mut ivy = Client::new("aria", "test:ivy");
        for text in messages {
            assert!(is_done(&ivy.ask(&app, text).await));
        }
        for _ in 0..600 {
            if app.user_data().pending_jobs().await.unwrap() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            app.user_data().pending_jobs().await.unwrap(),
            0,
            "jobs finished"
        );
        let jobs = app
            .runtime()
            .status()
            .pools
            .into_iter()
            .find(|p| p.name.starts_with("JobWorker"))
            .unwrap();
        // 4 remember + 4 extract + 2 summaries, none failed on its answer.
        let db = rusqlite::Connection::open(dir.path().join("whisperengine.db")).unwrap();
        let dead: Vec<(String, String)> = db
            .prepare("SELECT kind, last_error FROM jobs WHERE state = 'dead'")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            jobs.errors, 0,
            "every answer was valid JSON: {jobs:?} {dead:?}"
        );
        let said = messages.join(" ").to_lowercase();
        for fact in app.user_data().facts("test:ivy").await.unwrap() {
            assert!(
                said.contains(&fact.object.to_lowercase()),
                "stored only what was said: {fact:?}"
            );
        }
        app.shutdown().await;
    });
}
