//! Step 3, generate: stream the model's answer to the user at the configured cadence. On the
//! full path the model may call tools: each round's calls run in parallel, their results go
//! back to the model, and the round after the last allowed one must answer.

use tracing::{Instrument, info_span};

use super::reply::Reply;
use crate::conversation::ConversationDeps;
use crate::conversation::streaming::{Relay, RoundEnd};
use crate::llm::Generate;
use crate::messages::{Timings, UserMessage};
use crate::ports::{ChatMessage, ChatRequest, LlmError, ToolChoice};
use crate::tools::ToolScope;

/// What the model produced.
pub struct Generated {
    /// Everything streamed, over all rounds.
    pub text: String,
    /// Interim updates sent (the final one is the reply's).
    pub updates: u32,
    /// Why it stopped early, if it did (`text` is then the partial answer).
    pub error: Option<LlmError>,
}

pub async fn generate(
    deps: &ConversationDeps,
    message: &UserMessage,
    mut request: ChatRequest,
    fast: bool,
    reply: &Reply,
    timings: &mut Timings,
) -> Generated {
    let stats = &deps.stats.pipeline;
    let toolbox = deps.tools.as_ref().filter(|_| !fast);
    if let Some(toolbox) = toolbox {
        request.tools = toolbox.specs().to_vec();
    }
    let tool_scope = ToolScope {
        key: message.key.clone(),
        scope: message.scope.clone(),
    };
    let mut relay = Relay::new(deps.settings.load().edit_interval);
    let mut emit = |text: &str| reply.stream(text);
    let mut round = 0;
    let outcome = loop {
        let tools_left = toolbox.is_some_and(|t| round < t.max_rounds);
        if !request.tools.is_empty() && !tools_left {
            request.tool_choice = ToolChoice::None;
        }
        let mut events = match deps.llm.send(Generate::interactive(request.clone())).await {
            Ok(Ok(events)) => events,
            Ok(Err(error)) => break RoundEnd::Failed(error),
            Err(_) => break RoundEnd::Failed(LlmError::Unavailable),
        };
        let before = relay.text.len();
        let end = relay
            .round(&mut events, &mut emit)
            .instrument(info_span!("stream", round))
            .await;
        match (end, toolbox) {
            (RoundEnd::ToolCalls(calls), Some(toolbox)) if tools_left && !calls.is_empty() => {
                round += 1;
                timings.tool_calls += calls.len() as u32;
                stats.tool_calls.add(calls.len() as u64);
                let results = toolbox
                    .run(&tool_scope, &calls)
                    .instrument(info_span!("tools", round, calls = calls.len()))
                    .await;
                timings.tools += results.elapsed;
                if results.failures > 0 {
                    stats.tool_failures.add(results.failures as u64);
                }
                let said = relay.text[before..].to_owned();
                request
                    .messages
                    .push(ChatMessage::tool_request(said, calls));
                request.messages.extend(results.messages);
            }
            // Calls the model was not allowed to make: what it wrote is the answer.
            (RoundEnd::ToolCalls(_), _) => break RoundEnd::Done,
            (end, _) => break end,
        }
    };
    timings.first_token = relay.first_token_at.map(|at| at - message.received_at);
    let error = match outcome {
        RoundEnd::Failed(error) => Some(error),
        _ if relay.text.trim().is_empty() => Some(LlmError::Rejected {
            status: None,
            message: "empty reply".into(),
        }),
        _ => None,
    };
    Generated {
        text: relay.text,
        updates: relay.updates,
        error,
    }
}
