//! The DiscordActor: turns a conversation's reply updates into Discord messages.
//!
//! Each reply gets a writer task that owns the Discord side of that reply: typing while the
//! model thinks, then the reply (to the user's message, without pinging them), edited in place
//! as the text grows, continued in new messages past 2,000 characters. The task always writes
//! the *latest* text: updates that arrive while it waits for the channel's write budget replace
//! each other (coalesced), so nothing queues without bound. The actor itself only routes
//! updates to those tasks, so a slow channel never delays another.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use serenity::all::{
    ChannelId, CreateAllowedMentions, CreateMessage, EditMessage, Http, MessageId,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};
use whisper_actors::messages::ReplyUpdate;

use super::split::{MAX_CHARS, split};

/// Writes allowed per channel per window (Discord: about 5 per 5 s).
pub struct ChannelLimiter {
    writes: usize,
    window: Duration,
    recent: Mutex<HashMap<u64, VecDeque<Instant>>>,
    /// Channels already reported as forbidden: logged once, not on every reply.
    forbidden: Mutex<HashSet<u64>>,
}

impl ChannelLimiter {
    /// Discord counts writes when they arrive, and requests do not all take equally long to get
    /// there, so the window kept here is a tenth longer than Discord's.
    pub fn new(writes: usize, window: Duration) -> Self {
        Self {
            writes: writes.max(1),
            window: window + window / 10,
            recent: Mutex::new(HashMap::new()),
            forbidden: Mutex::new(HashSet::new()),
        }
    }

    /// Waits until `channel` may take one more write, and takes it.
    async fn acquire(&self, channel: u64) {
        loop {
            let wait = {
                let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let times = recent.entry(channel).or_default();
                while times
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    times.pop_front();
                }
                if times.len() < self.writes {
                    times.push_back(now);
                    return;
                }
                self.window - now.duration_since(times[0])
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn first_forbidden(&self, channel: u64) -> bool {
        self.forbidden
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(channel)
    }
}

/// Sent by the inbound handler before the message is routed, so the actor knows where the
/// reply goes by the time the first update arrives.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Register {
    pub message_id: u64,
    pub channel: u64,
    /// A note added to the end of the reply (e.g. attachments the bot could not read).
    pub notice: Option<String>,
}

#[derive(Clone, Debug, Default)]
struct Desired {
    text: String,
    done: bool,
}

pub struct Outbound {
    http: Arc<std::sync::OnceLock<Arc<Http>>>,
    limiter: Arc<ChannelLimiter>,
    /// Least time between two writes of one reply (`streaming.edit_interval`).
    spacing: Duration,
    replies: HashMap<u64, watch::Sender<Desired>>,
}

impl Outbound {
    pub fn new(
        http: Arc<std::sync::OnceLock<Arc<Http>>>,
        limiter: Arc<ChannelLimiter>,
        spacing: Duration,
    ) -> Self {
        Self {
            http,
            limiter,
            spacing,
            replies: HashMap::new(),
        }
    }
}

impl Actor for Outbound {
    type Context = Context<Self>;
}

impl Handler<Register> for Outbound {
    type Result = ();

    fn handle(&mut self, msg: Register, _: &mut Self::Context) {
        let Some(http) = self.http.get().cloned() else {
            warn!("a reply was registered before its Discord client existed");
            return;
        };
        let (tx, rx) = watch::channel(Desired::default());
        self.replies.insert(msg.message_id, tx);
        let writer = Writer {
            http,
            limiter: self.limiter.clone(),
            channel: ChannelId::new(msg.channel),
            reply_to: MessageId::new(msg.message_id),
            notice: msg.notice,
            sent: Vec::new(),
            frozen: 0,
            spacing: self.spacing,
        };
        let span = info_span!(
            "discord_reply",
            channel = msg.channel,
            message = msg.message_id
        );
        tokio::spawn(writer.run(rx).instrument(span));
    }
}

impl Handler<ReplyUpdate> for Outbound {
    type Result = ();

