use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use whisper_actors::conversation::context::{
    ContextPiece, ContextProvider, ContextRequest, PieceKind, ProviderError, Section,
};
use whisper_actors::messages::ReplyStatus;

use crate::support::app::{Client, extras, run_actix, settings, start};
use crate::support::openai_server::ScriptedLlm;

struct Delayed {
    name: &'static str,
    delay: Option<Duration>,
    deadline: Duration,
}

#[async_trait]
impl ContextProvider for Delayed {
    fn name(&self) -> &'static str {
        self.name
    }
    fn kind(&self) -> PieceKind {
        PieceKind::Section
    }
    fn deadline(&self) -> Duration {
        self.deadline
    }
    async fn fetch(&self, _: &ContextRequest) -> Result<ContextPiece, ProviderError> {
        match self.delay {
            Some(delay) => tokio::time::sleep(delay).await,
            None => std::future::pending().await,
        }
        Ok(ContextPiece::Section(Section {
            title: self.name.into(),
            body: format!("from {}", self.name),
        }))
    }
}

fn delayed(name: &'static str, ms: u64) -> Arc<dyn ContextProvider> {
    Arc::new(Delayed {
        name,
        delay: Some(Duration::from_millis(ms)),
        deadline: Duration::from_secs(2),
    })
}

/// Three providers that each take 200 ms are asked in parallel: the prompt is ready in under
/// 300 ms and carries all three sections.
#[test]
fn providers_are_queried_in_parallel() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), &llm.base_url());
        let app = start(
            s,
            extras(vec![
                delayed("alpha", 200),
                delayed("beta", 200),
                delayed("gamma", 200),
            ]),
        )
        .await;
        let mut carol = Client::new("aria", "test:carol");
        let reply = carol.ask(&app, "what do you know about my plans?").await;
        let ReplyStatus::Done(timings) = &reply.status else {
            panic!("{reply:?}")
        };
        assert!(
            timings.prompt_ready >= Duration::from_millis(200),
            "{timings:?}"
        );
        assert!(
            timings.prompt_ready < Duration::from_millis(300),
            "{timings:?}"
        );
        assert!(timings.degraded.is_empty(), "{timings:?}");
        let system = &llm.requests()[0].contents()[0];
        for name in ["alpha", "beta", "gamma"] {
            assert!(
                system.contains(&format!("## {name}\nfrom {name}")),
                "{system}"
            );
        }
        app.shutdown().await;
    });
}

/// A provider that never answers is cut at its deadline and the reply still comes, without it.
#[test]
fn a_provider_that_never_answers_is_cut_at_its_deadline() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), &llm.base_url());
        let never = Arc::new(Delayed {
            name: "never",
            delay: None,
            deadline: Duration::from_millis(250),
        });
        let app = start(s, extras(vec![never, delayed("quick", 10)])).await;
        let mut dave = Client::new("aria", "test:dave");
        let reply = dave.ask(&app, "are you there?").await;
        let ReplyStatus::Done(timings) = &reply.status else {
            panic!("{reply:?}")
        };
        assert_eq!(reply.text, "echo: are you there?");
        assert_eq!(timings.degraded, vec!["never".to_owned()]);
        assert!(
            timings.context >= Duration::from_millis(250)
                && timings.context < Duration::from_millis(400),
            "{timings:?}"
        );
        let system = &llm.requests()[0].contents()[0];
        assert!(system.contains("from quick") && !system.contains("from never"));
        assert_eq!(app.runtime().status().degraded_context, 1);
        app.shutdown().await;
    });
}
