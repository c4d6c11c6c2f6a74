//! `ChatModel` on async-openai: OpenAI, Ollama, vLLM, llama.cpp and anything else that speaks
//! `/v1/chat/completions` with server-sent events.

use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCallChunk,
    ChatCompletionMessageToolCalls, ChatCompletionRequestAssistantMessage,
    ChatCompletionRequestMessage, ChatCompletionRequestMessageContentPartImage,
    ChatCompletionRequestMessageContentPartText, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestToolMessage, ChatCompletionRequestUserMessage,
    ChatCompletionRequestUserMessageContent, ChatCompletionRequestUserMessageContentPart,
    ChatCompletionTool, ChatCompletionToolChoiceOption, ChatCompletionTools,
    CreateChatCompletionRequest, FunctionCall, FunctionObject, ImageUrl, ResponseFormat,
    ResponseFormatJsonSchema, ToolChoiceOptions,
};
use async_trait::async_trait;
use futures::StreamExt;
use whisper_actors::ports::{
    ChatMessage, ChatModel, ChatRequest, LlmError, ModelDelta, Role, TokenStream, ToolCall,
    ToolChoice,
};

pub struct OpenAiChat {
    client: Client<OpenAIConfig>,
    default_model: String,
}

impl OpenAiChat {
    /// `base_url` includes the `/v1` suffix. Timeouts beyond connecting are the LlmActor's job
    /// (it knows whether a token has arrived), so the HTTP client only bounds the connect.
    pub fn new(base_url: &str, api_key: &str, default_model: &str) -> Result<Self, reqwest::Error> {
        crate::tls::install_provider();
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
        let messages = request.messages.into_iter().map(to_message).collect();
        let tools = (!request.tools.is_empty()).then(|| {
            request
                .tools
                .into_iter()
                .map(|t| {
                    ChatCompletionTools::Function(ChatCompletionTool {
                        function: FunctionObject {
                            name: t.name,
                            description: Some(t.description),
                            parameters: Some(t.parameters),
                            strict: None,
                        },
                    })
                })
                .collect::<Vec<_>>()
        });
        let tool_choice = tools.as_ref().map(|_| {
            ChatCompletionToolChoiceOption::Mode(match request.tool_choice {
                ToolChoice::Auto => ToolChoiceOptions::Auto,
                ToolChoice::None => ToolChoiceOptions::None,
            })
        });
        CreateChatCompletionRequest {
            model: request.model.unwrap_or_else(|| self.default_model.clone()),
            messages,
            temperature: Some(request.temperature),
            top_p: request.top_p,
            frequency_penalty: request.frequency_penalty,
            presence_penalty: request.presence_penalty,
            max_completion_tokens: Some(request.max_tokens),
            stream: Some(true),
            tools,
            tool_choice,
            response_format: request.response_schema.map(|r| ResponseFormat::JsonSchema {
                json_schema: ResponseFormatJsonSchema {
                    description: None,
                    name: r.name.to_owned(),
                    schema: r.schema,
                    strict: Some(true),
                },
            }),
            ..Default::default()
        }
    }
}

fn to_message(m: ChatMessage) -> ChatCompletionRequestMessage {
    match m.role {
        Role::System => ChatCompletionRequestMessage::System(
            ChatCompletionRequestSystemMessage::from(m.content),
        ),
        Role::User if m.images.is_empty() => {
            ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage::from(m.content))
        }
        // OpenAI's vision format: the text part, then one `image_url` part per image, inline
        // as a data URL (the endpoint cannot fetch from Discord, and should not).
        Role::User => {
            let mut parts = Vec::with_capacity(1 + m.images.len());
            if !m.content.is_empty() {
                parts.push(ChatCompletionRequestUserMessageContentPart::Text(
                    ChatCompletionRequestMessageContentPartText::from(m.content),
                ));
            }
            parts.extend(m.images.iter().map(|image| {
                ChatCompletionRequestUserMessageContentPart::ImageUrl(
                    ChatCompletionRequestMessageContentPartImage::from(ImageUrl {
                        url: image.data_url(),
                        detail: None,
                    }),
                )
            }));
            ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
                content: ChatCompletionRequestUserMessageContent::Array(parts),
                name: None,
            })
        }
        Role::Assistant if m.tool_calls.is_empty() => ChatCompletionRequestMessage::Assistant(
            ChatCompletionRequestAssistantMessage::from(m.content),
        ),
        Role::Assistant => {
            let calls = m
                .tool_calls
                .into_iter()
                .map(|c| {
                    ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
                        id: c.id,
                        function: FunctionCall {
                            name: c.name,
                            arguments: c.arguments,
                        },
                    })
                })
                .collect();
            ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
                content: (!m.content.is_empty()).then(|| m.content.into()),
                tool_calls: Some(calls),
                ..Default::default()
            })
        }
        Role::Tool => ChatCompletionRequestMessage::Tool(ChatCompletionRequestToolMessage {
            content: m.content.into(),
            tool_call_id: m.tool_call_id.unwrap_or_default(),
        }),
    }
}

/// Streaming APIs send a tool call in fragments (its id and name first, the JSON arguments in
/// pieces), several calls interleaved by `index`; they are whole only when the stream ends.
#[derive(Default)]
struct ToolCallAssembler {
    calls: Vec<(u32, ToolCall)>,
}

impl ToolCallAssembler {
    fn absorb(&mut self, chunks: Vec<ChatCompletionMessageToolCallChunk>) {
        for chunk in chunks {
            let at = match self.calls.iter().position(|(i, _)| *i == chunk.index) {
                Some(at) => at,
                None => {
                    self.calls.push((
                        chunk.index,
                        ToolCall {
                            id: String::new(),
                            name: String::new(),
                            arguments: String::new(),
                        },
                    ));
                    self.calls.len() - 1
                }
            };
            let call = &mut self.calls[at].1;
            if let Some(id) = chunk.id {
                call.id = id;
            }
            if let Some(function) = chunk.function {
                if let Some(name) = function.name {
                    call.name.push_str(&name);
                }
                if let Some(arguments) = function.arguments {
                    call.arguments.push_str(&arguments);
                }
            }
        }
    }

    /// The finished calls in index order; a server that sent no id gets one made up.
    fn finish(&mut self) -> Vec<ToolCall> {
        self.calls.sort_by_key(|(i, _)| *i);
        self.calls
            .drain(..)
            .map(|(i, mut call)| {
                if call.id.is_empty() {
                    call.id = format!("call_{i}");
                }
                call
            })
            .collect()
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
        let state = (stream, ToolCallAssembler::default(), false);
        Ok(
            futures::stream::unfold(state, |(mut stream, mut calls, ended)| async move {
                if ended {
                    return None;
                }
                loop {
                    match stream.next().await {
                        Some(Ok(chunk)) => {
                            let mut text = String::new();
                            for choice in chunk.choices {
                                if let Some(content) = choice.delta.content {
                                    text.push_str(&content);
                                }
                                if let Some(fragments) = choice.delta.tool_calls {
                                    calls.absorb(fragments);
                                }
                            }
                            if !text.is_empty() {
                                return Some((Ok(ModelDelta::Text(text)), (stream, calls, false)));
                            }
                        }
                        Some(Err(e)) => return Some((Err(classify(e)), (stream, calls, true))),
                        None => {
                            let finished = calls.finish();
                            if finished.is_empty() {
                                return None;
                            }
                            let delta = ModelDelta::ToolCalls(finished);
                            return Some((Ok(delta), (stream, calls, true)));
                        }
                    }
                }
            })
            .boxed(),
        )
    }
}
