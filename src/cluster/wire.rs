//! What travels over the broker: a user's message from a gateway to the worker owning its
//! partition, and the reply updates back to the gateway that owns the channel.

use serde::{Deserialize, Serialize};

/// A user message, as a gateway publishes it into the user's partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inbound {
    pub character: String,
    pub user: String,
    /// `dm`, `console` or `guild:<id>` (the `Scope` string form).
    pub scope: String,
    pub channel: Option<u64>,
    pub display_name: String,
    pub text: String,
    pub message_id: u64,
    /// The queue the replies go to (the gateway owning the channel's Discord shard).
    pub reply_to: String,
}

/// A reply update: the whole text so far, and whether it is the last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outbound {
    pub message_id: u64,
    pub character: String,
    pub user: String,
    pub text: String,
    pub state: OutboundState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboundState {
    Streaming,
    Done,
    /// The reply failed; `text` is the apology the user sees. The reason is the failure kind.
    Failed(String),
}

impl Outbound {
    pub fn is_final(&self) -> bool {
        self.state != OutboundState::Streaming
    }
}
