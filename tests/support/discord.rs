//! A loopback emulator of the part of Discord that serenity uses: the gateway (HELLO,
//! IDENTIFY, READY, heartbeats, RESUME, dispatch of MESSAGE_CREATE) over a real WebSocket, and
//! REST for messages, edits and typing. The production serenity client talks to it over
//! sockets (`discord.api_url` is its address, serenity's rate limiter off).
//!
//! Every REST call is recorded with its time, and faults can be injected: a 429 with
//! retry-after, a 403, a reply deleted under the bot, a dropped gateway connection.
//!
//! One file on purpose: the gateway and REST halves share the emulator's state (messages,
//! bots, faults) and are only useful together.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A REST call as the emulator saw it.
#[derive(Clone, Debug)]
pub struct Call {
    pub at: Instant,
    /// The bot's user name (from its token).
    pub bot: String,
    pub method: &'static str,
    /// `send`, `edit`, `typing`, `interaction` (a response) or `followup`.
    pub kind: &'static str,
    /// For interaction responses and followups: only the user sees it.
    pub ephemeral: bool,
    /// For sends: the allowed mentions asked for (`None`: the field was absent).
    pub allowed_mentions: Option<Value>,
    pub channel: u64,
    /// The message created or edited.
    pub message: Option<u64>,
    pub content: Option<String>,
    /// For a send: the message it replies to.
    pub reply_to: Option<u64>,
    /// The HTTP status the emulator answered.
    pub status: u16,
    /// For a send: Discord returned the message an earlier send with the same nonce created.
    pub nonce_reused: bool,
}

/// What the next write (send or edit) gets instead of success.
#[derive(Clone, Debug)]
pub enum Fault {
    /// A 429 as Discord sends it: `retry_after` (seconds, fractional) in the body, the header
    /// `Retry-After` rounded up, `X-RateLimit-Reset-After`, and the scope. Until it expires,
    /// every write of that bot (or every request, when global) gets another 429, as on Discord.
    RateLimited {
        retry_after: f64,
    },
    RateLimitedGlobal {
        retry_after: f64,
    },
    Forbidden,
}

#[derive(Clone)]
struct BotUser {
    id: u64,
    name: String,
}

struct Gateway {
    token: String,
    tx: mpsc::UnboundedSender<Value>,
    seq: Arc<AtomicU64>,
    /// (shard id, shard total) from IDENTIFY.
    shard: (u64, u64),
}

impl Gateway {
    /// Discord sends a guild's events on shard `(guild_id >> 22) % total`, the rest (direct
    /// messages) on shard 0.
    fn carries(&self, d: &Value) -> bool {
        let guild = d["guild_id"]
            .as_str()
            .and_then(|g| g.parse::<u64>().ok())
            .or_else(|| d["guild_id"].as_u64());
        let (id, total) = self.shard;
        match guild {
            Some(guild) => (guild >> 22) % total.max(1) == id,
            None => id == 0,
        }
    }
}

#[derive(Default)]
struct Shared {
    addr: Mutex<Option<SocketAddr>>,
    bots: Mutex<HashMap<String, BotUser>>,
    calls: Mutex<Vec<Call>>,
    faults: Mutex<VecDeque<Fault>>,
    deleted: Mutex<HashSet<u64>>,
    /// Messages that exist (posted by users or created by bots), for reply references.
    known: Mutex<HashSet<u64>>,
    /// The guild of each channel seen (for dispatching the bots' own messages).
    channel_guilds: Mutex<HashMap<u64, u64>>,
    /// Channels where no bot may write (403 Missing Permissions on typing, send and edit).
    forbidden: Mutex<HashSet<u64>>,
    /// A 429 in force: (bot name or "" for global, until).
    limited: Mutex<Vec<(String, Instant)>>,
    gateways: Mutex<Vec<Gateway>>,
    identifies: AtomicU64,
    /// IDENTIFYs refused with 4010 (a shard outside the total).
    invalid_shards: AtomicU64,
    resumes: AtomicU64,
    next_id: AtomicU64,
    attachments: Mutex<HashMap<String, Vec<u8>>>,
    /// Attachments whose download fails (500), by file name.
    broken_attachments: Mutex<HashSet<String>>,
    /// Attachment downloads served, by file name.
    attachment_downloads: Mutex<Vec<String>>,
    /// Slash commands registered (as sent), per application id.
    commands: Mutex<HashMap<u64, Vec<Value>>>,
    /// Bots' messages by (bot id, nonce), for `enforce_nonce` (Discord keeps them a few
    /// minutes; a test never runs longer).
    nonces: Mutex<HashMap<(u64, String), u64>>,
    /// The shard count bots must identify with (0: any; `/gateway/bot` then says 1).
    shard_total: AtomicU64,
    /// The bots' messages as they read now (created, then edited).
    bot_messages: Mutex<HashMap<u64, Value>>,
}

