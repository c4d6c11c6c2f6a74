//! The Discord transport end to end: the real serenity client against the loopback emulator
//! (`tests/support/discord.rs`), the real runtime, SQLite and the scripted model server.
//!
//! One file on purpose: the tests share the `Rig` (emulator, bots, model) and its helpers;
//! each test is one behaviour a user of a Discord bot relies on.

use std::time::Duration;

use whisperengine::app::App;
use whisperengine::config::{DmPolicy, Settings};
use whisperengine::transport::discord::{self, DiscordBots};

use crate::support::app::{extras, run_actix, settings, start};
use crate::support::discord::{Call, DiscordEmulator, Fault, Incoming};
use crate::support::openai_server::{Behavior, ScriptedLlm};

const GUILD: u64 = 500;
const CHANNEL: u64 = 600;
const OPEN_CHANNEL: u64 = 601;
const USER: u64 = 42;

struct Rig {
    app: App,
    emu: DiscordEmulator,
    llm: ScriptedLlm,
    bots: DiscordBots,
    /// Bot user ids, by character.
    ids: Vec<(String, u64)>,
    /// What the app was started with.
    settings: Settings,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(characters: &[&str], tweak: impl FnOnce(&mut Settings)) -> Rig {
        let llm = ScriptedLlm::start().await;
        let emu = DiscordEmulator::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.classifier.enabled = false;
        s.facts.extract = false;
        s.streaming.edit_interval = Duration::from_millis(300);
        s.discord.api_url = emu.url();
        s.discord.ratelimiter = false;
        let mut ids = Vec::new();
        for character in characters {
            let token = format!("token-{character}");
            ids.push((character.to_string(), emu.add_bot(&token, character)));
            s.discord.tokens.insert(character.to_string(), token.into());
        }
        tweak(&mut s);
        let app = start(s.clone(), extras(vec![])).await;
        let bots = discord::start(&app, &s).await.expect("bots start");
        emu.wait_connected(characters.len()).await;
        Rig {
            app,
            emu,
            llm,
            bots,
            ids,
            settings: s,
            _dir: dir,
        }
    }

    fn id(&self, character: &str) -> u64 {
        self.ids.iter().find(|(c, _)| c == character).unwrap().1
    }

    /// A guild message from USER in CHANNEL mentioning `character`.
    fn mention(&self, character: &str, text: &str) -> Incoming {
        let id = self.id(character);
        Incoming {
            author: USER,
            author_name: "sam".into(),
            guild: Some(GUILD),
            channel: CHANNEL,
            content: format!("<@{id}> {text}"),
            mentions: vec![id],
            ..Default::default()
        }
    }

    /// Writes (sends and edits) of the reply to `message`: the reply itself, any continuation
    /// messages, and their edits.
    fn reply_writes(&self, message: u64) -> Vec<Call> {
        let calls = self.emu.calls();
        let Some(first) = calls.iter().position(|c| c.reply_to == Some(message)) else {
            return Vec::new();
        };
        let channel = calls[first].channel;
        let bot = calls[first].bot.clone();
        calls[first..]
            .iter()
            .filter(|c| c.kind != "typing" && c.channel == channel && c.bot == bot)
            .cloned()
            .collect()
    }

    /// Waits until the reply to `message` shows `expected` across its messages.
    async fn wait_reply(&self, message: u64, expected: &str) -> Vec<Call> {
        for _ in 0..400 {
            let writes = self.reply_writes(message);
            if shown(&writes) == expected {
                return writes;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "reply to {message} never showed {expected:?}; calls: {:#?}",
            self.emu.calls()
        );
    }

    async fn stop(self) {
        self.bots.shutdown().await;
        self.app.shutdown().await;
    }
}

/// What a reply's messages show now: the last successful content of each message, in order.
fn shown(writes: &[Call]) -> String {
    let mut messages: Vec<(u64, String)> = Vec::new();
    for w in writes.iter().filter(|w| w.status < 300) {
        let id = w.message.unwrap();
        let content = w.content.clone().unwrap_or_default();
        match messages.iter_mut().find(|(m, _)| *m == id) {
            Some(entry) => entry.1 = content,
            None => messages.push((id, content)),
        }
    }
    messages
        .into_iter()
        .map(|(_, c)| c)
        .collect::<Vec<_>>()
        .join("")
}

fn tokens(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("word{i} ")).collect()
}

