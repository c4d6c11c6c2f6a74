//! The DiscordActor: turns a conversation's reply updates into Discord messages.
//!
//! Each reply gets a writer task that owns the Discord side of that reply: typing while the
//! model thinks, then the reply (to the user's message, without pinging them), edited in place
//! as the text grows, continued in new messages past 2,000 characters. Writes are what Discord
//! rations (about 5 per channel per 5 s), so the writer spends them carefully:
//!
//! - the first write waits `streaming.edit_interval` after the first token (or the end of the
//!   reply, if sooner), so a short reply is one write, not a fragment and an edit;
//! - every write takes the channel's budget first and only then reads the *latest* text, so
//!   updates that arrive while it waits replace each other and nothing queues;
//! - two writes of one reply are never closer than `edit_interval`, measured from the moment
//!   Discord answered the previous one, whatever the budget made it wait.
//!
//! The actor itself only routes updates to those tasks, so a slow channel never delays another.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use futures::FutureExt;
use serenity::all::{ChannelId, MessageId};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};
use whisper_actors::messages::ReplyUpdate;

use super::lock;
use super::rest::{Rest, RestError};
use super::split::{MAX_CHARS, split_parts};

/// Why a channel is skipped: the bot was refused there.
struct Refusal {
    guild: Option<u64>,
    until: Instant,
}

/// Per-channel write budget (Discord: about 5 writes per 5 s), holds after a 429, and the
/// channels where the bot may not write.
pub struct ChannelLimiter {
    writes: usize,
    window: Duration,
    recent: Mutex<HashMap<u64, VecDeque<Instant>>>,
    /// A channel's 429: no write there before this.
    held: Mutex<HashMap<u64, Instant>>,
    /// Channels that answered 403, remembered for `forbidden_for` or until the bot's
    /// permissions change, so neither the model nor Discord is asked again meanwhile (403s
    /// count toward Discord's invalid-request ban).
    forbidden: Mutex<HashMap<u64, Refusal>>,
    forbidden_for: Duration,
}

/// Channels tracked before idle ones are pruned.
const CHANNELS: usize = 10_000;

impl ChannelLimiter {
    /// Discord counts writes when they arrive, and requests do not all take equally long to get
    /// there, so the window kept here is a tenth longer than Discord's.
    pub fn new(writes: usize, window: Duration, forbidden_for: Duration) -> Self {
        Self {
            writes: writes.max(1),
            window: window + window / 10,
            recent: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            forbidden: Mutex::new(HashMap::new()),
            forbidden_for,
        }
    }