    fn handle(&mut self, update: ReplyUpdate, _: &mut Self::Context) {
        let done = update.is_final();
        let Some(tx) = self.replies.get(&update.message_id) else {
            debug!(message = update.message_id, "update for an unknown reply");
            return;
        };
        tx.send_replace(Desired {
            text: update.text,
            done,
        });
        if done {
            self.replies.remove(&update.message_id);
        }
    }
}

/// One message of a reply as it stands on Discord.
struct Sent {
    id: MessageId,
    content: String,
    /// Where in the (unfrozen) reply text this message's part ends.
    source_end: usize,
}

enum WriteError {
    /// The channel refuses us: give up this reply.
    Forbidden,
    /// The message being edited is gone.
    Deleted,
    Other(String),
}

struct Writer {
    http: Arc<Http>,
    limiter: Arc<ChannelLimiter>,
    channel: ChannelId,
    reply_to: MessageId,
    notice: Option<String>,
    sent: Vec<Sent>,
    /// Bytes of the reply text already delivered in messages that were deleted under us; the
    /// rest goes into new messages.
    frozen: usize,
    spacing: Duration,
}

const TYPING_EVERY: Duration = Duration::from_secs(8);
const ATTEMPTS: u32 = 4;

impl Writer {
    async fn run(mut self, mut rx: watch::Receiver<Desired>) {
        // Typing until the first text (Discord shows it for about 10 s per call).
        loop {
            if !rx.borrow().text.is_empty() || rx.borrow().done {
                break;
            }
            if let Err(e) = self.channel.broadcast_typing(&self.http).await {
                debug!(error = %e, "typing indicator failed");
            }
            // The sender gone: the actor stopped, nothing more will come.
            if let Ok(Err(_)) = tokio::time::timeout(TYPING_EVERY, rx.changed()).await {
                return;
            }
        }
        let mut last_round: Option<Instant> = None;
        loop {
            // Updates arriving during this wait replace each other: the latest text is written.
            if let Some(at) = last_round {
                tokio::time::sleep_until(at + self.spacing).await;
            }
            let desired = rx.borrow_and_update().clone();
            let mut text = desired.text;
            if desired.done
                && let Some(notice) = &self.notice
            {
                text.push_str("\n\n");
                text.push_str(notice);
            }
            last_round = Some(Instant::now());
            if !self.reconcile(&text).await {
                return;
            }
            if desired.done {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Brings the messages on Discord in line with `text`; false when the reply is abandoned.
    async fn reconcile(&mut self, text: &str) -> bool {
        let rest = text.get(self.frozen..).unwrap_or_default();
        let parts = split_with_ends(rest);
        let mut i = 0;
        while i < parts.len() {
            let (end, part) = &parts[i];
            let result = if i < self.sent.len() {
                if self.sent[i].content == *part {
                    i += 1;
                    continue;
                }
                self.edit(i, part).await
            } else {
                self.send(part, *end).await
            };
            match result {
                Ok(()) => {
                    if let Some(sent) = self.sent.get_mut(i) {
                        sent.source_end = *end;
                    }
                    i += 1;
                }
                Err(WriteError::Deleted) => {
                    // What that message showed is gone with it; everything after goes out anew.
                    let shown = self.sent[i].source_end;
                    debug!(message = %self.sent[i].id, "reply was deleted; continuing in new messages");
                    self.frozen += shown;
                    self.sent.clear();
                    return Box::pin(self.reconcile(text)).await;
                }
                Err(WriteError::Forbidden) => {
                    if self.limiter.first_forbidden(self.channel.get()) {
                        warn!(channel = %self.channel, "missing permissions to write in this channel; its messages are skipped");
                    }
                    return false;
                }
                Err(WriteError::Other(e)) => {
                    warn!(error = %e, "could not write the reply to Discord; giving up on it");
                    return false;
                }
            }
        }
        true
    }

    async fn send(&mut self, part: &str, end: usize) -> Result<(), WriteError> {
        let first = self.sent.is_empty() && self.frozen == 0;
        let message = self
            .with_retries(|this| {
                let mut builder = CreateMessage::new()
                    .content(part)
                    .allowed_mentions(CreateAllowedMentions::new());
                if first {
                    builder = builder.reference_message((this.channel, this.reply_to));
                }
                let (http, channel) = (this.http.clone(), this.channel);
                async move { channel.send_message(&http, builder).await }
            })
            .await?;
        self.sent.push(Sent {
            id: message.id,
            content: part.to_owned(),
            source_end: end,
        });
        Ok(())
    }

    async fn edit(&mut self, index: usize, part: &str) -> Result<(), WriteError> {
        let id = self.sent[index].id;
        self.with_retries(|this| {
            let builder = EditMessage::new()
                .content(part)
                .allowed_mentions(CreateAllowedMentions::new());
            let (http, channel) = (this.http.clone(), this.channel);
            async move { channel.edit_message(&http, id, builder).await }
        })
        .await?;
        self.sent[index].content = part.to_owned();
        Ok(())
    }

    /// One write within the channel's budget. A 429 waits and tries again: serenity's own
    /// limiter (on in production) already honours Discord's retry-after, so this is the
    /// fallback when it is off or a shared limit was hit; it waits at least a second, doubling.
    async fn with_retries<T, F, Fut>(&self, op: F) -> Result<T, WriteError>
    where
        F: Fn(&Self) -> Fut,
        Fut: std::future::Future<Output = serenity::Result<T>>,
    {
        let mut backoff = Duration::from_secs(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.limiter.acquire(self.channel.get()).await;
            let error = match op(self).await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            let (status, code) = match &error {
                serenity::Error::Http(serenity::http::HttpError::UnsuccessfulRequest(r)) => {
                    (Some(r.status_code.as_u16()), r.error.code)
                }
                _ => (None, 0),
            };
            match status {
                Some(403) => return Err(WriteError::Forbidden),
                Some(404) if code == 10008 => return Err(WriteError::Deleted),
                Some(429) | Some(500..) | None if attempt < ATTEMPTS => {
                    warn!(error = %error, ?backoff, "Discord write failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                _ => return Err(WriteError::Other(error.to_string())),
            }
        }
    }
}

/// The reply split into messages, each with the byte offset where its source text ends.
fn split_with_ends(text: &str) -> Vec<(usize, String)> {
    let parts = split(text, MAX_CHARS);
    let mut ends = Vec::with_capacity(parts.len());
    let mut from = 0;
    for part in parts {
        // Each part's own text (without a reopened fence prefix or a closing fence) appears in
        // order in the source: find where its last line ends.
        let body = part
            .trim_end_matches("```")
            .trim_end()
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        let end = text[from..]
            .find(&body)
            .map_or(text.len(), |at| from + at + body.len());
        from = end;
        ends.push((end, part));
    }
    ends
}
