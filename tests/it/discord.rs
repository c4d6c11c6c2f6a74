//! The Discord transport end to end: the real serenity client against the loopback emulator
//! (`tests/support/discord.rs`), the real runtime, SQLite and the scripted model server.

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
            s.discord.tokens.insert(character.to_string(), token);
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

/// A 429 is waited out and retried, a 403 is neither fatal nor retried in a loop, and a reply
/// deleted while streaming continues in a new message.
#[test]
fn discord_errors_never_break_a_conversation() {
    run_actix(|| async {
        let rig = Rig::start(&["aria"], |_| {}).await;
        // 429 on the first write.
        rig.emu.inject(Fault::RateLimited { retry_after: 1.0 });
        let id = rig.emu.post(rig.mention("aria", "first"));
        let writes = rig.wait_reply(id, "echo: first").await;
        let all = rig.emu.calls();
        let limited = all.iter().find(|c| c.status == 429).expect("a 429");
        let retried = writes.iter().find(|w| w.status == 200).unwrap();
        assert!(
            retried.at - limited.at >= Duration::from_secs(1),
            "retry-after honoured"
        );

        // 403 on the next reply: given up after one try, and the bot keeps working.
        rig.emu.inject(Fault::Forbidden);
        let forbidden = rig.emu.post(rig.mention("aria", "second"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let tries: Vec<_> = rig
            .emu
            .calls()
            .into_iter()
            .filter(|c| c.status == 403 || c.reply_to == Some(forbidden))
            .collect();
        assert_eq!(tries.len(), 1, "{tries:#?}");
        let third = rig.emu.post(rig.mention("aria", "third"));
        rig.wait_reply(third, "echo: third").await;

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
