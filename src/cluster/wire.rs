//! What travels over the broker: work from a gateway to the worker owning the user's partition
//! (a message, or "forget me"), and what comes back to the gateway that owns the channel (reply
//! updates, forget reports).

use serde::{Deserialize, Serialize};

/// A partition's work, in the order the gateway published it: a user's `/forget` runs after the
/// messages they sent before it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Work {
    Message(Inbound),
    Forget(ForgetRequest),
}

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
    /// Images for a vision model, inline (a worker cannot reach the gateway's downloads).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<whisper_actors::Image>,
}

/// "Forget me" for a user, answered with a [`ToGateway::Forgotten`] carrying `request`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForgetRequest {
    pub user: String,
    pub scope: crate::app::ForgetScope,
    /// The gateway's id for this request (answers are matched on it).
    pub request: u64,
    pub reply_to: String,
}

/// What a worker sends a gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ToGateway {
    Reply(Outbound),
    Forgotten(ForgetAnswer),
}

/// The outcome of a [`ForgetRequest`]: the report's text, or why it failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForgetAnswer {
    pub request: u64,
    pub outcome: Result<String, String>,
}

/// A reply update: the whole text so far, and whether it is the last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outbound {
    pub message_id: u64,
    pub character: String,
    pub user: String,
    /// Where the reply goes, so a gateway that did not see the message (it restarted since)
    /// can still write it.
    #[serde(default)]
    pub channel: Option<u64>,
    #[serde(default)]
    pub guild: Option<u64>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_and_answers_round_trip_with_their_kind() {
        let work = Work::Forget(ForgetRequest {
            user: "discord:1".into(),
            scope: crate::app::ForgetScope::All,
            request: 7,
            reply_to: "q".into(),
        });
        let json = serde_json::to_string(&work).unwrap();
        assert!(json.contains(r#""kind":"forget""#), "{json}");
        assert_eq!(serde_json::from_str::<Work>(&json).unwrap(), work);
        let answer = ToGateway::Forgotten(ForgetAnswer {
            request: 7,
            outcome: Err("history store down".into()),
        });
        let json = serde_json::to_string(&answer).unwrap();
        assert_eq!(serde_json::from_str::<ToGateway>(&json).unwrap(), answer);
    }
}
