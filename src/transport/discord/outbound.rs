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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::FutureExt;
use serenity::all::{ChannelId, MessageId};
use tokio::sync::watch;
use tracing::{Instrument, debug, info_span, warn};
use whisper_actors::messages::ReplyUpdate;

pub use super::limiter::ChannelLimiter;
use super::rest::Rest;
use super::writer::{Target, Writer};

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

/// A reply update from a cluster worker, with where it goes: a gateway that restarted since
/// the user's message (or finished its reply, and sees a re-run of the turn) registers it
/// here. Creating the reply with the user's message id as nonce makes the re-run write into
/// the message already on Discord, not a second one.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Deliver {
    pub channel: Option<u64>,
    pub guild: Option<u64>,
    pub update: ReplyUpdate,
}

#[derive(Clone, Debug, Default)]
pub(super) struct Desired {
    pub(super) text: String,
    pub(super) done: bool,
}

/// The DiscordActor of one bot: the reply writer with its channel budget.
pub struct DiscordActor {
    stats: Arc<whisper_actors::stats::PoolStats>,
    rest: Arc<std::sync::OnceLock<Arc<Rest>>>,
    limiter: Arc<ChannelLimiter>,
    /// Least time between two writes of one reply (`streaming.edit_interval`).
    spacing: Duration,
    replies: HashMap<u64, watch::Sender<Desired>>,
}

impl DiscordActor {
    pub fn new(
        stats: Arc<whisper_actors::stats::PoolStats>,
        rest: Arc<std::sync::OnceLock<Arc<Rest>>>,
        limiter: Arc<ChannelLimiter>,
        spacing: Duration,
    ) -> Self {
        stats.size.set(1);
        Self {
            stats,
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

/// Restarted by its Supervisor after a panic in a handler. The actor value survives the
/// restart, so replies being written keep their writers; only the message that panicked is
/// lost (and logged).
impl actix::Supervised for DiscordActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.stats.restarts.inc();
        warn!(kind = KIND, "restarted");
    }
}

const KIND: &str = "DiscordActor";

impl Handler<whisper_actors::pool::InjectPanic> for DiscordActor {
    type Result = Result<(), whisper_actors::ports::StoreError>;

    fn handle(
        &mut self,
        _: whisper_actors::pool::InjectPanic,
        ctx: &mut Self::Context,
    ) -> Self::Result {
        whisper_actors::supervision::catch(KIND, ctx, |_| panic!("injected into the DiscordActor"))
            .unwrap_or_else(|| Err(whisper_actors::pool::panicked(KIND, "injected")))
    }
}

impl Handler<Register> for DiscordActor {
    type Result = ();

    fn handle(&mut self, msg: Register, ctx: &mut Self::Context) {
        whisper_actors::supervision::catch(KIND, ctx, |_| self.register(msg));
    }
}

impl DiscordActor {
    fn register(&mut self, msg: Register) {
        let Some(rest) = self.rest.get().cloned() else {
            warn!("a reply was registered before its Discord client existed");
            return;
        };
        let (tx, rx) = watch::channel(Desired::default());
        self.replies.insert(msg.message_id, tx);
        let target = Target {
            channel: ChannelId::new(msg.channel),
            guild: msg.guild,
            reply_to: MessageId::new(msg.message_id),
            notice: msg.notice,
        };
        let writer = Writer::new(rest, self.limiter.clone(), target, self.spacing);
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

    fn handle(&mut self, update: ReplyUpdate, ctx: &mut Self::Context) {
        whisper_actors::supervision::catch(KIND, ctx, |_| self.update(update));
    }
}

impl Handler<Deliver> for DiscordActor {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        whisper_actors::supervision::catch(KIND, ctx, |_| {
            if let Some(channel) = msg.channel
                && !self.replies.contains_key(&msg.update.message_id)
            {
                self.register(Register {
                    message_id: msg.update.message_id,
                    channel,
                    guild: msg.guild,
                    notice: None,
                });
            }
            self.update(msg.update)
        });
    }
}

impl DiscordActor {
    fn update(&mut self, update: ReplyUpdate) {
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