    /// Waits until `channel` may take one more write, and takes it.
    async fn acquire(&self, channel: u64) {
        loop {
            let held = lock(&self.held).get(&channel).copied();
            if let Some(until) = held
                && until > Instant::now()
            {
                tokio::time::sleep_until(until).await;
                continue;
            }
            let wait = {
                let mut recent = lock(&self.recent);
                let now = Instant::now();
                // Bounded: channels with no write inside the window are forgotten.
                if recent.len() > CHANNELS {
                    let window = self.window;
                    recent.retain(|_, t| t.back().is_some_and(|w| now.duration_since(*w) < window));
                    lock(&self.held).retain(|_, until| *until > now);
                    lock(&self.forbidden).retain(|_, r| r.until > now);
                }
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

    /// After a 429 for this channel: nothing is written there before `until`.
    fn hold(&self, channel: u64, until: Instant) {
        let mut held = lock(&self.held);
        let entry = held.entry(channel).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Remembers that the bot may not write in `channel`; true the first time (to log once).
    fn forbid(&self, channel: u64, guild: Option<u64>) -> bool {
        let until = Instant::now() + self.forbidden_for;
        lock(&self.forbidden)
            .insert(channel, Refusal { guild, until })
            .is_none_or(|old| old.until <= Instant::now())
    }

    /// Whether a message in `channel` should be left unanswered (the bot was refused there).
    pub fn is_forbidden(&self, channel: u64) -> bool {
        let mut forbidden = lock(&self.forbidden);
        match forbidden.get(&channel) {
            Some(r) if r.until > Instant::now() => true,
            Some(_) => {
                forbidden.remove(&channel);
                false
            }
            None => false,
        }
    }

    /// The channel's permissions changed: try it again.
    pub fn permissions_changed_in_channel(&self, channel: u64) {
        lock(&self.forbidden).remove(&channel);
    }

    /// Roles or the bot's membership changed in `guild`: try its channels again.
    pub fn permissions_changed_in_guild(&self, guild: u64) {
        lock(&self.forbidden).retain(|_, r| r.guild != Some(guild));
    }
}

/// Sent by the inbound handler before the message is routed, so the actor knows where the
/// reply goes by the time the first update arrives.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Register {
    pub message_id: u64,
    pub channel: u64,
    pub guild: Option<u64>,
    /// A note added to the end of the reply (e.g. attachments the bot could not read).
    pub notice: Option<String>,
}

#[derive(Clone, Debug, Default)]
struct Desired {
    text: String,
    done: bool,
}

/// The DiscordActor of one bot: the reply writer with its channel budget.
pub struct DiscordActor {
    rest: Arc<std::sync::OnceLock<Arc<Rest>>>,
    limiter: Arc<ChannelLimiter>,
    /// Least time between two writes of one reply (`streaming.edit_interval`).
    spacing: Duration,
    replies: HashMap<u64, watch::Sender<Desired>>,
}

impl DiscordActor {
    pub fn new(
        rest: Arc<std::sync::OnceLock<Arc<Rest>>>,
        limiter: Arc<ChannelLimiter>,
        spacing: Duration,
    ) -> Self {
        Self {
            rest,
            limiter,
            spacing,
            replies: HashMap::new(),
        }
    }
}

impl Actor for DiscordActor {
    type Context = Context<Self>;
}

impl Handler<Register> for DiscordActor {
    type Result = ();

    fn handle(&mut self, msg: Register, _: &mut Self::Context) {
        let Some(rest) = self.rest.get().cloned() else {
            warn!("a reply was registered before its Discord client existed");
            return;
        };
        let (tx, rx) = watch::channel(Desired::default());
        self.replies.insert(msg.message_id, tx);
        let writer = Writer {
            rest,
            limiter: self.limiter.clone(),
            channel: ChannelId::new(msg.channel),
            guild: msg.guild,
            reply_to: Some(MessageId::new(msg.message_id)),
            notice: msg.notice,
            sent: Vec::new(),
            frozen: 0,
            spacing: self.spacing,
            last_write: None,
            writes: 0,
        };
        let span = info_span!(
            "discord_reply",
            channel = msg.channel,
            message = msg.message_id
        );
        // A bug in one reply's writer ends that reply only, and says so.
        let run = std::panic::AssertUnwindSafe(writer.run(rx)).catch_unwind();
        tokio::spawn(
            async move {
                if let Err(panic) = run.await {
                    metrics::counter!("whisper_discord_failed_replies_total").increment(1);
                    tracing::error!(cause = %whisper_actors::supervision::panic_message(&*panic), "a reply writer panicked; that reply is abandoned");
                }
            }
            .instrument(span),
        );
    }
}

impl Handler<ReplyUpdate> for DiscordActor {
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

/// What one step of the writer did.
enum Step {
    /// Discord shows the latest text.
    UpToDate,
    /// One write went out (or failed and will be retried); look again.
    Wrote,
    /// The reply cannot be delivered; stop.
    Abandon,
}

/// The next write a reply needs.
enum Write {
    Create { content: String },
    Edit { index: usize, content: String },
}

struct Writer {
    rest: Arc<Rest>,
    limiter: Arc<ChannelLimiter>,
    channel: ChannelId,
    guild: Option<u64>,
    /// The user's message; `None` once a reply to it failed as a reference.
    reply_to: Option<MessageId>,
    notice: Option<String>,
    sent: Vec<Sent>,
    /// Bytes of the reply text already delivered in messages that were deleted under us; the
    /// rest goes into new messages.
    frozen: usize,
    spacing: Duration,
    /// When Discord answered this reply's previous request.
    last_write: Option<Instant>,
    /// Requests made for this reply (writes, including failed ones).
    writes: u32,
}

const TYPING_EVERY: Duration = Duration::from_secs(8);
/// Tries per write before the reply is given up.
const ATTEMPTS: u32 = 5;

impl Writer {
    async fn run(mut self, mut rx: watch::Receiver<Desired>) {
        if !self.typing_until_text(&mut rx).await {
            return;
        }
        let first_text = Instant::now();
        // A reply that completes within one interval is written once, complete.
        let deadline = first_text + self.spacing;
        while !rx.borrow().done {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                changed = rx.changed() => if changed.is_err() { break },
            }
        }
        let mut attempts = 0;
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.step(&mut rx, &mut attempts, &mut backoff).await {
                Step::Wrote => continue,
                Step::Abandon => break,
                Step::UpToDate => {
                    if rx.borrow().done || rx.changed().await.is_err() {
                        break;
                    }
                }
            }
        }
        metrics::histogram!("whisper_discord_writes_per_reply").record(f64::from(self.writes));
        debug!(
            writes = self.writes,
            messages = self.sent.len(),
            "reply delivered"
        );
    }

    /// Shows typing until the first text arrives; false when there is nothing to write.
    async fn typing_until_text(&mut self, rx: &mut watch::Receiver<Desired>) -> bool {
        loop {
            {
                let desired = rx.borrow();
                if !desired.text.is_empty() || desired.done {
                    return true;
                }
            }
            match self.rest.typing(self.channel).await {
                Err(RestError::Forbidden { code }) => {
                    self.refused(code);
                    return false;
                }
                Err(e) => debug!(error = %e, "typing indicator failed"),
                Ok(()) => {}
            }
            // The sender gone: the actor stopped, nothing more will come.
            if let Ok(Err(_)) = tokio::time::timeout(TYPING_EVERY, rx.changed()).await {
                return !rx.borrow().text.is_empty();
            }
        }
    }

    /// The reply as it should read now (with the notice once it is complete).
    fn wanted(&self, rx: &mut watch::Receiver<Desired>) -> String {
        let desired = rx.borrow_and_update().clone();
        let mut text = desired.text;
        if desired.done
            && let Some(notice) = &self.notice
        {
            text.push_str("\n\n");
            text.push_str(notice);
        }
        text
    }

    /// The first write that would bring Discord in line with `text`, if any.
    fn next_write(&self, text: &str) -> Option<(Write, usize)> {
        let rest = text.get(self.frozen..).unwrap_or_default();
        for (index, part) in split_parts(rest, MAX_CHARS).iter().enumerate() {
            let content = part.render(rest);
            let end = self.frozen + part.source.end;
            match self.sent.get(index) {
                Some(sent) if sent.content == content => continue,
                Some(_) => return Some((Write::Edit { index, content }, end)),
                None => return Some((Write::Create { content }, end)),
            }
        }
        None
    }

    /// One write: wait for the reply's spacing and the channel's budget, then write what the
    /// latest text needs first.
    async fn step(
        &mut self,
        rx: &mut watch::Receiver<Desired>,
        attempts: &mut u32,
        backoff: &mut Duration,
    ) -> Step {
        if self.next_write(&self.wanted(rx)).is_none() {
            return Step::UpToDate;
        }
        if let Some(last) = self.last_write {
            tokio::time::sleep_until(last + self.spacing).await;
        }
        self.limiter.acquire(self.channel.get()).await;
        // The text as it is now, after the waits: updates that came meanwhile are coalesced.
        let text = self.wanted(rx);
        let Some((write, end)) = self.next_write(&text) else {
            return Step::UpToDate;
        };
        self.writes += 1;
        let result = match &write {
            Write::Create { content, .. } => {
                let reply_to = if self.sent.is_empty() && self.frozen == 0 {
                    self.reply_to
                } else {
                    None
                };
                self.rest
                    .create(self.channel, content, reply_to)
                    .await
                    .map(Some)
            }
            Write::Edit { index, content } => self
                .rest
                .edit(self.channel, self.sent[*index].id, content)
                .await
                .map(|()| None),
        };
        self.last_write = Some(Instant::now());
        match result {
            Ok(created) => {
                *attempts = 0;
                *backoff = Duration::from_secs(1);
                match (write, created) {
                    (Write::Create { content, .. }, Some(id)) => self.sent.push(Sent {
                        id,
                        content,
                        source_end: end,
                    }),
                    (Write::Edit { index, content }, _) => {
                        self.sent[index].content = content;
                        self.sent[index].source_end = end;
                    }
                    (Write::Create { .. }, None) => unreachable!("a create returns its id"),
                }
                Step::Wrote
            }
            Err(RestError::UnknownMessage) if matches!(write, Write::Edit { .. }) => {
                // What that message showed is gone with it; everything after goes out anew.
                let Write::Edit { index, .. } = write else {
                    unreachable!("matched above")
                };
                debug!(message = %self.sent[index].id, "reply was deleted; continuing in new messages");
                self.frozen = self.sent[index].source_end;
                self.sent.clear();
                Step::Wrote
            }
            Err(RestError::Forbidden { code }) => {
                self.refused(code);
                Step::Abandon
            }
            Err(RestError::Refused { status, code, .. })
                if code == 50035 && self.reply_to.is_some() && self.sent.is_empty() =>
            {
                // The user's message is gone and the server still wants it: post it plainly.
                debug!(
                    status,
                    "the replied-to message is gone; sending without the reference"
                );
                self.reply_to = None;
                Step::Wrote
            }
            Err(error) if error.is_transient() && *attempts + 1 < ATTEMPTS => {
                *attempts += 1;
                match error {
                    RestError::RateLimited { after, global } => {
                        metrics::counter!("whisper_discord_rate_limited_total").increment(1);
                        warn!(
                            ?after,
                            global, "Discord rate limited a write; waiting as asked"
                        );
                        let until = Instant::now() + after;
                        // Never sooner than Discord asked; every reply in the channel waits.
                        self.limiter.hold(self.channel.get(), until);
                        tokio::time::sleep_until(until).await;
                    }
                    other => {
                        warn!(error = %other, ?backoff, "Discord write failed; retrying");
                        tokio::time::sleep(*backoff).await;
                        *backoff *= 2;
                    }
                }
                Step::Wrote
            }
            Err(error) => {
                metrics::counter!("whisper_discord_failed_replies_total").increment(1);
                warn!(%error, "could not write the reply to Discord; giving up on it");
                Step::Abandon
            }
        }
    }

    fn refused(&self, code: i64) {
        metrics::counter!("whisper_discord_forbidden_total").increment(1);
        if self.limiter.forbid(self.channel.get(), self.guild) {
            warn!(channel = %self.channel, code, "missing permissions to write in this channel; messages there are skipped until its permissions change");
        }
    }
}