/// A mention gets a typing indicator, one reply to the message (no ping), then edits at least
/// `streaming.edit_interval` apart, ending with exactly the model's whole output.
#[test]
fn a_mention_streams_a_reply_by_editing_it() {
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |_| {}).await;
        let words = tokens(20);
        rig.llm.script([Behavior::Stream {
            tokens: words.clone(),
            first_delay: Duration::from_millis(200),
            delay: Duration::from_millis(100),
        }]);
        let id = rig.emu.post(rig.mention("aria", "tell me a story"));
        let writes = rig.wait_reply(id, &words.concat()).await;

        let calls = rig.emu.calls();
        let typing = calls
            .iter()
            .position(|c| c.kind == "typing")
            .expect("typing");
        let reply = calls.iter().position(|c| c.reply_to == Some(id)).unwrap();
        assert!(typing < reply, "typing before the reply");
        let sends: Vec<_> = writes.iter().filter(|w| w.kind == "send").collect();
        assert_eq!(sends.len(), 1, "one message: {writes:#?}");
        assert!(writes.len() >= 3, "the reply grew by edits: {writes:#?}");
        for pair in writes.windows(2) {
            let gap = pair[1].at - pair[0].at;
            assert!(gap >= Duration::from_millis(290), "writes {gap:?} apart");
        }
        let request = rig.llm.requests().pop().unwrap();
        assert_eq!(request.last_user_message(), "tell me a story");
        rig.stop().await;
    });
}

/// A 5,000-character reply continues in new messages, each at most 2,000 characters with
/// balanced code fences, and the channel never sees more than 5 writes in 5 seconds.
#[test]
fn a_long_reply_is_split_and_rate_limited() {
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |s| {
            s.streaming.edit_interval = Duration::from_millis(100);
        })
        .await;
        let code: String = (0..60)
            .map(|i| format!("    let value_{i} = compute({i});\n"))
            .collect();
        let prose = "The quick brown fox jumps over the lazy dog. ".repeat(50);
        let text = format!("{prose}\n\n```rust\n{code}```\n\n{prose}\n\n{prose}");
        assert!(text.chars().count() > 5000);
        let chunks: Vec<String> = text
            .as_bytes()
            .chunks(100)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        rig.llm.script([Behavior::Stream {
            tokens: chunks,
            first_delay: Duration::ZERO,
            delay: Duration::from_millis(40),
        }]);
        let id = rig.emu.post(rig.mention("aria", "write me something long"));
        let mut final_parts = Vec::new();
        for _ in 0..600 {
            let writes = rig.reply_writes(id);
            let mut messages: Vec<(u64, String)> = Vec::new();
            for w in writes.iter().filter(|w| w.status < 300) {
                let m = w.message.unwrap();
                let c = w.content.clone().unwrap();
                match messages.iter_mut().find(|(id, _)| *id == m) {
                    Some(e) => e.1 = c,
                    None => messages.push((m, c)),
                }
            }
            let words: usize = messages
                .iter()
                .map(|(_, c)| {
                    c.split_whitespace()
                        .filter(|w| !w.starts_with("```"))
                        .count()
                })
                .sum();
            let expected = text
                .split_whitespace()
                .filter(|w| !w.starts_with("```"))
                .count();
            if words == expected {
                final_parts = messages.into_iter().map(|(_, c)| c).collect();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(final_parts.len() >= 3, "{final_parts:#?}");
        for part in &final_parts {
            assert!(part.chars().count() <= 2000);
            let fences = part
                .lines()
                .filter(|l| l.trim_start().starts_with("```"))
                .count();
            assert_eq!(fences % 2, 0, "unbalanced fences in {part}");
        }
        let writes: Vec<_> = rig
            .emu
            .calls()
            .into_iter()
            .filter(|c| c.kind != "typing" && c.channel == CHANNEL)
            .collect();
        for (i, w) in writes.iter().enumerate() {
            let in_window = writes[i..]
                .iter()
                .take_while(|o| o.at - w.at < Duration::from_secs(5))
                .count();
            assert!(in_window <= 5, "{in_window} writes within 5 s");
        }
        rig.stop().await;
    });
}

