//! The one value a turn answers through. Every update the user sees (stream edits, the final
//! reply, a notice, an apology) is built here, so the message id, key and "final sent" flag are
//! set in one place and a turn cannot send two final answers.

use std::cell::Cell;
use std::rc::Rc;

use actix::Recipient;

use crate::key::ConversationKey;
use crate::messages::{FailureKind, ReplyStatus, ReplyUpdate, Timings, UserMessage};
use crate::ports::LlmError;

pub struct Reply {
    to: Recipient<ReplyUpdate>,
    message_id: u64,
    key: ConversationKey,
    /// Shared with the actor, so a crash after the final update does not overwrite it.
    final_sent: Rc<Cell<bool>>,
}

impl Reply {
    pub fn new(message: &UserMessage, final_sent: Rc<Cell<bool>>) -> Self {
        Self {
            to: message.reply_to.clone(),
            message_id: message.message_id,
            key: message.key.clone(),
            final_sent,
        }
    }

    fn send(&self, text: String, status: ReplyStatus) {
        self.to.do_send(ReplyUpdate {
            message_id: self.message_id,
            key: self.key.clone(),
            text,
            status,
        });
    }

    /// The reply so far, while the model writes.
    pub fn stream(&self, text: &str) {
        self.send(text.to_owned(), ReplyStatus::Streaming);
    }

    /// The finished reply.
    pub fn done(self, text: String, timings: Timings) {
        self.finish(text, ReplyStatus::Done(timings));
    }

    /// A short notice instead of a reply (e.g. over the rate limit).
    pub fn notice(self, kind: FailureKind, text: &str) {
        self.finish(text.to_owned(), ReplyStatus::Failed(kind));
    }

    /// What the user reads when the model could not answer: what it wrote so far (if
    /// anything) and why it stopped.
    pub fn apologise(self, error: &LlmError, partial: &str) {
        let (kind, apology) = apology(error);
        let text = if partial.trim().is_empty() {
            apology.to_owned()
        } else {
            format!("{partial}\n\n[{apology}]")
        };
        self.finish(text, ReplyStatus::Failed(kind));
    }

    fn finish(self, text: String, status: ReplyStatus) {
        self.send(text, status);
        self.final_sent.set(true);
    }
}

fn apology(error: &LlmError) -> (FailureKind, &'static str) {
    match error {
        LlmError::Timeout(_) => (
            FailureKind::LlmTimeout,
            "Sorry, the model took too long to answer. Please try again in a moment.",
        ),
        LlmError::Overloaded(_) => (
            FailureKind::LlmOverloaded,
            "I'm answering a lot of people right now. Please try again in a little while.",
        ),
        _ => (
            FailureKind::LlmFailed,
            "Sorry, I couldn't reach my language model just now. Please try again shortly.",
        ),
    }
}
