//! Per-user rate limits and the Redis profile cache.

use std::time::Duration;

use whisper_actors::messages::{FailureKind, ReplyStatus};

use crate::stores::RedisPrefix;
use crate::support::app::{Client, drain, extras, is_done, run_actix, settings, start};
use crate::support::openai_server::ScriptedLlm;

async fn flood(redis: Option<&RedisPrefix>) {
    let llm = ScriptedLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), &llm.base_url());
    s.classifier.enabled = false;
    s.limits.messages_per_window = 3;
    s.limits.window = Duration::from_secs(60);
    s.limits.transports = vec!["test".into()];
    if let Some(prefix) = redis {
        s.storage.redis_cache = true;
        s.storage.redis_prefix = prefix.0.clone();
    }
    let app = start(s, extras(vec![])).await;
    let mut fast = Client::new("aria", "test:fast");
    let mut calm = Client::new("aria", "test:calm");
    for i in 0..3 {
        assert!(is_done(&fast.ask(&app, &format!("message {i}")).await));
    }
    let over = fast.ask(&app, "message 3").await;
    assert_eq!(over.status, ReplyStatus::Failed(FailureKind::RateLimited));
    assert!(
        over.text.contains("faster than I can read") && over.text.contains("isn't saved"),
        "{}",
        over.text
    );
    assert!(
        is_done(&calm.ask(&app, "hello").await),
        "other users are not limited"
    );
    assert_eq!(
        llm.requests().len(),
        4,
        "the limited message never reached the model"
    );
    assert_eq!(app.runtime().status().rate_limited, 1);
    app.shutdown().await;
}

/// The terminal chat is the operator's: with the default `limits.transports` its messages are
/// never refused, and every one of them is answered and stored.
#[test]
fn the_console_is_not_rate_limited() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.classifier.enabled = false;
        s.limits.messages_per_window = 3;
        s.limits.window = Duration::from_secs(60);
        let app = start(s, extras(vec![])).await;
        let mut op = Client::new("aria", "console:operator");
        for i in 0..10 {
            let reply = op.ask(&app, &format!("line {i}")).await;
            assert!(is_done(&reply), "line {i}: {reply:?}");
        }
        drain(&app).await;
        let key = whisper_actors::ConversationKey::new("aria", "console:operator");
        let stored = app
            .user_data()
            .history(&key, &whisper_actors::Scope::Console, 50)
            .await
            .unwrap();
        assert_eq!(stored.len(), 10, "every line is stored");
        assert_eq!(app.runtime().status().rate_limited, 0);
        let mut dee = Client::new("aria", "discord:77");
        for i in 0..3 {
            assert!(is_done(&dee.ask(&app, &format!("message {i}")).await));
        }
        let over = dee.ask(&app, "one more").await;
        assert_eq!(
            over.status,
            ReplyStatus::Failed(FailureKind::RateLimited),
            "Discord users are"
        );
        app.shutdown().await;
    });
}

#[test]
fn a_flooding_user_is_slowed_down_in_process() {
    run_actix(|| flood(None));
}

#[test]
fn a_flooding_user_is_slowed_down_through_redis() {
    run_actix(|| async {
        let prefix = RedisPrefix::new();
        flood(Some(&prefix)).await;
    });
}

/// Profiles are served from Redis and invalidated on every write: the familiarity a prompt
/// shows is never stale.
#[test]
fn cached_profiles_follow_every_write() {
    run_actix(|| async {
        let prefix = RedisPrefix::new();
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.classifier.enabled = false;
        s.storage.redis_cache = true;
        s.storage.redis_prefix = prefix.0.clone();
        let app = start(s, extras(vec![])).await;
        let mut gil = Client::new("aria", "test:gil");
        for text in ["one", "two", "three"] {
            assert!(is_done(&gil.ask(&app, text).await));
            drain(&app).await;
            // Read through the cache (the same store the conversations use).
            let profile = app.user_data().profile("test:gil").await.unwrap().unwrap();
            let expected = ["one", "two", "three"]
                .iter()
                .position(|t| *t == text)
                .unwrap()
                + 1;
            assert_eq!(profile.message_count, expected as u64);
        }
        let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
        let mut conn = client.get_connection().unwrap();
        let cached: Option<String> = redis::cmd("GET")
            .arg(format!("{}:profile:test:gil", prefix.0))
            .query(&mut conn)
            .unwrap();
        assert!(cached.unwrap().contains("\"message_count\":3"));
        app.forget("test:gil").await.unwrap();
        assert_eq!(app.user_data().profile("test:gil").await.unwrap(), None);
        app.shutdown().await;
    });
}