/// DM policy, block list, open channels and other bots.
#[test]
fn who_gets_an_answer_follows_the_config() {
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |s| {
            s.discord.dm_policy = DmPolicy::Allowlist;
            s.discord.dm_allowlist = vec![USER];
            s.discord.blocked_users = vec![13];
            s.discord.open_channels = vec![OPEN_CHANNEL];
            s.discord.blocked_channels = vec![666];
        })
        .await;
        let aria = rig.id("aria");
        let ignored = [
            // Blocked user, mentioning the bot.
            Incoming {
                author: 13,
                ..rig.mention("aria", "hello?")
            },
            // Another bot.
            Incoming {
                author: 77,
                author_is_bot: true,
                ..rig.mention("aria", "beep")
            },
            // Not addressed, in an ordinary channel.
            Incoming {
                author: USER,
                guild: Some(GUILD),
                channel: CHANNEL,
                content: "just chatting with friends".into(),
                ..Default::default()
            },
            // A DM from someone not on the allowlist.
            Incoming {
                author: 99,
                channel: 700,
                content: "hi in private".into(),
                ..Default::default()
            },
        ];
        let ignored: Vec<u64> = ignored.into_iter().map(|m| rig.emu.post(m)).collect();
        let open = rig.emu.post(Incoming {
            author: USER,
            guild: Some(GUILD),
            channel: OPEN_CHANNEL,
            content: "anyone around?".into(),
            ..Default::default()
        });
        let dm = rig.emu.post(Incoming {
            author: USER,
            channel: 701,
            content: "a private hello".into(),
            ..Default::default()
        });
        let replied_to_bot = rig.emu.post(Incoming {
            reply_to: Some((123, aria, "an earlier answer".into())),
            content: "and what about tomorrow?".into(),
            mentions: vec![],
            ..rig.mention("aria", "")
        });
        // A thread the bot started answers without a mention; a thread in a blocked channel
        // is blocked like its parent.
        let own_thread = rig.emu.thread(GUILD, CHANNEL, aria);
        let blocked_thread = rig.emu.thread(GUILD, 666, aria);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let in_thread = rig.emu.post(Incoming {
            author: USER,
            guild: Some(GUILD),
            channel: own_thread,
            content: "continuing here".into(),
            ..Default::default()
        });
        let in_blocked = rig.emu.post(Incoming {
            author: USER,
            guild: Some(GUILD),
            channel: blocked_thread,
            content: "and here".into(),
            ..Default::default()
        });
        rig.wait_reply(in_thread, "echo: continuing here").await;
        rig.wait_reply(open, "echo: anyone around?").await;
        rig.wait_reply(dm, "echo: a private hello").await;
        rig.wait_reply(replied_to_bot, "echo: and what about tomorrow?")
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        for id in ignored.into_iter().chain([in_blocked]) {
            assert!(rig.reply_writes(id).is_empty(), "message {id} was answered");
        }
        assert_eq!(rig.llm.requests().len(), 4);
        rig.stop().await;
    });
}

