use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use whisper_actors::context::{
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
