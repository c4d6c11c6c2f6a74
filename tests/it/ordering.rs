use std::time::Duration;

use crate::support::app::{Client, extras, run_actix, settings, start};
use crate::support::openai_server::ScriptedLlm;
use whisper_actors::messages::ReplyStatus;

/// 20 users send 50 messages each, all at once: every user's replies come back in order and
/// each answers the right message.
#[test]
fn each_users_replies_come_back_in_order() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        llm.set_echo_delay(Duration::from_micros(200));
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.pools.llm_concurrency = whisperengine::config::AutoCount::Fixed(8);
        s.runtime.shards = 4;
        let app = start(s, extras(vec![])).await;

        let mut clients: Vec<Client> = (0..20)
            .map(|u| Client::new("aria", &format!("test:user-{u}")))
            .collect();
        // Enqueue everything before reading any reply.
        for i in 0..50 {
            for (u, client) in clients.iter_mut().enumerate() {
                client.send(&app, &format!("user {u} message {i}"));
            }
        }
        for (u, client) in clients.iter_mut().enumerate() {
            let mut finals = Vec::new();
            while finals.len() < 50 {
                let update = tokio::time::timeout(Duration::from_secs(60), client.updates.recv())
                    .await
                    .expect("replies keep coming")
                    .unwrap();
                if update.is_final() {
                    finals.push(update);
                }
            }
            for (i, update) in finals.iter().enumerate() {
                assert_eq!(
                    update.message_id,
                    i as u64 + 1,
                    "user {u}: reply out of order"
                );
                assert!(
                    matches!(update.status, ReplyStatus::Done(_)),
                    "user {u}: {update:?}"
                );
                assert_eq!(update.text, format!("echo: user {u} message {i}"));
            }
        }
        let status = app.runtime().status();
        assert_eq!(status.replies, 1000);
        assert!(
            status.shards.iter().all(|s| s.live_conversations > 0),
            "users spread over every shard: {status:?}"
        );
        app.shutdown().await;
    });
}
