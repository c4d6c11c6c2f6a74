use std::time::Duration;

use whisper_actors::messages::{FailureKind, ReplyStatus};

use crate::support::app::{Client, extras, is_done, run_actix, settings, start};
use crate::support::openai_server::{Behavior, ScriptedLlm};

/// 500, 429 and 503 are retried with backoff and the user only sees the answer.
#[test]
fn transient_failures_are_retried() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        llm.script([
            Behavior::Status(500),
            Behavior::tokens(&["recovered"], Duration::ZERO),
            Behavior::Status(429),
            Behavior::Status(503),
            Behavior::tokens(&["again"], Duration::ZERO),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let app = start(settings(dir.path(), &llm.base_url()), extras(vec![])).await;
        let mut frank = Client::new("aria", "test:frank");
        let reply = frank.ask(&app, "hello").await;
        assert!(is_done(&reply), "{reply:?}");
        assert_eq!(reply.text, "recovered");
        assert_eq!(app.runtime().status().llm.retries, 1);
        assert_eq!(frank.ask(&app, "hello?").await.text, "again");
        assert_eq!(app.runtime().status().llm.retries, 3);
        assert_eq!(llm.requests().len(), 5);
        app.shutdown().await;
    });
}

/// A request the endpoint refuses (400) is not retried; the user gets a clear message.
#[test]
fn rejected_requests_are_not_retried() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        llm.script([Behavior::Status(400)]);
        let dir = tempfile::tempdir().unwrap();
        let app = start(settings(dir.path(), &llm.base_url()), extras(vec![])).await;
        let mut gus = Client::new("aria", "test:gus");
        let reply = gus.ask(&app, "hello").await;
        assert_eq!(reply.status, ReplyStatus::Failed(FailureKind::LlmFailed));
        assert!(
            reply.text.contains("couldn't reach my language model"),
            "{}",
            reply.text
        );
        assert_eq!(llm.requests().len(), 1);
        assert_eq!(app.runtime().status().llm.retries, 0);
        app.shutdown().await;
    });
}

/// A model that never answers times out with a clear message, nothing crashes, and the next
/// message is answered normally.
#[test]
fn a_timeout_gives_a_clear_message_and_the_next_message_works() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        llm.script([Behavior::Hang]);
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.llm.request_timeout = Duration::from_millis(300);
        let app = start(s, extras(vec![])).await;
        let mut hana = Client::new("aria", "test:hana");
        let reply = hana.ask(&app, "hello").await;
        assert_eq!(reply.status, ReplyStatus::Failed(FailureKind::LlmTimeout));
        assert!(reply.text.contains("took too long"), "{}", reply.text);
        let status = app.runtime().status();
        assert_eq!((status.llm.timeouts, status.llm.retries), (1, 0));

        let reply = hana.ask(&app, "still there?").await;
        assert!(is_done(&reply), "{reply:?}");
        assert_eq!(reply.text, "echo: still there?");
        app.shutdown().await;
    });
}

/// Beyond concurrency + queue capacity, requests are refused at once instead of piling up.
#[test]
fn a_full_queue_refuses_with_back_pressure() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let slow = Behavior::Stream {
            tokens: vec!["slow".into()],
            first_delay: Duration::from_millis(800),
            delay: Duration::ZERO,
        };
        llm.script([slow.clone(), slow.clone(), slow]);
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.pools.llm_concurrency = whisperengine::config::AutoCount::Fixed(1);
        s.pools.llm_queue = 1;
        let app = start(s, extras(vec![])).await;
        // Three users at once: one streams, one waits, one is refused.
        let mut clients: Vec<Client> = (0..3)
            .map(|i| Client::new("aria", &format!("test:q{i}")))
            .collect();
        let ids: Vec<u64> = clients.iter_mut().map(|c| c.send(&app, "hi")).collect();
        let mut statuses = Vec::new();
        for (c, id) in clients.iter_mut().zip(ids) {
            statuses.push(c.final_for(id).await.status);
        }
        let refused = statuses
            .iter()
            .filter(|s| **s == ReplyStatus::Failed(FailureKind::LlmOverloaded))
            .count();
        let done = statuses
            .iter()
            .filter(|s| matches!(s, ReplyStatus::Done(_)))
            .count();
        assert_eq!((done, refused), (2, 1), "{statuses:?}");
        assert_eq!(app.runtime().status().llm.rejected_overloaded, 1);
        app.shutdown().await;
    });
}
