//! Live reload against the real application: the configuration file and the character files
//! change under a running bot, `App::reload` (what SIGHUP and `whisperengine reload` run)
//! applies what changed while conversations go on, and a file with an error changes nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use whisper_actors::messages::ReplyStatus;
use whisper_actors::sink::ChannelSink;
use whisper_actors::{ConversationKey, Scope, UserMessage};
use whisperengine::config::{self, Overrides};

use crate::support::app::{Client, extras, is_done, run_actix, start};
use crate::support::openai_server::ScriptedLlm;

/// A bot directory: a config file and a copy of the character files, both editable.
struct BotDir {
    dir: tempfile::TempDir,
    base_url: String,
}

impl BotDir {
    fn new(base_url: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let characters = dir.path().join("characters");
        std::fs::create_dir(&characters).unwrap();
        for file in ["aria.toml", "marlowe.toml"] {
            std::fs::copy(
                Path::new("config/characters").join(file),
                characters.join(file),
            )
            .unwrap();
        }
        let bot = Self {
            dir,
            base_url: base_url.to_owned(),
        };
        bot.write_config("[runtime]\nshards = 2\n");
        bot
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("bot.toml")
    }

    /// The test's base configuration plus `extra` (TOML appended at the end: tables only).
    fn write_config(&self, extra: &str) {
        self.write_config_jobs(extra, "");
    }

    /// [`Self::write_config`], with `jobs` lines in the `[jobs]` table.
    fn write_config_jobs(&self, extra: &str, jobs: &str) {
        let base = format!(
            r#"[llm]
base_url = "{url}"
model = "scripted"
retry_backoff = "20ms"
[streaming]
edit_interval = "50ms"
[jobs]
poll_interval = "50ms"
{jobs}
[characters]
dir = "{chars}"
{extra}"#,
            url = self.base_url,
            chars = self.dir.path().join("characters").display(),
        );
        std::fs::write(self.config_path(), base).unwrap();
    }

    fn overrides(&self) -> Overrides {
        Overrides {
            config_file: Some(self.config_path()),
            data_dir: Some(self.dir.path().join("data")),
            ignore_environment: true,
        }
    }

    fn settings(&self) -> config::Settings {
        config::load(&self.overrides()).unwrap().settings
    }
}

/// A reload with a wrong type or an unknown key changes nothing, and its answer names the
/// file and the key.
#[test]
fn a_bad_file_changes_nothing_and_names_the_key() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let bot = BotDir::new(&llm.base_url());
        let app = start(bot.settings(), extras(vec![])).await;

        bot.write_config("[pools]\nmemory = \"lots\"\n");
        let outcome = app.reload(&bot.overrides()).await;
        assert!(!outcome.applied, "{outcome}");
        let text = outcome.to_string();
        assert!(text.contains("pools.memory"), "{text}");
        assert!(text.contains("bot.toml"), "{text}");

        bot.write_config("[runtime]\nshardz = 4\n");
        let outcome = app.reload(&bot.overrides()).await;
        assert!(
            !outcome.applied && outcome.to_string().contains("shardz"),
            "{outcome}"
        );
        bot.write_config("[runtime]\nshards = 2\n[memory]\ntop_kk = 4\n");
        let outcome = app.reload(&bot.overrides()).await;
        assert!(
            !outcome.applied && outcome.to_string().contains("top_kk"),
            "{outcome}"
        );

        let status = app.runtime().status();
        assert_eq!(status.shards.len(), 2, "nothing changed");
        assert_eq!(status.config_generation, 1);
        let written = whisperengine::app::reload::ReloadOutcome::read(&bot.dir.path().join("data"))
            .expect("the outcome is written for `whisperengine reload`");
        assert_eq!(written.attempt, 3);
        app.shutdown().await;
    });
}

/// Keys that cannot change live are named "needs a restart"; the live ones are applied.
#[test]
fn a_reload_lists_what_changed_and_what_needs_a_restart() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let bot = BotDir::new(&llm.base_url());
        let app = start(bot.settings(), extras(vec![])).await;
        let base = bot.settings();
        bot.write_config(
            "[runtime]\nshards = 3\n[metrics]\naddress = \"127.0.0.1:0\"\n[pools]\nllm_concurrency = 7\n",
        );
        let outcome = app.reload(&bot.overrides()).await;
        assert!(outcome.applied, "{outcome}");
        let text = outcome.to_string();
        assert!(text.contains("runtime.shards: 2 -> 3 (applied)"), "{text}");
        assert!(
            text.contains(&format!(
                "pools.llm_concurrency: {} -> 7 (applied)",
                base.pools.llm_concurrency
            )),
            "{text}"
        );
        assert!(
            text.contains("metrics.address") && text.contains("(needs a restart)"),
            "{text}"
        );
        app.runtime().resize_settled().await;
        let status = app.runtime().status();
        assert_eq!(status.shards.len(), 3);
        assert_eq!(status.llm.max_concurrent, 7);
        assert_eq!(status.config_generation, 2);
        // Nothing new: no change, same generation.
        let again = app.reload(&bot.overrides()).await;
        assert!(
            again.changes.iter().all(|c| !c.live),
            "only the restart-only key is still pending: {again}"
        );
        assert_eq!(app.runtime().status().config_generation, 2);
        app.shutdown().await;
    });
}

