use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use whisper_actors::llm::{Generate, LlmActor, LlmEvent, LlmPolicy};
use whisper_actors::ports::{ChatMessage, ChatRequest, Role};
use whisper_actors::stats::RuntimeStats;
use whisperengine::llm::openai::OpenAiChat;

use crate::support::app::run_actix;
use crate::support::openai_server::{Behavior, ScriptedLlm};

fn request() -> ChatRequest {
    ChatRequest::completion(None, vec![ChatMessage::new(Role::User, "hi")], 0.5, 64)
}

/// An LlmActor with `slots` concurrent requests on the stand-in server, and its counters.
fn llm_actor(llm: &ScriptedLlm, slots: usize) -> (actix::Addr<LlmActor>, Arc<RuntimeStats>) {
    let model = Arc::new(OpenAiChat::new(&llm.base_url(), "", "scripted").unwrap());
    let stats = Arc::new(RuntimeStats::new(1, vec![]));
    let policy = LlmPolicy {
        max_concurrent: slots,
        queue_capacity: 8,
        first_token_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        max_retries: 0,
        retry_backoff: Duration::from_millis(10),
        retry_backoff_max: Duration::from_millis(10),
    };
    (LlmActor::new(model, policy, stats.clone()).start(), stats)
}

/// When the requester goes away (its conversation stopped), the generation stops at once and
/// frees its slot: with one slot, a second request does not wait for the abandoned 5 s stream.
#[test]
fn dropping_the_receiver_cancels_the_generation_and_frees_the_slot() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let slow = Behavior::Stream {
            tokens: (0..50).map(|i| format!("t{i} ")).collect(),
            first_delay: Duration::ZERO,
            delay: Duration::from_millis(100),
        };
        llm.script([slow, Behavior::tokens(&["second"], Duration::ZERO)]);
        let (actor, stats) = llm_actor(&llm, 1);

        let mut first = actor
            .send(Generate::interactive(request()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.recv().await, Some(LlmEvent::Token("t0 ".into())));
        drop(first);

        let started = Instant::now();
        let mut second = actor
            .send(Generate::interactive(request()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second.recv().await, Some(LlmEvent::Token("second".into())));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the slot was freed: {:?}",
            started.elapsed()
        );
        assert_eq!(second.recv().await, Some(LlmEvent::Done));
        assert_eq!(stats.llm.cancelled.get(), 1);
        assert_eq!(stats.llm.in_flight.get(), 0);
    });
}

/// Background generations (fact extraction) never take every slot: with two slots and two
/// background requests streaming slowly, a user's request still starts at once.
#[test]
fn background_work_leaves_a_slot_for_users() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let slow = Behavior::Stream {
            tokens: (0..30).map(|i| format!("b{i} ")).collect(),
            first_delay: Duration::ZERO,
            delay: Duration::from_millis(100),
        };
        // Requests reach the server in order: background 1, the user (background 2 waits for
        // the background lane), then background 2.
        llm.script([
            slow.clone(),
            Behavior::tokens(&["user reply"], Duration::ZERO),
            slow,
        ]);
        let (actor, _) = llm_actor(&llm, 2);
        let mut first = actor
            .send(Generate::background(request()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.recv().await, Some(LlmEvent::Token("b0 ".into())));
        let _second = actor
            .send(Generate::background(request()))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let mut user = actor
            .send(Generate::interactive(request()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            user.recv().await,
            Some(LlmEvent::Token("user reply".into()))
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    });
}
