//! The plain message types that travel between transports and the runtime.

use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;

use crate::key::{ConversationKey, Scope};

/// A user's message, as a transport hands it to the router.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UserMessage {
    pub key: ConversationKey,
    pub scope: Scope,
    /// The transport's channel (a Discord channel or thread), for providers that read what
    /// else is being said there; `None` where there is no such place (the console).
    pub channel: Option<u64>,
    /// The user's current display name (kept in their profile).
    pub display_name: String,
    pub text: String,
    /// Transport correlation id, echoed in every [`ReplyUpdate`].
    pub message_id: u64,
    /// When the transport received it: the start of the latency budget.
    pub received_at: Instant,
    /// Where the reply's updates go.
    pub reply_to: Recipient<ReplyUpdate>,
    /// Told when the turn is over (see [`TurnSettled`]); `None` for transports that only need
    /// the reply.
    pub settled: Option<Recipient<TurnSettled>>,
    /// Images for a model that reads them (the transport checked and bounded them); empty for
    /// a model without vision.
    pub images: Vec<Image>,
}

/// An image in a user's message, as the model receives it: a MIME type the model accepts and
/// the bytes in base64. Cheap to clone (a turn's request is rebuilt each tool round, and the
/// description job takes its own copy), and its `Debug` never prints the bytes: they are the
/// user's content.
#[derive(Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Image {
    /// `image/png`, `image/jpeg`, `image/webp` or `image/gif`.
    pub mime: String,
    pub base64: std::sync::Arc<str>,
}

impl Image {
    /// The OpenAI-style `image_url` value: the image inline, so the endpoint needs no access
    /// to Discord.
    pub fn data_url(&self) -> String {
        format!("data:{};base64,{}", self.mime, self.base64)
    }
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Image({}, {} base64 bytes)",
            self.mime,
            self.base64.len()
        )
    }
}

/// A message's turn is over: its final reply was sent, and the turn is stored (or it failed,
/// and nothing of it will be). Sent after the final [`ReplyUpdate`], to the same recipient's
/// actor if both are one, so it arrives after it. A broker consumer acks the message here, not
/// at the final reply, so a crash in between redelivers the message instead of losing the turn.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct TurnSettled {
    pub message_id: u64,
    pub key: ConversationKey,
}

/// The growing reply. A transport receives these at most once per `streaming.edit_interval`
/// while tokens arrive, and always exactly one final update (`status != Streaming`).
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct ReplyUpdate {
    pub message_id: u64,
    pub key: ConversationKey,
    /// The whole text so far (not a delta): an edit replaces the message.
    pub text: String,
    pub status: ReplyStatus,
}

impl ReplyUpdate {
    pub fn is_final(&self) -> bool {
        !matches!(self.status, ReplyStatus::Streaming)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ReplyStatus {
    Streaming,
    /// The reply is complete.
    Done(Timings),
    /// The reply could not be produced; `text` is the apology the user sees.
    Failed(FailureKind),
}

/// Why a reply failed, for transports that want to react (e.g. a reaction emoji) and for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FailureKind {
    /// The model did not answer within its deadline.
    LlmTimeout,
    /// The model queue is full.
    LlmOverloaded,
    /// The model endpoint failed (after retries).
    LlmFailed,
    /// The conversation actor crashed while answering and was restarted.
    Crashed,
    /// The conversation was given up on after repeated crashes.
    Escalated,
    /// The user sent more messages than `limits.messages_per_window` allows.
    RateLimited,
}

/// Per-step latency of one reply: the roadmap's "latency tracing per step".
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Waiting for the shard and the conversation's queue.
    pub queued: Duration,
    /// Parallel context retrieval (the slowest provider within its deadline).
    pub context: Duration,
    /// From the message's arrival until the prompt was ready.
    pub prompt_ready: Duration,
    /// From the message's arrival until the first token.
    pub first_token: Option<Duration>,
    /// From the message's arrival until the final update.
    pub total: Duration,
    /// Updates sent to the transport, including the final one.
    pub updates: u32,
    /// Providers that failed or missed their deadline for this reply.
    pub degraded: Vec<String>,
    /// The fast-track verdict, when a classifier is configured.
    pub route: Option<crate::classifier::Route>,
    pub intent: Option<String>,
    /// Tool calls the model made, over all rounds.
    pub tool_calls: u32,
    /// Time spent running tools (rounds run their calls in parallel).
    pub tools: Duration,
}
