//! Tool calling over the real OpenAI protocol: the scripted server streams tool-call fragments
//! the way hosted APIs do, async-openai parses them, the runtime runs the tools and sends the
//! results back in the next round.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Barrier;
use whisper_actors::Scope;
use whisper_actors::messages::ReplyStatus;
use whisper_actors::ports::ToolSpec;
use whisper_actors::tools::{Tool, ToolError, ToolScope};
use whisperengine::app::App;

use crate::support::app::{Client, drain, extras, is_done, run_actix, settings, start};
use crate::support::openai_server::{Behavior, FactsAnswer, ScriptedLlm};

/// A tool that only answers once `barrier` has been reached by every tool sharing it: run one
/// after another, the first would wait out the tool deadline and answer an error instead.
struct Rendezvous {
    name: &'static str,
    barrier: Arc<Barrier>,
}

#[async_trait]
impl Tool for Rendezvous {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.name.into(),
            description: "waits for its sibling".into(),
            parameters: serde_json::json!({"type": "object", "properties": {"q": {"type": "string"}}}),
        }
    }

    async fn call(&self, scope: &ToolScope, arguments: &str) -> Result<String, ToolError> {
        self.barrier.wait().await;
        Ok(format!(
            "{} for {} with {arguments}",
            self.name, scope.key.user
        ))
    }
}

/// Two calls in one round run at the same time, their results return to the model in call
/// order with their ids, and the model's second round is the reply.
#[test]
fn calls_in_one_round_run_in_parallel() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        llm.script([
            Behavior::call(&[("left", r#"{"q":"one"}"#), ("right", r#"{"q":"two"}"#)]),
            Behavior::tokens(&["Both ", "answered."], Duration::ZERO),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.classifier.enabled = false;
        s.tools.timeout = Duration::from_secs(3);
        let barrier = Arc::new(Barrier::new(2));
        let mut ex = extras(vec![]);
        ex.tools = vec![
            Arc::new(Rendezvous {
                name: "left",
                barrier: barrier.clone(),
            }),
            Arc::new(Rendezvous {
                name: "right",
                barrier,
            }),
        ];
        let app = start(s, ex).await;
        let mut lea = Client::new("aria", "test:lea");
        let reply = lea
            .ask(&app, "can you check two things for me at once?")
            .await;
        assert_eq!(reply.text, "Both answered.");
        let ReplyStatus::Done(timings) = &reply.status else {
            panic!("{reply:?}")
        };
        assert_eq!(timings.tool_calls, 2);

        let requests = llm.requests();
        assert_eq!(requests.len(), 2);
        let offered = requests[0].tool_names();
        for name in [
            "search_memories",
            "recall_summaries",
            "lookup_facts",
            "left",
            "right",
        ] {
            assert!(offered.iter().any(|o| o == name), "{name} in {offered:?}");
        }
        assert_eq!(
            requests[1].tool_results(),
            vec![
                (
                    "call_left_0".to_owned(),
                    r#"left for test:lea with {"q":"one"}"#.to_owned()
                ),
                (
                    "call_right_1".to_owned(),
                    r#"right for test:lea with {"q":"two"}"#.to_owned()
                ),
            ]
        );
        let status = app.runtime().status();
        assert_eq!((status.tool_calls, status.tool_failures), (2, 0));
        app.shutdown().await;
    });
}

/// Has the model search for secrets on `client`'s behalf; returns what the tool answered.
async fn search_secrets(llm: &ScriptedLlm, app: &App, client: &mut Client) -> String {
    let search = r#"{"query":"what is the secret password or key, pineapple walrus hedgehog"}"#;
    llm.script([Behavior::call(&[("search_memories", search)])]);
    assert!(is_done(&client.ask(app, "remind me of my secrets").await));
    let results = llm.requests().pop().unwrap().tool_results();
    assert_eq!(results.len(), 1);
    results[0].1.clone()
}

/// `search_memories` reads only the asking user's memories, in the scopes allowed where they
/// ask, whatever the model puts in the query.
#[test]
fn search_memories_stays_within_the_user_and_scope() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.classifier.enabled = false;
        s.facts.extract = false;
        let app = start(s, extras(vec![])).await;
        let mut ana_guild = Client::new("aria", "test:ana").in_scope(Scope::Guild(5));
        let mut ana_dm = Client::new("aria", "test:ana").in_scope(Scope::Direct);
        let mut ben_guild = Client::new("aria", "test:ben").in_scope(Scope::Guild(5));
        assert!(is_done(
            &ana_guild.ask(&app, "my secret password is pineapple").await
        ));
        assert!(is_done(
            &ana_dm.ask(&app, "my secret diary key is walrus").await
        ));
        assert!(is_done(
            &ben_guild.ask(&app, "my secret password is hedgehog").await
        ));
        drain(&app).await;

        let ben = search_secrets(&llm, &app, &mut ben_guild).await;
        assert!(ben.contains("hedgehog"), "{ben}");
        assert!(
            !ben.contains("pineapple") && !ben.contains("walrus"),
            "{ben}"
        );
        let in_guild = search_secrets(&llm, &app, &mut ana_guild).await;
        assert!(in_guild.contains("pineapple"), "{in_guild}");
        assert!(
            !in_guild.contains("walrus"),
            "a DM never reaches a guild: {in_guild}"
        );
        assert!(!in_guild.contains("hedgehog"), "{in_guild}");
        let in_dm = search_secrets(&llm, &app, &mut ana_dm).await;
        assert!(
            in_dm.contains("walrus") && in_dm.contains("pineapple"),
            "{in_dm}"
        );
        app.shutdown().await;
    });
}

