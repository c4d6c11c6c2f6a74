use std::time::Duration;

use crate::support::app::{Client, extras, is_done, run_actix, settings, start, started, wait_for};
use crate::support::openai_server::ScriptedLlm;

/// An idle conversation is stopped, and its history is reloaded from SQLite on the next message.
#[test]
fn idle_conversations_are_passivated_and_reload_their_history() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.runtime.idle_timeout = Duration::from_millis(200);
        let app = start(s, extras(vec![])).await;

        let mut alice = Client::new("aria", "test:alice");
        assert!(is_done(
            &alice.ask(&app, "remember that I love pineapples").await
        ));
        assert_eq!(app.runtime().status().live_conversations(), 1);

        wait_for(&app, "passivation", |s| {
            s.live_conversations() == 0 && s.shards.iter().map(|s| s.passivated).sum::<u64>() == 1
        })
        .await;

        assert!(is_done(&alice.ask(&app, "what fruit do I love?").await));
        let last = llm.requests().pop().unwrap().contents();
        assert!(
            last.iter().any(|c| c == "remember that I love pineapples"),
            "history reloaded: {last:?}"
        );
        assert!(
            last.iter()
                .any(|c| c == "echo: remember that I love pineapples"),
            "{last:?}"
        );
        assert_eq!(started(&app), 2, "a fresh actor served the second message");
        app.shutdown().await;
    });
}

/// At capacity, the least recently used idle conversation makes room.
#[test]
fn the_least_recently_used_conversation_is_evicted_at_capacity() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.runtime.shards = 1;
        s.runtime.max_conversations_per_shard = 2;
        let app = start(s, extras(vec![])).await;

        for user in ["a", "b", "c"] {
            let mut c = Client::new("aria", user);
            assert!(is_done(&c.ask(&app, "hi").await));
        }
        wait_for(&app, "eviction", |s| {
            s.shards[0].evicted == 1 && s.shards[0].live_conversations == 2
        })
        .await;
        app.shutdown().await;
    });
}
