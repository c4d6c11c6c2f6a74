//! The traits that adapters implement: the history store and the chat model. The core never
//! sees a connection, a URL or a SQL statement.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::key::{ConversationKey, Scope};

/// One exchange: what the user said and what the character answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub key: ConversationKey,
    pub scope: Scope,
    pub user_message: String,
    pub reply: String,
    /// Unix milliseconds when the user's message arrived.
    pub created_at_ms: i64,
    /// Unix milliseconds when the reply completed.
    pub replied_at_ms: i64,
    /// The transport's id of the user's message, where it is unique for good (a Discord
    /// snowflake): a turn answered again after a crash (cluster mode redelivers what was not
    /// acked) is then stored once. `None` elsewhere (the console numbers its lines per run).
    #[serde(default)]
    pub message_id: Option<u64>,
}

/// What the bot knows about a user regardless of character.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub user: String,
    pub display_name: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub message_count: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{store} is unavailable: {reason}")]
    Unavailable { store: &'static str, reason: String },
    #[error("{store} failed to {operation}: {reason}")]
    Failed {
        store: &'static str,
        operation: &'static str,
        reason: String,
    },
}

/// Conversation history and user profiles.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// The newest `limit` turns of this conversation in this scope, oldest first.
    async fn recent_turns(
        &self,
        key: &ConversationKey,
        scope: &Scope,
        limit: usize,
    ) -> Result<Vec<Turn>, StoreError>;

    /// The user's profile, if they have ever written.
    async fn profile(&self, user: &str) -> Result<Option<Profile>, StoreError>;

    /// Appends a completed turn and updates the user's profile in one transaction.
    async fn record_turn(&self, turn: &Turn, display_name: &str) -> Result<(), StoreError>;

    /// Deletes every turn and the profile of `user`; returns (turns, profiles) deleted.
    async fn forget_user(&self, user: &str) -> Result<(u64, u64), StoreError>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's answer to one of the assistant's calls.
    Tool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// The calls an assistant message made (tool rounds only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Which call a `Role::Tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Images sent with a user message, after its text (vision models only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<crate::messages::Image>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            images: Vec::new(),
        }
    }

    /// A user message with images: the model reads the text, then the images.
    pub fn user_with_images(
        content: impl Into<String>,
        images: Vec<crate::messages::Image>,
    ) -> Self {
        Self {
            images,
            ..Self::new(Role::User, content)
        }
    }

    /// The assistant's turn that asked for tools (with whatever text came before the calls).
    pub fn tool_request(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        Self {
            tool_calls: calls,
            ..Self::new(Role::Assistant, content)
        }
    }

    /// A tool's result, answering call `id`.
    pub fn tool_result(id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(id.into()),
            ..Self::new(Role::Tool, content)
        }
    }
}

/// A function the model may call, described by a JSON schema of its arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// One call the model asked for; `arguments` is the model's JSON text, unparsed (it may be
/// malformed, and the tool says so in its result).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// Whether the model may call the request's tools this round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoice {
    #[default]
    Auto,
    /// Tools stay described (the history holds calls to them) but the model must answer.
    None,
}

/// A model request, independent of any client library.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub max_tokens: u32,
    /// Tools the model may call (empty: a plain completion).
    pub tools: Vec<ToolSpec>,
    pub tool_choice: ToolChoice,
    /// Structured output: the answer must match this JSON schema (OpenAI structured outputs;
    /// llama-server turns it into a grammar, so even a small local model answers valid JSON).
    pub response_schema: Option<ResponseSchema>,
}

impl ChatRequest {
    /// A plain completion, as background jobs ask for one (summaries, facts, image
    /// descriptions): no tools, no repetition penalties, the endpoint's default `top_p`.
    pub fn completion(
        model: Option<String>,
        messages: Vec<ChatMessage>,
        temperature: f32,
        max_tokens: u32,
    ) -> Self {
        Self {
            model,
            messages,
            temperature,
            top_p: None,
            frequency_penalty: None,
            presence_penalty: None,
            max_tokens,
            tools: Vec::new(),
            tool_choice: ToolChoice::default(),
            response_schema: None,
        }
    }
}

/// A named JSON schema the model's answer must follow.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResponseSchema {
    pub name: &'static str,
    pub schema: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// Rate limited (429), a 5xx, or the connection failed: worth retrying.
    #[error("model endpoint temporarily failed{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Transient {
        status: Option<u16>,
        message: String,
    },
    /// The request itself was refused (bad model name, bad key...): retrying will not help.
    #[error("model endpoint rejected the request{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Rejected {
        status: Option<u16>,
        message: String,
    },
    #[error("model did not answer within {0:?}")]
    Timeout(Duration),
    #[error("model queue is full ({0} requests waiting)")]
    Overloaded(usize),
    #[error("model actor is unavailable")]
    Unavailable,
}

impl LlmError {
    /// Only transient endpoint failures are retried. A timeout is not: the user has already
    /// waited the whole deadline, and a hung server rarely recovers within another one.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LlmError::Transient { .. })
    }
}

/// What a model stream yields: text as it is produced, and, at the end of a tool round, the
/// complete calls (adapters assemble the fragments that streaming APIs send).
#[derive(Clone, Debug, PartialEq)]
pub enum ModelDelta {
    Text(String),
    ToolCalls(Vec<ToolCall>),
}

impl From<&str> for ModelDelta {
    fn from(text: &str) -> Self {
        ModelDelta::Text(text.to_owned())
    }
}

pub type TokenStream = BoxStream<'static, Result<ModelDelta, LlmError>>;

/// A streaming chat model (any OpenAI-compatible endpoint, in the application crate).
#[async_trait]
pub trait ChatModel: Send + Sync + 'static {
    /// Opens a streaming completion. Dropping the stream must cancel the request.
    async fn stream(&self, request: ChatRequest) -> Result<TokenStream, LlmError>;
}

/// A sentence embedding, shared cheaply between the classifier and the memory search.
pub type Embedding = std::sync::Arc<[f32]>;

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("embedding failed: {0}")]
pub struct EmbedError(pub String);

/// Turns text into vectors (a local ONNX model in the application crate).
#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Embedding>, EmbedError>;
    /// For background work (memories of replies, summaries): served behind live messages.
    async fn embed_background(&self, texts: Vec<String>) -> Result<Vec<Embedding>, EmbedError> {
        self.embed(texts).await
    }
    fn dimensions(&self) -> usize;
    /// Identifies the model, for caches keyed by model.
    fn model_id(&self) -> &str;
}