/// A 429 is waited out exactly as long as Discord asks (the body's 1.5 s, not the header's
/// rounded 2 s, and never sooner: the emulator answers another 429 to an early retry), and a
/// reply deleted while streaming continues in a new message.
#[test]
fn discord_errors_never_break_a_conversation() {
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |_| {}).await;
        rig.emu.inject(Fault::RateLimited { retry_after: 1.5 });
        let id = rig.emu.post(rig.mention("aria", "first"));
        let writes = rig.wait_reply(id, "echo: first").await;
        let all = rig.emu.calls();
        let limited: Vec<_> = all.iter().filter(|c| c.status == 429).collect();
        assert_eq!(limited.len(), 1, "retried too early: {all:#?}");
        let retried = writes.iter().find(|w| w.status == 200).unwrap();
        let waited = retried.at - limited[0].at;
        assert!(
            waited >= Duration::from_millis(1500) && waited < Duration::from_millis(1900),
            "waited {waited:?} for a 1.5 s retry_after"
        );

        // The reply is deleted after its first appearance; the rest arrives as a new message.
        let words = tokens(12);
        rig.llm.script([Behavior::Stream {
            tokens: words.clone(),
            first_delay: Duration::ZERO,
            delay: Duration::from_millis(150),
        }]);
        let deleted = rig.emu.post(rig.mention("aria", "fourth"));
        let first_message = loop {
            if let Some(w) = rig.reply_writes(deleted).first() {
                break w.message.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        rig.emu.delete(first_message);
        let full = words.concat();
        let mut continued = None;
        for _ in 0..400 {
            let calls = rig.emu.calls();
            let after_404 = calls
                .iter()
                .position(|c| c.status == 404)
                .map(|at| calls[at + 1..].to_vec());
            if let Some(after) = after_404
                && let Some(new) = after.iter().find(|c| c.kind == "send" && c.status == 200)
            {
                let id = new.message.unwrap();
                let last = after
                    .iter()
                    .rev()
                    .find(|c| c.message == Some(id) && c.status == 200)
                    .unwrap();
                if full.ends_with(last.content.as_deref().unwrap()) && full.ends_with("word11 ") {
                    let edits_of_deleted = after
                        .iter()
                        .filter(|c| c.message == Some(first_message))
                        .count();
                    continued = Some((last.content.clone().unwrap(), edits_of_deleted));
                    if last.content.as_deref().unwrap().contains("word11") {
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let (rest, edits_after) = continued.expect("the reply continued in a new message");
        assert!(rest.contains("word11"), "{rest}");
        assert_eq!(edits_after, 0, "no more edits of the deleted message");
        rig.stop().await;
    });
}

/// A dropped gateway connection is resumed and the next message is answered.
#[test]
fn a_dropped_gateway_is_resumed() {
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |_| {}).await;
        let before = rig.emu.post(rig.mention("aria", "before"));
        rig.wait_reply(before, "echo: before").await;
        rig.emu.drop_gateways();
        for _ in 0..600 {
            if rig.emu.resumes() + rig.emu.identifies() >= 2 && rig.emu.connected() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(rig.emu.connected(), 1, "reconnected");
        assert!(
            rig.emu.resumes() >= 1,
            "the session was resumed, not restarted"
        );
        let after = rig.emu.post(rig.mention("aria", "after"));
        rig.wait_reply(after, "echo: after").await;
        rig.stop().await;
    });
}

/// Two characters with two tokens in one process: each answers its own mentions, and a message
/// mentioning both is answered by each.
#[test]
fn two_characters_share_one_process() {
    run_actix(|| async {
        let rig = Rig::start(&["aria", "marlowe"], |_| {}).await;
        let to_aria = rig.emu.post(rig.mention("aria", "only aria"));
        rig.wait_reply(to_aria, "echo: only aria").await;
        let to_marlowe = rig.emu.post(rig.mention("marlowe", "only marlowe"));
        rig.wait_reply(to_marlowe, "echo: only marlowe").await;
        let (aria, marlowe) = (rig.id("aria"), rig.id("marlowe"));
        let both = rig.emu.post(Incoming {
            content: format!("<@{aria}> <@{marlowe}> both of you"),
            mentions: vec![aria, marlowe],
            ..rig.mention("aria", "")
        });
        for _ in 0..400 {
            let replies: Vec<_> = rig
                .emu
                .calls()
                .into_iter()
                .filter(|c| c.reply_to == Some(both))
                .collect();
            if replies.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let calls = rig.emu.calls();
        let by = |id: u64| -> Vec<String> {
            calls
                .iter()
                .filter(|c| c.reply_to == Some(id))
                .map(|c| c.bot.clone())
                .collect()
        };
        assert_eq!(by(to_aria), vec!["aria"]);
        assert_eq!(by(to_marlowe), vec!["marlowe"]);
        let mut both_by = by(both);
        both_by.sort();
        assert_eq!(both_by, vec!["aria", "marlowe"]);
        // Each character keeps its own conversation with the user.
        let users: Vec<String> = rig
            .llm
            .requests()
            .iter()
            .map(|r| r.contents()[0].clone())
            .collect();
        assert!(
            users.iter().any(|s| s.contains("Aria")) && users.iter().any(|s| s.contains("Marlowe"))
        );
        rig.stop().await;
    });
}

/// The replied-to message and text attachments reach the model; other attachments get a notice
/// in the reply; the reply never pings anyone.
#[test]
fn discord_context_reaches_the_model() {
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |_| {}).await;
        let id = rig.emu.post(Incoming {
            reply_to: Some((321, 55, "the meeting moved to 5pm".into())),
            attachments: vec![
                (
                    "notes.txt".into(),
                    "text/plain".into(),
                    "buy milk and eggs".into(),
                ),
                (
                    "photo.png".into(),
                    "image/png".into(),
                    "\u{89}PNG binary".into(),
                ),
            ],
            ..rig.mention("aria", "what do you make of this?")
        });
        let mut reply = String::new();
        for _ in 0..400 {
            reply = shown(&rig.reply_writes(id));
            if reply.contains("photo.png") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(reply.contains("couldn't open photo.png"), "{reply}");
        let asked = rig.llm.requests().pop().unwrap().last_user_message();
        assert!(asked.contains("the meeting moved to 5pm"), "{asked}");
        assert!(asked.contains("buy milk and eggs"), "{asked}");
        assert!(asked.contains("what do you make of this?"), "{asked}");
        assert!(!asked.contains("PNG"), "{asked}");
        let send = rig
            .emu
            .calls()
            .into_iter()
            .find(|c| c.reply_to == Some(id))
            .unwrap();
        let mentions = send.allowed_mentions.expect("allowed_mentions sent");
        assert_ne!(
            mentions["replied_user"],
            serde_json::json!(true),
            "{mentions}"
        );
        assert!(
            mentions["parse"].as_array().is_none_or(|p| p.is_empty()),
            "{mentions}"
        );
        rig.stop().await;
    });
}

fn user_rows(db: &std::path::Path, user: &str) -> Vec<(&'static str, i64)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    ["turns", "profiles", "memories", "facts", "jobs"]
        .into_iter()
        .map(|table| {
            let sql = format!("SELECT COUNT(*) FROM {table} WHERE user_id = ?1");
            (table, conn.query_row(&sql, [user], |r| r.get(0)).unwrap())
        })
        .collect()
}