#[derive(Clone)]
pub struct DiscordEmulator {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

/// A message to deliver through the gateway.
#[derive(Clone, Debug, Default)]
pub struct Incoming {
    pub author: u64,
    pub author_name: String,
    pub author_is_bot: bool,
    pub guild: Option<u64>,
    pub channel: u64,
    pub content: String,
    /// Bot user ids mentioned.
    pub mentions: Vec<u64>,
    pub roles: Vec<u64>,
    /// (message id, author id, content) of the message this one replies to.
    pub reply_to: Option<(u64, u64, String)>,
    /// (file name, content type, body) served at the emulator.
    pub attachments: Vec<(String, String, Vec<u8>)>,
}

impl DiscordEmulator {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            next_id: AtomicU64::new(1_000_000),
            ..Default::default()
        });
        let app = Router::new()
            .route("/api/v10/gateway/bot", get(gateway_bot))
            .route("/api/v10/gateway", get(gateway_bot))
            .route("/gateway", get(gateway_ws))
            .route("/api/v10/channels/{channel}/messages", post(send_message))
            .route(
                "/api/v10/channels/{channel}/messages/{message}",
                patch(edit_message),
            )
            .route("/api/v10/channels/{channel}/typing", post(typing))
            .route("/attachments/{name}", get(attachment))
            .route(
                "/api/v10/applications/{app}/commands",
                axum::routing::put(register_commands),
            )
            .route(
                "/api/v10/interactions/{id}/{token}/callback",
                post(interaction_callback),
            )
            .route("/api/v10/webhooks/{app}/{token}", post(followup))
            .route(
                "/api/v10/webhooks/{app}/{token}/messages/{message}",
                patch(followup_edit),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        *shared.addr.lock().unwrap() = Some(addr);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        DiscordEmulator { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Registers a bot account; returns its user id.
    pub fn add_bot(&self, token: &str, name: &str) -> u64 {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared.bots.lock().unwrap().insert(
            token.to_owned(),
            BotUser {
                id,
                name: name.to_owned(),
            },
        );
        id
    }

    /// Downloads of `name` fail with a 500 from now on.
    pub fn break_attachment(&self, name: &str) {
        self.shared
            .broken_attachments
            .lock()
            .unwrap()
            .insert(name.to_owned());
    }

    /// Attachment downloads served so far, by file name, in order.
    pub fn attachment_downloads(&self) -> Vec<String> {
        self.shared.attachment_downloads.lock().unwrap().clone()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().unwrap().clone()
    }

    pub fn inject(&self, fault: Fault) {
        self.shared.faults.lock().unwrap().push_back(fault);
    }

    /// Deletes a message: further edits of it answer 404 Unknown Message, replies to it fail
    /// unless they say `fail_if_not_exists: false`, and the bots hear MESSAGE_DELETE.
    pub fn delete(&self, message: u64) {
        self.shared.deleted.lock().unwrap().insert(message);
        self.shared.known.lock().unwrap().remove(&message);
        dispatch(
            &self.shared,
            "MESSAGE_DELETE",
            json!({"id": message.to_string(), "channel_id": "0"}),
        );
    }

    /// Sends any dispatch, well-formed or not, to every connected bot.
    pub fn dispatch_raw(&self, event: &str, d: Value) {
        dispatch(&self.shared, event, d);
    }

    /// Takes Send Messages away from every bot in `channel`.
    pub fn forbid_channel(&self, channel: u64) {
        self.shared.forbidden.lock().unwrap().insert(channel);
    }

    /// Gives the bots their permissions in `channel` back and tells them (CHANNEL_UPDATE).
    pub fn allow_channel(&self, guild: u64, channel: u64) {
        self.shared.forbidden.lock().unwrap().remove(&channel);
        dispatch(
            &self.shared,
            "CHANNEL_UPDATE",
            json!({"id": channel.to_string(), "type": 0, "guild_id": guild.to_string(),
                   "name": "general", "position": 0, "permission_overwrites": [], "nsfw": false}),
        );
    }

    /// Makes bots shard: `/gateway/bot` recommends `total`, and an IDENTIFY with another
    /// total (or a shard id outside it) is closed with 4010.
    pub fn set_shard_total(&self, total: u64) {
        self.shared.shard_total.store(total, Ordering::Relaxed);
    }

    /// The (shard id, total) of each live gateway session of the bot with this token.
    pub fn shards_of(&self, token: &str) -> Vec<(u64, u64)> {
        let mut shards: Vec<(u64, u64)> = self
            .shared
            .gateways
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.token == token && !g.tx.is_closed())
            .map(|g| g.shard)
            .collect();
        shards.sort();
        shards
    }

    pub fn invalid_shards(&self) -> u64 {
        self.shared.invalid_shards.load(Ordering::Relaxed)
    }

    pub fn identifies(&self) -> u64 {
        self.shared.identifies.load(Ordering::Relaxed)
    }

    pub fn resumes(&self) -> u64 {
        self.shared.resumes.load(Ordering::Relaxed)
    }

    /// Bots with a live, identified gateway session.
    pub fn connected(&self) -> usize {
        self.shared
            .gateways
            .lock()
            .unwrap()
            .iter()
            .filter(|g| !g.tx.is_closed())
            .count()
    }

    /// Waits until `n` bots are connected.
    pub async fn wait_connected(&self, n: usize) {
        for _ in 0..500 {
            if self.connected() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{n} bots did not connect to the emulator");
    }

    /// Closes every gateway connection without a close frame, as a network failure would.
    pub fn drop_gateways(&self) {
        for gateway in self.shared.gateways.lock().unwrap().drain(..) {
            let _ = gateway.tx.send(json!({"drop": true}));
        }
    }

    /// Slash commands the bot with this user id registered.
    pub fn commands(&self, bot: u64) -> Vec<String> {
        self.shared
            .commands
            .lock()
            .unwrap()
            .get(&bot)
            .map(|c| {
                c.iter()
                    .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A user runs a slash command in a DM with `bot`: `options` are (name, value as typed;
    /// for an option with choices, the choice's name). As Discord does, the interaction carries
    /// the option's registered type and, for a choice, the choice's value.
    /// Returns the interaction id.
    pub fn slash(&self, bot: u64, user: u64, command: &str, options: &[(&str, &str)]) -> u64 {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let registered = self
            .shared
            .commands
            .lock()
            .unwrap()
            .get(&bot)
            .and_then(|c| c.iter().find(|c| c["name"] == command).cloned())
            .unwrap_or(Value::Null);
        let options: Vec<Value> = options
            .iter()
            .map(|(n, v)| {
                let spec = registered["options"]
                    .as_array()
                    .and_then(|o| o.iter().find(|o| o["name"] == *n).cloned())
                    .unwrap_or(Value::Null);
                let kind = spec["type"].as_u64().unwrap_or(3);
                let value = spec["choices"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["name"] == *v))
                    .map_or_else(|| json!(v), |c| c["value"].clone());
                json!({"name": n, "type": kind, "value": value})
            })
            .collect();
        let d = json!({
            "id": id.to_string(),
            "application_id": bot.to_string(),
            "type": 2,
            "data": {"id": (id + 1).to_string(), "name": command, "type": 1, "options": options},
            "channel_id": "900",
            "user": {"id": user.to_string(), "username": format!("user{user}"), "discriminator": "0",
                     "global_name": null, "avatar": null, "bot": false},
            "token": format!("itoken-{id}"),
            "version": 1,
            "locale": "en-US",
            "app_permissions": "0",
            "entitlements": [],
            "attachment_size_limit": 8388608,
            "context": 1,
        });
        let bots = self.shared.bots.lock().unwrap().clone();
        for gateway in self.shared.gateways.lock().unwrap().iter() {
            if bots.get(&gateway.token).is_some_and(|b| b.id == bot) && gateway.carries(&d) {
                let s = gateway.seq.fetch_add(1, Ordering::Relaxed) + 1;
                let _ = gateway
                    .tx
                    .send(json!({"op": 0, "t": "INTERACTION_CREATE", "s": s, "d": d}));
            }
        }
        id
    }

    /// A thread is created in `parent` by `owner`: every connected bot hears of it.
    pub fn thread(&self, guild: u64, parent: u64, owner: u64) -> u64 {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let d = json!({
            "id": id.to_string(),
            "type": 11,
            "guild_id": guild.to_string(),
            "parent_id": parent.to_string(),
            "owner_id": owner.to_string(),
            "name": "a thread",
            "thread_metadata": {"archived": false, "auto_archive_duration": 1440,
                                "archive_timestamp": "2026-11-24T10:00:00.000000+00:00", "locked": false},
            "flags": 0,
        });
        for gateway in self.shared.gateways.lock().unwrap().iter() {
            if !gateway.carries(&d) {
                continue;
            }
            let s = gateway.seq.fetch_add(1, Ordering::Relaxed) + 1;
            let _ = gateway
                .tx
                .send(json!({"op": 0, "t": "THREAD_CREATE", "s": s, "d": d}));
        }
        id
    }

    /// Delivers a message to every connected bot (each receives all messages, like Discord);
    /// returns its id.
    pub fn post(&self, m: Incoming) -> u64 {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared.known.lock().unwrap().insert(id);
        if let Some(guild) = m.guild {
            self.shared
                .channel_guilds
                .lock()
                .unwrap()
                .insert(m.channel, guild);
        }
        let addr = self.addr;
        let bots = self.shared.bots.lock().unwrap().clone();
        let user_json = |id: u64| {
            let bot = bots.values().find(|b| b.id == id);
            json!({
                "id": id.to_string(),
                "username": bot.map_or_else(|| format!("user{id}"), |b| b.name.clone()),
                "discriminator": "0",
                "global_name": null,
                "avatar": null,
                "bot": bot.is_some(),
            })
        };
        let mut attachments = Vec::new();
        for (i, (name, content_type, body)) in m.attachments.iter().enumerate() {
            self.shared
                .attachments
                .lock()
                .unwrap()
                .insert(name.clone(), body.clone());
            attachments.push(json!({
                "id": (id + 1 + i as u64).to_string(),
                "filename": name,
                "size": body.len(),
                "url": format!("http://{addr}/attachments/{name}"),
                "proxy_url": format!("http://{addr}/attachments/{name}"),
                "content_type": content_type,
            }));
        }
        let mut d = message_json(
            id,
            m.channel,
            m.guild,
            json!({
                "id": m.author.to_string(),
                "username": m.author_name,
                "discriminator": "0",
                "global_name": null,
                "avatar": null,
                "bot": m.author_is_bot,
            }),
            &m.content,
        );
        d["mentions"] = Value::Array(m.mentions.iter().map(|b| user_json(*b)).collect());
        d["attachments"] = Value::Array(attachments);
        if m.guild.is_some() {
            d["member"] = json!({
                "roles": m.roles.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                "joined_at": "2024-01-01T00:00:00.000000+00:00",
                "deaf": false,
                "mute": false,
                "flags": 0,
            });
        }
        if let Some((ref_id, ref_author, ref_content)) = &m.reply_to {
            d["message_reference"] = json!({
                "message_id": ref_id.to_string(),
                "channel_id": m.channel.to_string(),
            });
            d["referenced_message"] = message_json(
                *ref_id,
                m.channel,
                m.guild,
                user_json(*ref_author),
                ref_content,
            );
            d["type"] = json!(19);
        }
        for gateway in self.shared.gateways.lock().unwrap().iter() {
            if !gateway.carries(&d) {
                continue;
            }
            let s = gateway.seq.fetch_add(1, Ordering::Relaxed) + 1;
            let _ = gateway
                .tx
                .send(json!({"op": 0, "t": "MESSAGE_CREATE", "s": s, "d": d}));
        }
        id
    }
}

/// Sends a dispatch event to every connected bot.
fn dispatch(shared: &Shared, event: &str, d: Value) {
    for gateway in shared.gateways.lock().unwrap().iter() {
        if !gateway.carries(&d) {
            continue;
        }
        let s = gateway.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = gateway
            .tx
            .send(json!({"op": 0, "t": event, "s": s, "d": d}));
    }
}

fn message_json(id: u64, channel: u64, guild: Option<u64>, author: Value, content: &str) -> Value {
    let mut m = json!({
        "id": id.to_string(),
        "channel_id": channel.to_string(),
        "author": author,
        "content": content,
        "timestamp": "2026-11-24T10:00:00.000000+00:00",
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": false,
        "type": 0,
    });
    if let Some(guild) = guild {
        m["guild_id"] = json!(guild.to_string());
    }
    m
}

fn bot_of(shared: &Shared, token: &str) -> Option<BotUser> {
    let token = token.trim().trim_start_matches("Bot ").to_owned();
    shared.bots.lock().unwrap().get(&token).cloned()
}

fn auth(shared: &Shared, headers: &HeaderMap) -> Option<BotUser> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    bot_of(shared, value)
}

async fn gateway_bot(State(shared): State<Arc<Shared>>) -> Response {
    let addr = shared.addr.lock().unwrap().unwrap();
    let shards = shared.shard_total.load(Ordering::Relaxed).max(1);
    axum::Json(json!({
        "url": format!("ws://{addr}/gateway"),
        "shards": shards,
        "session_start_limit": {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
    }))
    .into_response()
}

async fn gateway_ws(State(shared): State<Arc<Shared>>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| session(shared, socket))
}

/// One gateway connection: HELLO, then IDENTIFY (READY) or RESUME (RESUMED), heartbeats, and
/// dispatches pushed by the test.
async fn session(shared: Arc<Shared>, mut socket: WebSocket) {
    let hello = json!({"op": 10, "d": {"heartbeat_interval": 2000}});
    if socket
        .send(WsMessage::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    let seq = Arc::new(AtomicU64::new(0));
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(v) if v.get("drop").is_some() => return,
                Some(v) => {
                    if socket.send(WsMessage::Text(v.to_string().into())).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            incoming = socket.recv() => {
                let Some(Ok(frame)) = incoming else { return };
                let text = match frame {
                    WsMessage::Text(t) => t.to_string(),
                    WsMessage::Close(_) => return,
                    _ => continue,
                };
                let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                match v["op"].as_u64() {
                    Some(1) => {
                        let _ = tx.send(json!({"op": 11}));
                    }
                    Some(2) => {
                        let token = v["d"]["token"].as_str().unwrap_or_default();
                        let Some(bot) = bot_of(&shared, token) else {
                            let _ = socket.send(WsMessage::Close(Some(axum::extract::ws::CloseFrame {
                                code: 4004,
                                reason: "Authentication failed.".into(),
                            }))).await;
                            return;
                        };
                        let shard = (
                            v["d"]["shard"][0].as_u64().unwrap_or(0),
                            v["d"]["shard"][1].as_u64().unwrap_or(1),
                        );
                        let expected = shared.shard_total.load(Ordering::Relaxed);
                        if shard.0 >= shard.1 || (expected != 0 && shard.1 != expected) {
                            // Discord: 4010 Invalid shard.
                            let _ = socket.send(WsMessage::Close(Some(axum::extract::ws::CloseFrame {
                                code: 4010,
                                reason: "Invalid shard.".into(),
                            }))).await;
                            shared.invalid_shards.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        shared.identifies.fetch_add(1, Ordering::Relaxed);
                        let addr = shared.addr.lock().unwrap().unwrap();
                        let s = seq.fetch_add(1, Ordering::Relaxed) + 1;
                        let ready = json!({"op": 0, "t": "READY", "s": s, "d": {
                            "v": 10,
                            "user": {"id": bot.id.to_string(), "username": bot.name, "discriminator": "0",
                                     "global_name": null, "avatar": null, "bot": true},
                            "guilds": [],
                            "session_id": format!("session-{}-{}", bot.id, shard.0),
                            "resume_gateway_url": format!("ws://{addr}/gateway"),
                            "application": {"id": bot.id.to_string(), "flags": 0},
                        }});
                        let _ = tx.send(ready);
                        shared.gateways.lock().unwrap().push(Gateway {
                            token: token.trim_start_matches("Bot ").to_owned(),
                            tx: tx.clone(),
                            seq: seq.clone(),
                            shard,
                        });
                    }
                    Some(6) => {
                        let token = v["d"]["token"].as_str().unwrap_or_default().trim_start_matches("Bot ").to_owned();
                        shared.resumes.fetch_add(1, Ordering::Relaxed);
                        let last = v["d"]["seq"].as_u64().unwrap_or(0);
                        seq.store(last, Ordering::Relaxed);
                        let s = seq.fetch_add(1, Ordering::Relaxed) + 1;
                        let _ = tx.send(json!({"op": 0, "t": "RESUMED", "s": s, "d": {}}));
                        let id = v["d"]["session_id"]
                            .as_str()
                            .and_then(|s| s.rsplit('-').next())
                            .and_then(|n| n.parse::<u64>().ok())
                            .unwrap_or(0);
                        let mut gateways = shared.gateways.lock().unwrap();
                        let total = gateways
                            .iter()
                            .find(|g| g.token == token && g.shard.0 == id)
                            .map_or(1, |g| g.shard.1);
                        gateways.retain(|g| !(g.token == token && g.shard.0 == id));
                        gateways.push(Gateway { token, tx: tx.clone(), seq: seq.clone(), shard: (id, total) });
                    }
                    _ => {}
                }
            }
        }
    }
}

fn record(shared: &Shared, call: Call) {
    shared.calls.lock().unwrap().push(call);
}

fn error(status: u16, code: u64, message: &str) -> Response {
    let mut response = (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"code": code, "message": message})),
    )
        .into_response();
    if status == 429 {
        response
            .headers_mut()
            .insert("retry-after", header::HeaderValue::from_static("1"));
    }
    response
}

/// Discord's 429: the body carries the exact wait, the headers a rounded one.
fn rate_limited(retry_after: f64, global: bool) -> Response {
    let mut body = json!({"message": "You are being rate limited.", "retry_after": retry_after, "global": global});
    if global {
        body["code"] = json!(0);
    }
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    let value = |v: String| header::HeaderValue::from_str(&v).unwrap();
    headers.insert("retry-after", value(retry_after.ceil().to_string()));
    headers.insert(
        "x-ratelimit-reset-after",
        value(format!("{retry_after:.3}")),
    );
    headers.insert(
        "x-ratelimit-scope",
        value(if global { "global" } else { "user" }.into()),
    );
    if global {
        headers.insert("x-ratelimit-global", value("true".into()));
    }
    response
}

/// A write fault for this call: a 429 still in force, the channel's permissions, or a queued
/// one-shot fault.
fn fault(shared: &Shared, bot: &str, channel: u64) -> Option<Response> {
    let now = Instant::now();
    {
        let mut limited = shared.limited.lock().unwrap();
        limited.retain(|(_, until)| *until > now);
        if let Some((who, until)) = limited.iter().find(|(who, _)| who.is_empty() || who == bot) {
            return Some(rate_limited((*until - now).as_secs_f64(), who.is_empty()));
        }
    }
    if shared.forbidden.lock().unwrap().contains(&channel) {
        return Some(error(403, 50013, "Missing Permissions"));
    }
    let fault = shared.faults.lock().unwrap().pop_front()?;
    Some(match fault {
        Fault::RateLimited { retry_after } | Fault::RateLimitedGlobal { retry_after } => {
            let global = matches!(fault, Fault::RateLimitedGlobal { .. });
            let who = if global {
                String::new()
            } else {
                bot.to_owned()
            };
            shared
                .limited
                .lock()
                .unwrap()
                .push((who, now + Duration::from_secs_f64(retry_after)));
            rate_limited(retry_after, global)
        }
        Fault::Forbidden => error(403, 50013, "Missing Permissions"),
    })
}

async fn send_message(
    State(shared): State<Arc<Shared>>,
    Path(channel): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(bot) = auth(&shared, &headers) else {
        return error(401, 0, "401: Unauthorized");
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let content = body["content"].as_str().unwrap_or_default().to_owned();
    let mut reply_to: Option<u64> = body["message_reference"]["message_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| body["message_reference"]["message_id"].as_u64());
    let mut call = Call {
        at: Instant::now(),
        bot: bot.name.clone(),
        method: "POST",
        kind: "send",
        channel,
        message: None,
        content: Some(content.clone()),
        reply_to,
        status: 200,
        ephemeral: false,
        allowed_mentions: body.get("allowed_mentions").cloned(),
        nonce_reused: false,
    };
    if content.chars().count() > 2000 {
        call.status = 400;
        record(&shared, call);
        return error(
            400,
            50035,
            "Invalid Form Body: content must be 2000 or fewer in length.",
        );
    }
    if let Some(response) = fault(&shared, &bot.name, channel) {
        call.status = response.status().as_u16();
        record(&shared, call);
        return response;
    }
    // Discord: with enforce_nonce, the same nonce from the same author within a few minutes
    // returns the message already created instead of a new one.
    let nonce = body["nonce"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| body["nonce"].as_u64().map(|n| n.to_string()))
        .filter(|_| body["enforce_nonce"] == json!(true));
    if let Some(nonce) = &nonce {
        let existing = shared
            .nonces
            .lock()
            .unwrap()
            .get(&(bot.id, nonce.clone()))
            .copied();
        if let Some(id) = existing {
            let message = shared.bot_messages.lock().unwrap().get(&id).cloned();
            if let Some(message) = message {
                call.message = Some(id);
                call.nonce_reused = true;
                record(&shared, call);
                return axum::Json(message).into_response();
            }
        }
    }
    if let Some(target) = reply_to
        && !shared.known.lock().unwrap().contains(&target)
    {
        // Discord: a reply to a message that does not exist fails, unless asked not to, and
        // then it is posted as a plain message.
        if body["message_reference"]["fail_if_not_exists"] != json!(false) {
            call.status = 400;
            record(&shared, call);
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"code": 50035, "message": "Invalid Form Body",
                    "errors": {"message_reference": {"_errors": [{"code": "REPLIES_UNKNOWN_MESSAGE", "message": "Unknown message"}]}}})),
            )
                .into_response();
        }
        reply_to = None;
        call.reply_to = None;
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    call.message = Some(id);
    record(&shared, call);
    shared.known.lock().unwrap().insert(id);
    let author = json!({"id": bot.id.to_string(), "username": bot.name, "discriminator": "0",
                        "global_name": null, "avatar": null, "bot": true});
    let guild = shared.channel_guilds.lock().unwrap().get(&channel).copied();
    let mut message = message_json(id, channel, guild, author, &content);
    if let Some(target) = reply_to {
        message["message_reference"] =
            json!({"message_id": target.to_string(), "channel_id": channel.to_string()});
        message["type"] = json!(19);
    }
    if let Some(nonce) = nonce {
        message["nonce"] = json!(nonce);
        shared.nonces.lock().unwrap().insert((bot.id, nonce), id);
    }
    shared
        .bot_messages
        .lock()
        .unwrap()
        .insert(id, message.clone());
    // Discord tells every bot in the channel about the new message, its author included.
    dispatch(&shared, "MESSAGE_CREATE", message.clone());
    axum::Json(message).into_response()
}

