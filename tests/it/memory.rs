use whisper_actors::Scope;

use crate::support::app::{Client, extras, is_done, run_actix, settings, start};
use crate::support::openai_server::ScriptedLlm;

const UNRELATED: [&str; 10] = [
    "I watched a documentary about octopuses tonight",
    "what's a good way to learn chess openings",
    "the new coffee place downtown is pretty good",
    "I've been trying to run three times a week",
    "do you like jazz or classical more",
    "my laptop keeps overheating when I play games",
    "recommend a podcast about history",
    "I tried baking sourdough and it was a disaster",
    "the traffic this morning was unbelievable",
    "thinking about repainting the living room green",
];

/// What a user said 50 messages ago comes back when it matters: real embeddings, real SQLite.
#[test]
fn a_memory_from_long_ago_is_recalled_when_it_matters() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let app = start(settings(dir.path(), &llm.base_url()), extras(vec![])).await;
        let mut ana = Client::new("aria", "test:ana-sibling");
        assert!(is_done(
            &ana.ask(&app, "my sister Ana lives in Porto").await
        ));
        for i in 0..50 {
            let text = format!("{} ({i})", UNRELATED[i % UNRELATED.len()]);
            assert!(is_done(&ana.ask(&app, &text).await));
        }
        assert!(is_done(
            &ana.ask(&app, "which city does Ana live in again?").await
        ));
        let request = llm.requests().pop().unwrap();
        let system = &request.contents()[0];
        let history: Vec<String> = request.contents()[1..].to_vec();
        assert!(
            !history.iter().any(|m| m.contains("Porto")),
            "not simply in the recent history"
        );
        assert!(
            system.contains("the user said: my sister Ana lives in Porto"),
            "{system}"
        );
        app.shutdown().await;
    });
}

/// Two users tell the bot different secrets, in several scopes: neither secret ever appears in
/// a prompt sent for the other user. And a DM never leaks into a guild, while the user's guild
/// memories follow them into their DMs.
#[test]
fn memories_never_cross_users_and_dms_never_reach_guilds() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let app = start(settings(dir.path(), &llm.base_url()), extras(vec![])).await;
        let secrets = [
            ("test:alice", "my locker code is 4821"),
            ("test:bob", "my bank PIN is 9907"),
        ];
        let scopes = [Scope::Console, Scope::Direct, Scope::Guild(1)];
        let mut owner_of_request = Vec::new();
        for scope in &scopes {
            for (user, secret) in secrets {
                let mut c = Client::new("aria", user).in_scope(scope.clone());
                assert!(is_done(&c.ask(&app, secret).await));
                owner_of_request.push(user);
            }
        }
        for scope in &scopes {
            for (user, _) in secrets {
                let mut c = Client::new("aria", user).in_scope(scope.clone());
                for question in [
                    "what secret numbers have I told you?",
                    "what's my code or PIN?",
                ] {
                    assert!(is_done(&c.ask(&app, question).await));
                    owner_of_request.push(user);
                }
            }
        }
        let requests = llm.requests();
        assert_eq!(requests.len(), owner_of_request.len());
        let mut recalled_own = 0;
        for (request, owner) in requests.iter().zip(&owner_of_request) {
            let prompt = request.contents().join("\n");
            for (user, secret) in secrets {
                let number = secret.rsplit(' ').next().unwrap();
                if user != *owner {
                    assert!(
                        !prompt.contains(number),
                        "{user}'s secret in a prompt for {owner}:\n{prompt}"
                    );
                } else if prompt.contains(&format!("the user said: {secret}")) {
                    recalled_own += 1;
                }
            }
        }
        assert!(
            recalled_own >= 6,
            "each user's own secret is recalled for them ({recalled_own})"
        );

        // DM -> guild: never. Guild -> DM (same character): yes.
        let mut dm = Client::new("aria", "test:carla").in_scope(Scope::Direct);
        let mut guild = Client::new("aria", "test:carla").in_scope(Scope::Guild(42));
        assert!(is_done(
            &dm.ask(&app, "my diary password is tulip-velvet").await
        ));
        assert!(is_done(&guild.ask(&app, "my favourite band is Muse").await));
        assert!(is_done(
            &guild.ask(&app, "what is my diary password?").await
        ));
        let in_guild = llm.requests().pop().unwrap().contents().join("\n");
        assert!(
            !in_guild.contains("tulip-velvet"),
            "a DM leaked into a guild:\n{in_guild}"
        );
        assert!(is_done(&dm.ask(&app, "what's my favourite band?").await));
        let in_dm = llm.requests().pop().unwrap().contents()[0].clone();
        assert!(
            in_dm.contains("my favourite band is Muse"),
            "guild memory recalled in the DM:\n{in_dm}"
        );
        app.shutdown().await;
    });
}

/// The ages the prompt gives memories are true: with the clock moved three weeks on, a memory
/// told "today" is recalled as said three weeks ago (an injected clock, real stores and model).
#[test]
fn a_memory_says_how_long_ago_it_was_said() {
    use std::sync::Arc;
    use std::time::Duration;
    use whisper_actors::clock::ManualClock;
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.facts.extract = false;
        let clock = Arc::new(ManualClock::new(1_800_000_000_000));
        let mut with_clock = extras(vec![]);
        with_clock.clock = Some(clock.clone());
        let app = start(s, with_clock).await;
        let mut eli = Client::new("aria", "test:eli");
        assert!(is_done(
            &eli.ask(&app, "my flat is in Leith, near the harbour").await
        ));
        crate::support::app::drain(&app).await;
        clock.advance(Duration::from_secs(21 * 86_400));
        for i in 0..12 {
            assert!(is_done(
                &eli.ask(&app, UNRELATED[i % UNRELATED.len()]).await
            ));
        }
        assert!(is_done(
            &eli.ask(&app, "which part of town is my flat in?").await
        ));
        let request = llm.requests().pop().unwrap();
        let system = &request.contents()[0];
        assert!(
            system.contains("(3 weeks ago) the user said: my flat is in Leith"),
            "{system}"
        );
        app.shutdown().await;
    });
}