/// Waits for the next interaction answer (response or followup) after `seen` earlier ones.
async fn answer_after(rig: &Rig, seen: usize) -> Call {
    for _ in 0..400 {
        let answers: Vec<Call> = rig
            .emu
            .calls()
            .into_iter()
            .filter(|c| (c.kind == "interaction" || c.kind == "followup") && c.content.is_some())
            .collect();
        if answers.len() > seen {
            return answers[seen].clone();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let calls: Vec<_> = rig
        .emu
        .calls()
        .into_iter()
        .map(|c| (c.kind, c.status, c.content))
        .collect();
    panic!("no interaction answer: {calls:?}");
}

/// Slash commands are registered at startup and answer ephemerally; `/forget` through an
/// interaction deletes the user's data in every store; `/status` is for admins only.
#[test]
fn slash_commands_show_and_forget_the_users_data() {
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |_| {}).await;
        let aria = rig.id("aria");
        for _ in 0..200 {
            if rig.emu.commands(aria).len() == 6 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut registered = rig.emu.commands(aria);
        registered.sort();
        assert_eq!(
            registered,
            ["facts", "forget", "help", "memories", "profile", "status"]
        );
        let dm = rig.emu.post(Incoming {
            author: USER,
            channel: 701,
            content: "my dog is called Rex".into(),
            ..Default::default()
        });
        rig.wait_reply(dm, "echo: my dog is called Rex").await;
        crate::support::app::drain(&rig.app).await;
        let db = rig._dir.path().join("whisperengine.db");
        let user = format!("discord:{USER}");
        assert!(user_rows(&db, &user).iter().any(|(_, n)| *n > 0));

        rig.emu.slash(aria, USER, "memories", &[]);
        let memories = answer_after(&rig, 0).await;
        assert!(memories.ephemeral);
        assert!(memories.content.unwrap().contains("Rex"));

        rig.emu.slash(aria, USER, "status", &[]);
        let status = answer_after(&rig, 1).await;
        assert!(status.content.unwrap().contains("Only the bot's admins"));

        rig.emu.slash(aria, USER, "forget", &[("scope", "all")]);
        let forgot = answer_after(&rig, 2).await;
        assert!(forgot.ephemeral);
        assert!(
            forgot.content.as_deref().unwrap().contains("forgot"),
            "{forgot:?}"
        );
        assert!(
            user_rows(&db, &user).iter().all(|(_, n)| *n == 0),
            "{:?}",
            user_rows(&db, &user)
        );
        rig.stop().await;
    });
}

/// Waits until the one-message reply to `message` shows `expected` (other replies may be
/// written in the same channel meanwhile); returns its writes.
async fn wait_one_message_reply(rig: &Rig, message: u64, expected: &str) -> Vec<Call> {
    for _ in 0..600 {
        let writes = one_message_reply(&rig.emu.calls(), message);
        if writes.last().and_then(|w| w.content.as_deref()) == Some(expected) {
            return writes;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("reply to {message} never showed {expected:?}");
}

/// The writes (the send and its edits) of the one-message reply to `message`.
fn one_message_reply(calls: &[Call], message: u64) -> Vec<Call> {
    let Some(sent) = calls
        .iter()
        .find(|c| c.kind == "send" && c.reply_to == Some(message) && c.status == 200)
        .and_then(|c| c.message)
    else {
        return Vec::new();
    };
    calls
        .iter()
        .filter(|c| c.message == Some(sent) && c.kind != "typing")
        .cloned()
        .collect()
}

/// A reply that completes within `edit_interval` of its first token is written once, whole:
/// no fragment first and an edit after.
#[test]
fn a_short_reply_is_one_write() {
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |_| {}).await;
        let instant = rig.emu.post(rig.mention("aria", "hi"));
        let writes = rig.wait_reply(instant, "echo: hi").await;
        assert_eq!(writes.len(), 1, "{writes:#?}");
        rig.llm.script([Behavior::Stream {
            tokens: tokens(6),
            first_delay: Duration::from_millis(100),
            delay: Duration::from_millis(20),
        }]);
        let streamed = rig.emu.post(rig.mention("aria", "a few words"));
        let writes = rig.wait_reply(streamed, &tokens(6).concat()).await;
        assert_eq!(writes.len(), 1, "streamed within one interval: {writes:#?}");
        rig.stop().await;
    });
}

