use std::time::Duration;

use whisper_actors::messages::ReplyStatus;

use crate::support::app::{Client, extras, run_actix, settings, start};
use crate::support::openai_server::{Behavior, ScriptedLlm};

/// 50 tokens over 3 s with a 700 ms interval: at most 6 updates, each extending the last, and
/// the final text is the whole reply.
#[test]
fn updates_follow_the_edit_interval() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let tokens: Vec<String> = (0..50).map(|i| format!("tok{i} ")).collect();
        llm.script([Behavior::Stream {
            tokens: tokens.clone(),
            first_delay: Duration::from_millis(60),
            delay: Duration::from_millis(60),
        }]);
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.streaming.edit_interval = Duration::from_millis(700);
        let app = start(s, extras(vec![])).await;
        let mut erin = Client::new("aria", "test:erin");
        let id = erin.send(&app, "tell me a long story");
        let updates = erin.updates_for(id).await;

        let last = updates.last().unwrap();
        assert!(matches!(last.status, ReplyStatus::Done(_)), "{last:?}");
        assert_eq!(last.text, tokens.concat());
        assert!(
            updates.len() <= 6,
            "{} updates: {:?}",
            updates.len(),
            updates.iter().map(|u| u.text.len()).collect::<Vec<_>>()
        );
        assert!(
            updates.len() >= 4,
            "the reply streamed: {} updates",
            updates.len()
        );
        for pair in updates.windows(2) {
            assert!(
                pair[1].text.starts_with(&pair[0].text) && pair[1].text.len() > pair[0].text.len()
            );
        }
        app.shutdown().await;
    });
}