/// A persona edited in its file shows up in the next prompt of a live conversation.
#[test]
fn an_edited_persona_reaches_the_next_prompt() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let bot = BotDir::new(&llm.base_url());
        let app = start(bot.settings(), extras(vec![])).await;
        let mut ana = Client::new("aria", "test:persona");
        assert!(is_done(&ana.ask(&app, "hello there, how are you?").await));
        let file = bot.dir.path().join("characters/aria.toml");
        let persona = std::fs::read_to_string(&file).unwrap().replace(
            "You are Aria, a warm and curious companion",
            "You are Aria, a pirate captain who speaks in sea shanties",
        );
        std::fs::write(&file, persona).unwrap();
        let outcome = app.reload(&bot.overrides()).await;
        assert!(outcome.to_string().contains("characters.aria"), "{outcome}");
        assert!(is_done(&ana.ask(&app, "what should I cook tonight?").await));
        let system = llm.requests().last().unwrap().contents()[0].clone();
        assert!(system.contains("a pirate captain"), "{system}");

        // A removed character stops answering; the router says which.
        std::fs::remove_file(bot.dir.path().join("characters/marlowe.toml")).unwrap();
        let outcome = app.reload(&bot.overrides()).await;
        assert!(
            outcome.to_string().contains("characters.marlowe"),
            "{outcome}"
        );
        let refused = app.router().route(UserMessage {
            key: ConversationKey::new("marlowe", "test:persona"),
            scope: Scope::Direct,
            channel: None,
            display_name: "ana".into(),
            text: "hi".into(),
            message_id: 99,
            received_at: Instant::now(),
            reply_to: ChannelSink::start().0,
            settled: None,
            images: Vec::new(),
        });
        assert!(refused.is_err(), "{refused:?}");
        app.shutdown().await;
    });
}

/// 50 users × 20 messages in flight while reloads take the shards 2 → 5 → 3 and resize the
/// memory, embedder, history and job-worker pools and the LLM admission: every reply comes
/// back complete, exactly once, in order, and status shows the new sizes.
#[test]
fn reloads_under_load_lose_nothing_and_keep_order() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let bot = BotDir::new(&llm.base_url());
        let mut s = bot.settings();
        s.pools.llm_concurrency = whisperengine::config::AutoCount::Fixed(8);
        s.pools.llm_queue = 2_000;
        bot.write_config("[runtime]\nshards = 2\n[pools]\nllm_concurrency = 8\nllm_queue = 2000\n");
        let app = start(s, extras(vec![])).await;
        let (sink, mut updates) = ChannelSink::start();
        let keys: Vec<ConversationKey> = (0..50)
            .map(|u| ConversationKey::new("aria", format!("test:load{u}")))
            .collect();
        let steps = [
            (
                5,
                "[runtime]\nshards = 5\n[pools]\nllm_concurrency = 16\nllm_queue = 2000\n\
                 memory = 4\nembedder = 2\nhistory = 3\n",
                "workers = 3",
            ),
            (
                12,
                "[runtime]\nshards = 3\n[pools]\nllm_concurrency = 4\nllm_queue = 2000\n\
                 memory = 1\nembedder = 1\nhistory = 1\n",
                "workers = 1",
            ),
        ];
        for n in 1..=20u64 {
            for key in &keys {
                app.router()
                    .route(UserMessage {
                        key: key.clone(),
                        scope: Scope::Direct,
                        channel: None,
                        display_name: "load".into(),
                        text: format!("message {n} from {}", key.user),
                        message_id: n,
                        received_at: Instant::now(),
                        reply_to: sink.clone(),
                        settled: None,
                        images: Vec::new(),
                    })
                    .unwrap();
            }
            for (at, extra, jobs) in steps {
                if n == at {
                    bot.write_config_jobs(extra, jobs);
                    let outcome = app.reload(&bot.overrides()).await;
                    assert!(outcome.applied, "{outcome}");
                }
            }
        }
        let mut seen: std::collections::HashMap<String, Vec<u64>> = Default::default();
        let mut finals = 0;
        while finals < 50 * 20 {
            let update = tokio::time::timeout(Duration::from_secs(60), updates.recv())
                .await
                .expect("every reply within 60 s")
                .unwrap();
            if update.is_final() {
                assert!(matches!(update.status, ReplyStatus::Done(_)), "{update:?}");
                seen.entry(update.key.user.to_string())
                    .or_default()
                    .push(update.message_id);
                finals += 1;
            }
        }
        for key in &keys {
            assert_eq!(
                seen[&*key.user],
                (1..=20).collect::<Vec<u64>>(),
                "{}: complete, once each, in order",
                key.user
            );
        }
        app.runtime().resize_settled().await;
        let status = app.runtime().status();
        assert_eq!(status.shards.len(), 3);
        assert_eq!(status.llm.max_concurrent, 4);
        let memory = status
            .pools
            .iter()
            .find(|p| p.name.starts_with("MemoryActor"))
            .expect("the memory pool in status");
        assert_eq!(memory.size, 1);
        for kind in ["EmbedderActor", "history", "JobWorker"] {
            let pool = status
                .pools
                .iter()
                .find(|p| p.name.starts_with(kind))
                .unwrap_or_else(|| panic!("{kind} in status: {:?}", status.pools));
            assert_eq!(pool.size, 1, "{kind}");
        }
        assert_eq!(status.config_generation, 3);
        app.shutdown().await;
    });
}