/// With the channel's budget spent by other replies, a streamed reply's writes still keep
/// `edit_interval` between them: its first write waits for the budget, and the next one is
/// spaced from when that write happened, not from when it began waiting.
#[test]
fn edits_keep_their_spacing_when_the_channel_budget_is_spent() {
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |s| {
            s.streaming.edit_interval = Duration::from_millis(400);
            s.discord.channel_writes = 3;
            s.discord.channel_window = Duration::from_secs(2);
        })
        .await;
        // Three short replies spend the channel's budget.
        for i in 0..3 {
            let id = rig.emu.post(Incoming {
                author: 100 + i,
                ..rig.mention("aria", &format!("quick {i}"))
            });
            wait_one_message_reply(&rig, id, &format!("echo: quick {i}")).await;
        }
        let words: Vec<String> = (0..60).map(|n| format!("w{n} ")).collect();
        rig.llm.script([Behavior::Stream {
            tokens: words.clone(),
            first_delay: Duration::ZERO,
            delay: Duration::from_millis(60),
        }]);
        let id = rig.emu.post(Incoming {
            author: 110,
            ..rig.mention("aria", "a long story")
        });
        let writes = wait_one_message_reply(&rig, id, &words.concat()).await;
        assert!(writes.len() >= 3, "the reply was edited: {writes:#?}");
        for pair in writes.windows(2) {
            let gap = pair[1].at - pair[0].at;
            assert!(
                gap >= Duration::from_millis(400),
                "two writes of one reply {gap:?} apart: {writes:#?}"
            );
        }
        let calls = rig.emu.calls();
        let all: Vec<_> = calls.iter().filter(|c| c.kind != "typing").collect();
        for (i, w) in all.iter().enumerate() {
            let in_window = all[i..]
                .iter()
                .take_while(|o| o.at - w.at < Duration::from_secs(2))
                .count();
            assert!(in_window <= 3, "{in_window} writes within the 2 s window");
        }
        rig.stop().await;
    });
}

/// 35 people mention the bot at once in one channel: every reply arrives complete, the channel
/// budget holds, and a reply costs about one write (the first write waits for the whole short
/// reply instead of posting its first token).
#[test]
fn a_burst_costs_one_write_per_reply() {
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |s| {
            s.streaming.edit_interval = Duration::from_millis(300);
            s.discord.channel_writes = 5;
            s.discord.channel_window = Duration::from_secs(1);
            s.limits.messages_per_window = 0;
            s.pools.llm_concurrency = whisperengine::config::AutoCount::Fixed(8);
        })
        .await;
        // Each reply streams in a few tokens, well within one edit interval.
        let pieces = ["Sure", ", ", "happy ", "to ", "help."];
        rig.llm.script((0..35).map(|_| Behavior::Stream {
            tokens: pieces.iter().map(|p| p.to_string()).collect(),
            first_delay: Duration::from_millis(20),
            delay: Duration::from_millis(30),
        }));
        let ids: Vec<u64> = (0..35)
            .map(|i| {
                rig.emu.post(Incoming {
                    author: 1000 + i,
                    ..rig.mention("aria", &format!("question number {i}"))
                })
            })
            .collect();
        let mut writes = 0;
        for id in &ids {
            writes += wait_one_message_reply(&rig, *id, &pieces.concat())
                .await
                .len();
        }
        let per_reply = writes as f64 / ids.len() as f64;
        println!("burst of {}: {per_reply:.2} writes per reply", ids.len());
        assert!(per_reply <= 1.1, "{per_reply:.2} writes per reply");
        let all: Vec<_> = rig
            .emu
            .calls()
            .into_iter()
            .filter(|c| c.kind != "typing")
            .collect();
        assert!(all.iter().all(|c| c.status == 200), "no write refused");
        for (i, w) in all.iter().enumerate() {
            let in_window = all[i..]
                .iter()
                .take_while(|o| o.at - w.at < Duration::from_secs(1))
                .count();
            assert!(in_window <= 5, "{in_window} writes within 1 s");
        }
        rig.stop().await;
    });
}

/// A channel where the bot may not write (403) is remembered: further mentions there cost
/// neither a model call nor a request, until the channel's permissions change.
#[test]
fn a_forbidden_channel_is_skipped_until_its_permissions_change() {
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |_| {}).await;
        rig.emu.forbid_channel(CHANNEL);
        rig.emu.post(rig.mention("aria", "anyone?"));
        for _ in 0..200 {
            if rig.emu.calls().iter().any(|c| c.status == 403) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        let refused = rig.emu.calls().len();
        assert!((1..=2).contains(&refused), "{:#?}", rig.emu.calls());
        let model_calls = rig.llm.requests().len();
        for i in 0..5 {
            rig.emu
                .post(rig.mention("aria", &format!("hello again {i}")));
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(
            rig.emu.calls().len(),
            refused,
            "no request to a forbidden channel"
        );
        assert_eq!(
            rig.llm.requests().len(),
            model_calls,
            "no model call for it"
        );
        // Another channel is unaffected.
        let elsewhere = rig.emu.post(Incoming {
            channel: CHANNEL + 7,
            ..rig.mention("aria", "over here")
        });
        rig.wait_reply(elsewhere, "echo: over here").await;
        // The permissions change (CHANNEL_UPDATE): the channel is tried again.
        rig.emu.allow_channel(GUILD, CHANNEL);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let back = rig.emu.post(rig.mention("aria", "and now?"));
        rig.wait_reply(back, "echo: and now?").await;
        rig.stop().await;
    });
}

