use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use whisper_actors::classifier::Route;
use whisper_actors::conversation::context::{
    ContextPiece, ContextProvider, ContextRequest, PieceKind, ProviderError, Section,
};
use whisper_actors::messages::ReplyStatus;

use crate::support::app::{Client, extras, run_actix, settings, start};
use crate::support::openai_server::ScriptedLlm;

/// Stands in for an expensive lookup (memory search): slow, and marks what it returns.
struct SlowLookup;

#[async_trait]
impl ContextProvider for SlowLookup {
    fn name(&self) -> &'static str {
        "slow-lookup"
    }
    fn kind(&self) -> PieceKind {
        PieceKind::Section
    }
    fn deadline(&self) -> Duration {
        Duration::from_secs(5)
    }
    async fn fetch(&self, _: &ContextRequest) -> Result<ContextPiece, ProviderError> {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok(ContextPiece::Section(Section {
            title: "Memories".into(),
            body: "SLOW-LOOKUP-RESULT".into(),
        }))
    }
}

/// Small talk is answered on the fast path (fast model, no lookups, not waiting for them);
/// a message about the past takes the full path with the lookup's result in the prompt.
#[test]
fn small_talk_takes_the_fast_track_and_the_rest_does_not() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let characters = dir.path().join("characters");
        std::fs::create_dir_all(&characters).unwrap();
        std::fs::write(
            characters.join("tester.toml"),
            "name = \"Tester\"\nsystem_prompt = \"You test.\"\n[model]\nname = \"big-model\"\ntemperature = 0.5\nmax_tokens = 64\n[fast_model]\nname = \"small-model\"\ntemperature = 0.5\nmax_tokens = 32\n",
        )
        .unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.characters.dir = characters;
        s.characters.default = "tester".into();
        let app = start(s, extras(vec![Arc::new(SlowLookup)])).await;
        let mut kim = Client::new("tester", "test:kim");

        let reply = kim.ask(&app, "hey there!").await;
        let ReplyStatus::Done(t) = &reply.status else {
            panic!("{reply:?}")
        };
        assert_eq!(t.route, Some(Route::Fast), "{t:?}");
        assert_eq!(t.intent.as_deref(), Some("greeting"));
        assert!(
            t.prompt_ready < Duration::from_millis(1000),
            "did not wait for the lookup: {t:?}"
        );
        assert!(
            t.degraded.is_empty(),
            "a skipped lookup is not a degradation: {t:?}"
        );
        let request = &llm.requests()[0];
        assert_eq!(request.body["model"], "small-model");
        assert!(!request.contents()[0].contains("SLOW-LOOKUP-RESULT"));

        let reply = kim
            .ask(&app, "what did I tell you about my sister yesterday?")
            .await;
        let ReplyStatus::Done(t) = &reply.status else {
            panic!("{reply:?}")
        };
        assert_eq!(t.route, Some(Route::Full), "{t:?}");
        assert!(t.prompt_ready >= Duration::from_millis(1500), "{t:?}");
        let request = &llm.requests()[1];
        assert_eq!(request.body["model"], "big-model");
        assert!(request.contents()[0].contains("SLOW-LOOKUP-RESULT"));
        app.shutdown().await;
    });
}
