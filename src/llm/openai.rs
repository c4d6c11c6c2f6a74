//! `ChatModel` on async-openai: OpenAI, Ollama, vLLM, llama.cpp and anything else that speaks
//! `/v1/chat/completions` with server-sent events.

use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    CreateChatCompletionRequest,
};
use async_trait::async_trait;
use futures::StreamExt;
use whisper_actors::ports::{ChatModel, ChatRequest, LlmError, Role, TokenStream};

pub struct OpenAiChat {
    client: Client<OpenAIConfig>,
    default_model: String,
}

impl OpenAiChat {
    /// `base_url` includes the `/v1` suffix. Timeouts beyond connecting are the LlmActor's job
    /// (it knows whether a token has arrived), so the HTTP client only bounds the connect.
    pub fn new(base_url: &str, api_key: &str, default_model: &str) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()?;
        let config = OpenAIConfig::new()
            .with_api_base(base_url.trim_end_matches('/'))
            .with_api_key(api_key);
        let default_model = if default_model.is_empty() {
            "default"
        } else {
            default_model
        };
        // async-openai retries on its own by default; the LlmActor owns the retry policy (it
        // knows whether a token already reached the user, and counts retries), so install the
        // bare transport without the built-in retry layer.
        let client = Client::with_config(config)
            .with_http_client(http.clone())
            .with_http_service(ReqwestService::new(http));
        Ok(Self {
            client,
            default_model: default_model.to_owned(),
        })
    }

    fn to_request(&self, request: ChatRequest) -> CreateChatCompletionRequest {
        let messages = request
            .messages
            .into_iter()
            .map(|m| match m.role {
                Role::System => ChatCompletionRequestMessage::System(
                    ChatCompletionRequestSystemMessage::from(m.content),
                ),
                Role::User => ChatCompletionRequestMessage::User(
                    ChatCompletionRequestUserMessage::from(m.content),
                ),
                Role::Assistant => ChatCompletionRequestMessage::Assistant(
                    ChatCompletionRequestAssistantMessage::from(m.content),
                ),
            })
            .collect();
        CreateChatCompletionRequest {
            model: request.model.unwrap_or_else(|| self.default_model.clone()),
            messages,
            temperature: Some(request.temperature),
            top_p: request.top_p,
            frequency_penalty: request.frequency_penalty,
            presence_penalty: request.presence_penalty,
            max_completion_tokens: Some(request.max_tokens),
            stream: Some(true),
            ..Default::default()
        }
    }
}

/// Maps client errors onto the core's retry classes: 429, 5xx and connection trouble are
/// transient; everything else (bad key, unknown model, malformed response) is not.
fn classify(error: OpenAIError) -> LlmError {
    match error {
        OpenAIError::ApiError(api) => {
            let status = api.status_code.as_u16();
            let message = api.api_error.message;
            if status == 429 || status >= 500 {
                LlmError::Transient {
                    status: Some(status),
                    message,
                }
            } else {
                LlmError::Rejected {
                    status: Some(status),
                    message,
                }
            }
        }
        OpenAIError::Reqwest(e) => {
            let status = e.status().map(|s| s.as_u16());
            if status.is_some_and(|s| s != 429 && s < 500) {
                LlmError::Rejected {
                    status,
                    message: e.to_string(),
                }
            } else {
                LlmError::Transient {
                    status,
                    message: e.to_string(),
                }
            }
        }
        OpenAIError::StreamError(e) => LlmError::Transient {
            status: None,
            message: e.to_string(),
        },
        other => LlmError::Rejected {
            status: None,
            message: other.to_string(),
        },
    }
}

#[async_trait]
impl ChatModel for OpenAiChat {
    async fn stream(&self, request: ChatRequest) -> Result<TokenStream, LlmError> {
        let request = self.to_request(request);
        let stream = self
            .client
            .chat()
            .create_stream(request)
            .await
            .map_err(classify)?;
        Ok(stream
            .map(|chunk| {
                chunk.map_err(classify).map(|chunk| {
                    chunk
                        .choices
                        .into_iter()
                        .filter_map(|choice| choice.delta.content)
                        .collect()
                })
            })
            .boxed())
    }
}