/// The user deletes their message while the reply is being written: the reply still arrives
/// (without the reference Discord can no longer resolve).
#[test]
fn a_reply_arrives_even_if_its_message_was_deleted() {
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |_| {}).await;
        rig.llm.script([Behavior::Stream {
            tokens: vec!["still ".into(), "here".into()],
            first_delay: Duration::from_millis(400),
            delay: Duration::from_millis(10),
        }]);
        let id = rig.emu.post(rig.mention("aria", "quick, answer"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        rig.emu.delete(id);
        let mut delivered = None;
        for _ in 0..200 {
            delivered = rig
                .emu
                .calls()
                .into_iter()
                .find(|c| c.kind == "send" && c.status == 200);
            if delivered.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let sent = delivered.expect("the reply was posted");
        assert_eq!(sent.content.as_deref(), Some("still here"));
        assert_eq!(sent.reply_to, None);
        assert!(
            rig.emu.calls().iter().all(|c| c.status != 400),
            "{:#?}",
            rig.emu.calls()
        );
        rig.stop().await;
    });
}

/// In a guild channel the character sees what others just said there (names included, its own
/// messages marked), but never a blocked user's or another bot's words, never another
/// channel's, and never in a DM; and none of it becomes the asking user's memory.
#[test]
fn a_character_follows_the_channel_conversation() {
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |s| {
            s.discord.blocked_users = vec![13];
        })
        .await;
        let say = |author: u64, name: &str, text: &str| Incoming {
            author,
            author_name: name.into(),
            guild: Some(GUILD),
            channel: CHANNEL,
            content: text.into(),
            ..Default::default()
        };
        let hello = rig.emu.post(Incoming {
            author: 201,
            author_name: "Ana".into(),
            ..rig.mention("aria", "hello aria")
        });
        rig.wait_reply(hello, "echo: hello aria").await;
        for m in [
            say(
                201,
                "Ana",
                "I'm adopting a greyhound named Biscuit tomorrow",
            ),
            say(202, "Bob", "Biscuit is a lovely name"),
            say(13, "Spammer", "buy cheap sunglasses now"),
            Incoming {
                author_is_bot: true,
                ..say(77, "OtherBot", "beep boop automated notice")
            },
        ] {
            rig.emu.post(m);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        // Another channel's talk stays there.
        rig.emu.post(Incoming {
            channel: CHANNEL + 1,
            ..say(204, "Dee", "the secret staff party is on friday")
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ask = rig.emu.post(Incoming {
            author: 203,
            author_name: "Cal".into(),
            ..rig.mention("aria", "what do you think of what Ana said?")
        });
        rig.wait_reply(ask, "echo: what do you think of what Ana said?")
            .await;
        let prompt = rig.llm.requests().pop().unwrap().contents()[0].clone();
        assert!(
            prompt.contains("Ana: I'm adopting a greyhound named Biscuit tomorrow"),
            "{prompt}"
        );
        assert!(prompt.contains("Bob: Biscuit is a lovely name"), "{prompt}");
        assert!(prompt.contains("aria (you): echo: hello aria"), "{prompt}");
        for absent in [
            "sunglasses",
            "beep boop",
            "staff party",
            "what do you think",
        ] {
            assert!(!prompt.contains(absent), "{absent:?} in {prompt}");
        }

        // A DM from the same user sees none of it.
        let dm = rig.emu.post(Incoming {
            author: 203,
            author_name: "Cal".into(),
            channel: 702,
            content: "what did Ana say?".into(),
            ..Default::default()
        });
        rig.wait_reply(dm, "echo: what did Ana say?").await;
        let prompt = rig.llm.requests().pop().unwrap().contents().join("\n");
        assert!(!prompt.contains("greyhound"), "{prompt}");

        // Channel context is never stored as the asker's memory.
        crate::support::app::drain(&rig.app).await;
        let conn = rusqlite::Connection::open(rig._dir.path().join("whisperengine.db")).unwrap();
        let leaked: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM memories WHERE user_id = 'discord:203' AND text LIKE '%greyhound%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(leaked, 0);
        rig.stop().await;
    });
}