/// `lookup_facts` walks the user's own graph from the entity the model names.
#[test]
fn lookup_facts_reads_the_users_own_graph() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        llm.facts_for(
            "my sister Ana lives in Porto",
            FactsAnswer::Text(
                r#"[{"subject":"user","predicate":"sister","object":"Ana","confidence":0.9},
                    {"subject":"Ana","predicate":"lives_in","object":"Porto","confidence":0.9}]"#
                    .into(),
            ),
        );
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.classifier.enabled = false;
        let app = start(s, extras(vec![])).await;
        let mut rui = Client::new("aria", "test:rui");
        let mut eva = Client::new("aria", "test:eva");
        assert!(is_done(
            &rui.ask(&app, "my sister Ana lives in Porto").await
        ));
        drain(&app).await;
        let lookup = [("lookup_facts", r#"{"entity":"Ana"}"#)];
        llm.script([Behavior::call(&lookup)]);
        assert!(is_done(&rui.ask(&app, "how is she doing?").await));
        let found = llm.requests().pop().unwrap().tool_results()[0].1.clone();
        assert!(found.contains("Ana lives in Porto"), "{found}");
        assert!(found.contains("user sister Ana"), "{found}");
        llm.script([Behavior::call(&lookup)]);
        assert!(is_done(&eva.ask(&app, "what about Ana?").await));
        let other = llm.requests().pop().unwrap().tool_results()[0].1.clone();
        assert_eq!(other, "Nothing known about Ana.");
        app.shutdown().await;
    });
}

/// A model that keeps calling tools is stopped after `tools.max_rounds`: the next round is
/// told `tool_choice: none` and its text is the reply. Bad arguments come back as an error the
/// model can read, never as a crash.
#[test]
fn tool_rounds_are_capped_and_bad_calls_are_answered_with_errors() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        llm.script([
            Behavior::call(&[("lookup_facts", "{not json")]),
            Behavior::call(&[("no_such_tool", "{}")]),
            Behavior::tokens(&["I give up looking."], Duration::ZERO),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.classifier.enabled = false;
        s.tools.max_rounds = 2;
        let app = start(s, extras(vec![])).await;
        let mut ivo = Client::new("aria", "test:ivo");
        let reply = ivo.ask(&app, "look everything up").await;
        assert_eq!(reply.text, "I give up looking.");
        let requests = llm.requests();
        assert_eq!(requests.len(), 3);
        let choices: Vec<_> = requests.iter().map(|r| r.tool_choice()).collect();
        assert_eq!(
            choices,
            vec![
                Some("auto".to_owned()),
                Some("auto".to_owned()),
                Some("none".to_owned())
            ]
        );
        let results = requests[2].tool_results();
        assert_eq!(results.len(), 2);
        assert!(
            results[0].1.starts_with("error: invalid arguments"),
            "{results:?}"
        );
        assert!(results[1].1.contains("no tool named"), "{results:?}");
        assert_eq!(app.runtime().status().tool_failures, 2);
        app.shutdown().await;
    });
}

/// Small talk on the fast track is answered without tools.
#[test]
fn the_fast_track_offers_no_tools() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let app = start(settings(dir.path(), &llm.base_url()), extras(vec![])).await;
        let mut zoe = Client::new("aria", "test:zoe");
        assert!(is_done(&zoe.ask(&app, "hi there!").await));
        assert!(is_done(
            &zoe.ask(&app, "what did I tell you about my job last week?")
                .await
        ));
        let requests = llm.requests();
        assert!(requests[0].tool_names().is_empty());
        assert_eq!(requests[1].tool_names().len(), 3);
        app.shutdown().await;
    });
}