/// `[limits]`, `[memory]` ranking and `[context]` take effect at the next message: a limit
/// switched on refuses the message over it, and a smaller `memory.top_k` recalls fewer
/// memories.
#[test]
fn live_settings_take_effect_at_the_next_message() {
    use whisper_actors::messages::FailureKind;
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let bot = BotDir::new(&llm.base_url());
        bot.write_config("[runtime]\nshards = 2\n[classifier]\nenabled = false\n");
        let app = start(bot.settings(), extras(vec![])).await;
        let mut ana = Client::new("aria", "test:tuned");
        for text in [
            "my sister Ana lives in Porto",
            "my brother Rui lives in Braga",
            "my cousin Eva lives in Faro",
        ] {
            assert!(is_done(&ana.ask(&app, text).await));
        }
        crate::support::app::drain(&app).await;
        let memories = |llm: &ScriptedLlm| {
            let system = llm.requests().last().unwrap().contents()[0].clone();
            system.lines().filter(|l| l.starts_with("- (")).count()
        };
        assert!(is_done(&ana.ask(&app, "where do my siblings live?").await));
        assert!(memories(&llm) >= 3, "all recalled at top_k 5");

        bot.write_config(
            "[runtime]\nshards = 2\n[classifier]\nenabled = false\n[memory]\ntop_k = 1\n\
             [limits]\nmessages_per_window = 2\nwindow = \"1h\"\ntransports = [\"test\"]\n",
        );
        let outcome = app.reload(&bot.overrides()).await;
        let text = outcome.to_string();
        assert!(text.contains("memory.top_k: 5 -> 1 (applied)"), "{text}");
        assert!(
            text.contains("limits.messages_per_window") && text.contains("-> 2 (applied)"),
            "{text}"
        );
        assert!(is_done(&ana.ask(&app, "where do my siblings live?").await));
        assert_eq!(memories(&llm), 1, "top_k 1 now");
        assert!(is_done(&ana.ask(&app, "and my cousin?").await));
        let over = ana.ask(&app, "one more").await;
        assert_eq!(over.status, ReplyStatus::Failed(FailureKind::RateLimited));
        app.shutdown().await;
    });
}

/// The intents file is live: routing greetings to the full path sends "hello there" there at
/// the next message; a broken file changes nothing.
#[test]
fn edited_intents_route_the_next_message() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let bot = BotDir::new(&llm.base_url());
        let intents = bot.dir.path().join("intents.toml");
        std::fs::copy("config/intents.toml", &intents).unwrap();
        let section = format!(
            "[runtime]\nshards = 2\n[classifier]\nintents = \"{}\"\n",
            intents.display()
        );
        bot.write_config(&section);
        let app = start(bot.settings(), extras(vec![])).await;
        let full_path = |llm: &ScriptedLlm| {
            let system = llm.requests().last().unwrap().contents()[0].clone();
            system.contains("## Facts about the user")
        };
        let mut ana = Client::new("aria", "test:intents");
        assert!(is_done(&ana.ask(&app, "hello there").await));
        assert!(!full_path(&llm), "a greeting takes the fast track");

        let original = std::fs::read_to_string(&intents).unwrap();
        // Greetings now take the full path.
        let edited = original.replacen(
            "name = \"greeting\"\nroute = \"fast\"",
            "name = \"greeting\"\nroute = \"full\"",
            1,
        );
        assert_ne!(edited, original);
        std::fs::write(&intents, edited).unwrap();
        let outcome = app.reload(&bot.overrides()).await;
        assert!(
            outcome.to_string().contains("classifier.intents"),
            "{outcome}"
        );
        assert!(is_done(&ana.ask(&app, "hello there").await));
        assert!(full_path(&llm), "greetings take the full path now");

        std::fs::write(&intents, "[[intent]]\nname = 3\n").unwrap();
        let outcome = app.reload(&bot.overrides()).await;
        assert!(!outcome.applied, "{outcome}");
        assert!(outcome.to_string().contains("intents"), "{outcome}");
        assert!(is_done(&ana.ask(&app, "hello there").await));
        assert!(full_path(&llm), "the last good intents stay in force");
        app.shutdown().await;
    });
}