async fn edit_message(
    State(shared): State<Arc<Shared>>,
    Path((channel, message)): Path<(u64, u64)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(bot) = auth(&shared, &headers) else {
        return error(401, 0, "401: Unauthorized");
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let content = body["content"].as_str().unwrap_or_default().to_owned();
    let mut call = Call {
        at: Instant::now(),
        bot: bot.name.clone(),
        method: "PATCH",
        kind: "edit",
        channel,
        message: Some(message),
        content: Some(content.clone()),
        reply_to: None,
        status: 200,
        ephemeral: false,
        allowed_mentions: body.get("allowed_mentions").cloned(),
        nonce_reused: false,
    };
    if shared.deleted.lock().unwrap().contains(&message) {
        call.status = 404;
        record(&shared, call);
        return error(404, 10008, "Unknown Message");
    }
    if content.chars().count() > 2000 {
        call.status = 400;
        record(&shared, call);
        return error(
            400,
            50035,
            "Invalid Form Body: content must be 2000 or fewer in length.",
        );
    }
    if let Some(response) = fault(&shared, &bot.name, channel) {
        call.status = response.status().as_u16();
        record(&shared, call);
        return response;
    }
    record(&shared, call);
    if let Some(stored) = shared.bot_messages.lock().unwrap().get_mut(&message) {
        stored["content"] = json!(content);
    }
    let author = json!({"id": bot.id.to_string(), "username": bot.name, "discriminator": "0",
                        "global_name": null, "avatar": null, "bot": true});
    let guild = shared.channel_guilds.lock().unwrap().get(&channel).copied();
    let mut update = json!({"id": message.to_string(), "channel_id": channel.to_string(),
                            "content": content, "edited_timestamp": "2026-11-24T10:00:01.000000+00:00"});
    if let Some(guild) = guild {
        update["guild_id"] = json!(guild.to_string());
    }
    dispatch(&shared, "MESSAGE_UPDATE", update);
    axum::Json(message_json(message, channel, guild, author, &content)).into_response()
}

async fn typing(
    State(shared): State<Arc<Shared>>,
    Path(channel): Path<u64>,
    headers: HeaderMap,
) -> Response {
    let Some(bot) = auth(&shared, &headers) else {
        return error(401, 0, "401: Unauthorized");
    };
    let refused = shared
        .forbidden
        .lock()
        .unwrap()
        .contains(&channel)
        .then(|| error(403, 50013, "Missing Permissions"));
    record(
        &shared,
        Call {
            at: Instant::now(),
            bot: bot.name,
            method: "POST",
            kind: "typing",
            channel,
            message: None,
            content: None,
            reply_to: None,
            status: refused.as_ref().map_or(204, |r| r.status().as_u16()),
            ephemeral: false,
            allowed_mentions: None,
            nonce_reused: false,
        },
    );
    refused.unwrap_or_else(|| StatusCode::NO_CONTENT.into_response())
}

async fn attachment(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    shared
        .attachment_downloads
        .lock()
        .unwrap()
        .push(name.clone());
    if shared.broken_attachments.lock().unwrap().contains(&name) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    match shared.attachments.lock().unwrap().get(&name) {
        Some(body) => body.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn register_commands(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<u64>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let commands = body.as_array().cloned().unwrap_or_default();
    shared
        .commands
        .lock()
        .unwrap()
        .insert(app, commands.clone());
    let answered: Vec<Value> = commands
        .into_iter()
        .map(|mut c| {
            c["id"] = json!(shared.next_id.fetch_add(1, Ordering::Relaxed).to_string());
            c["application_id"] = json!(app.to_string());
            c["version"] = json!("1");
            if c.get("type").is_none() {
                c["type"] = json!(1);
            }
            c
        })
        .collect();
    axum::Json(Value::Array(answered)).into_response()
}

fn interaction_call(kind: &'static str, data: &Value) -> Call {
    Call {
        at: Instant::now(),
        bot: String::new(),
        method: "POST",
        kind,
        channel: 900,
        message: None,
        content: data["content"].as_str().map(str::to_owned),
        reply_to: None,
        status: 200,
        ephemeral: data["flags"].as_u64().is_some_and(|f| f & 64 != 0),
        allowed_mentions: None,
        nonce_reused: false,
    }
}

async fn interaction_callback(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(&shared, interaction_call("interaction", &body["data"]));
    StatusCode::NO_CONTENT.into_response()
}

async fn followup(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(&shared, interaction_call("followup", &body));
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let author = json!({"id": "1", "username": "bot", "discriminator": "0", "global_name": null,
                        "avatar": null, "bot": true});
    let content = body["content"].as_str().unwrap_or_default().to_owned();
    axum::Json(message_json(id, 900, None, author, &content)).into_response()
}

async fn followup_edit(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    followup(State(shared), body).await
}
