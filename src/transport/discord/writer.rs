//! One reply's writer task: typing while the model thinks, then the reply, edited in place as
//! it grows and continued past 2,000 characters, spending the channel's budget carefully.

use std::sync::Arc;
use std::time::Duration;

use serenity::all::{ChannelId, MessageId};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::limiter::ChannelLimiter;
use super::outbound::Desired;
use super::rest::{Rest, RestError};
use super::split::{MAX_CHARS, split_parts};

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

pub(super) struct Writer {
    rest: Arc<Rest>,
    limiter: Arc<ChannelLimiter>,
    channel: ChannelId,
    guild: Option<u64>,
    /// The user's message; `None` once a reply to it failed as a reference.
    reply_to: Option<MessageId>,
    /// The user's message id, the base of every create's nonce.
    origin: u64,
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
    /// Messages this writer created, numbering the next create's nonce.
    creates: u32,
}

/// Where one reply goes.
pub(super) struct Target {
    pub(super) channel: ChannelId,
    pub(super) guild: Option<u64>,
    /// The user's message the reply answers.
    pub(super) reply_to: MessageId,
    /// Said instead of the reply when it cannot be delivered as one.
    pub(super) notice: Option<String>,
}

impl Writer {
    pub(super) fn new(
        rest: Arc<Rest>,
        limiter: Arc<ChannelLimiter>,
        target: Target,
        spacing: Duration,
    ) -> Self {
        Self {
            rest,
            limiter,
            channel: target.channel,
            guild: target.guild,
            reply_to: Some(target.reply_to),
            origin: target.reply_to.get(),
            notice: target.notice,
            sent: Vec::new(),
            frozen: 0,
            spacing,
            last_write: None,
            writes: 0,
            creates: 0,
        }
    }
}

const TYPING_EVERY: Duration = Duration::from_secs(8);
/// Tries per write before the reply is given up.
const ATTEMPTS: u32 = 5;

impl Writer {
    pub(super) async fn run(mut self, mut rx: watch::Receiver<Desired>) {
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
                // The n-th message of a reply has the same nonce in every run of its turn.
                let nonce = match self.creates {
                    0 => self.origin.to_string(),
                    n => format!("{}-{n}", self.origin),
                };
                self.rest
                    .create(self.channel, content, reply_to, Some(&nonce))
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
                    (Write::Create { .. }, Some(created)) => {
                        self.creates += 1;
                        // Discord's content, not ours: a message an earlier run of this turn
                        // created comes back as it was, and the next step edits it if needed.
                        self.sent.push(Sent {
                            id: created.id,
                            content: created.content,
                            source_end: end,
                        })
                    }
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