/// A log writer the test can read.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// No message content reaches the logs above trace level, whatever happens to the message: a
/// mention poise could mistake for a prefix command, a slash command, a 429, a 403, a fact
/// extraction the model answers badly, a malformed gateway frame carrying the text.
#[test]
fn message_content_stays_out_of_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            whisperengine::telemetry::filter_directives("debug"),
        ))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |s| {
            s.facts.extract = true;
        })
        .await;
        let aria = rig.id("aria");
        let planted = "zanzibar-marmot-lighthouse";
        // Looks like a prefix command to a mention-as-prefix parser.
        let first = rig
            .emu
            .post(rig.mention("aria", &format!("{planted} please")));
        rig.wait_reply(first, &format!("echo: {planted} please"))
            .await;
        rig.emu.inject(Fault::RateLimited { retry_after: 0.2 });
        let limited = rig
            .emu
            .post(rig.mention("aria", &format!("again {planted}")));
        rig.wait_reply(limited, &format!("echo: again {planted}"))
            .await;
        rig.emu.forbid_channel(CHANNEL + 3);
        rig.emu.post(Incoming {
            channel: CHANNEL + 3,
            ..rig.mention("aria", &format!("forbidden {planted}"))
        });
        // A frame serenity cannot parse (the author is missing), carrying the text.
        rig.emu.dispatch_raw(
            "MESSAGE_CREATE",
            serde_json::json!({"id": "5", "channel_id": CHANNEL.to_string(), "content": planted}),
        );
        rig.emu.slash(aria, USER, "memories", &[]);
        tokio::time::sleep(Duration::from_millis(800)).await;
        crate::support::app::drain(&rig.app).await;
        let after = rig.emu.post(rig.mention("aria", "still alive?"));
        rig.wait_reply(after, "echo: still alive?").await;
        rig.stop().await;
    });
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("connected to Discord"),
        "logs were captured: {logs}"
    );
    assert!(logs.contains("rate limited"), "the 429 was logged: {logs}");
    assert!(
        !logs.contains("zanzibar"),
        "message content in the logs:\n{logs}"
    );
}

/// A panic in a DiscordActor handler is caught: the actor restarts under its Supervisor (the
/// restart is counted in status as `DiscordActor (aria)`), and the next mention is answered.
#[test]
fn the_discord_actor_survives_a_panic() {
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |_| {}).await;
        let pool = |rig: &Rig| {
            rig.app
                .runtime()
                .status()
                .pools
                .into_iter()
                .find(|p| p.name == "DiscordActor (aria)")
                .expect("the DiscordActor is shown in status")
        };
        assert_eq!((pool(&rig).size, pool(&rig).restarts), (1, 0));
        let outbound = rig.bots.outbound("aria").expect("aria's DiscordActor");
        let answer = outbound
            .send(whisper_actors::pool::InjectPanic)
            .await
            .expect("the caller gets an answer");
        assert!(answer.is_err(), "the panic answers with an error");
        for _ in 0..200 {
            if pool(&rig).restarts == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(pool(&rig).restarts, 1);
        let message = rig.emu.post(rig.mention("aria", "still there?"));
        rig.wait_reply(message, "echo: still there?").await;
        rig.stop().await;
    });
}

/// A reload changes who gets an answer (the access lists are live) without reconnecting the
/// gateway: Discord allows 1,000 identifies a day.
#[test]
fn a_reload_applies_access_lists_without_reconnecting() {
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |_| {}).await;
        let before = rig.emu.post(rig.mention("aria", "before"));
        rig.wait_reply(before, "echo: before").await;
        let identifies = rig.emu.identifies();

        // The running configuration as a file, with USER blocked.
        let mut edited = rig.settings.clone();
        edited.discord.blocked_users = vec![USER];
        let file = rig._dir.path().join("reload.toml");
        std::fs::write(&file, edited.to_toml()).unwrap();
        let outcome = rig
            .app
            .reload(&whisperengine::config::Overrides {
                config_file: Some(file),
                data_dir: Some(rig.settings.storage.data_dir.clone()),
                ignore_environment: true,
            })
            .await;
        let text = outcome.to_string();
        assert!(
            text.contains("discord.blocked_users: [] -> [42] (applied)"),
            "{text}"
        );

        let blocked = rig.emu.post(rig.mention("aria", "after"));
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            rig.reply_writes(blocked).is_empty(),
            "a blocked user gets no answer: {:#?}",
            rig.emu.calls()
        );
        assert_eq!(rig.emu.identifies(), identifies, "no new IDENTIFY");
        assert_eq!(rig.emu.connected(), 1, "the same gateway connection");
        rig.stop().await;
    });
}

/// serenity runs each gateway event's handler in a task of its own; a burst of one user's
/// messages still reaches the conversation (and the model) in the order Discord sent them.
#[test]
fn a_burst_from_one_user_keeps_its_order() {
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |_| {}).await;
        let texts: Vec<String> = (0..30).map(|k| format!("burst message {k}")).collect();
        for text in &texts {
            rig.emu.post(Incoming {
                author: USER,
                channel: 702,
                content: text.clone(),
                ..Default::default()
            });
        }
        let asked = || -> Vec<String> {
            rig.llm
                .requests()
                .iter()
                .map(|r| r.last_user_message())
                .filter(|m| m.starts_with("burst message"))
                .collect()
        };
        for _ in 0..1200 {
            if asked().len() >= texts.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(asked(), texts, "the model saw the burst in Discord's order");
        rig.stop().await;
    });
}

mod vision;
