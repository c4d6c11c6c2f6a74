//! A local OpenAI-compatible streaming server with scripted behaviour.
//!
//! It speaks the real protocol (`POST /v1/chat/completions`, server-sent events with
//! `chat.completion.chunk` objects and a final `[DONE]`), so the production async-openai
//! client talks to it over a socket exactly as it would to a hosted API. Each request takes the
//! next scripted [`Behavior`]; with the script empty it echoes the last user message, which
//! lets tests check that each reply answers the right message.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use futures::StreamExt;
use serde_json::{Value, json};

#[derive(Clone, Debug)]
pub enum Behavior {
    /// Stream `tokens`, waiting `first_delay` before the first and `delay` between the others.
    Stream {
        tokens: Vec<String>,
        first_delay: Duration,
        delay: Duration,
    },
    /// Answer with this HTTP status and an OpenAI-style error body.
    Status(u16),
    /// Accept the request and never answer.
    Hang,
    /// Stream `text` (if any), then call these tools `(name, JSON arguments)`: each call's id and
    /// name first, then its arguments in fragments interleaved with the other calls', the way
    /// hosted APIs stream parallel calls.
    ToolCalls {
        text: Option<String>,
        calls: Vec<(String, String)>,
    },
}

impl Behavior {
    pub fn call(calls: &[(&str, &str)]) -> Self {
        Behavior::ToolCalls {
            text: None,
            calls: calls
                .iter()
                .map(|(n, a)| (n.to_string(), a.to_string()))
                .collect(),
        }
    }

    pub fn tokens(tokens: &[&str], delay: Duration) -> Self {
        Behavior::Stream {
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            first_delay: Duration::ZERO,
            delay,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub body: Value,
    pub at: Instant,
}

impl Recorded {
    /// Names of the tools the request offered.
    pub fn tool_names(&self) -> Vec<String> {
        self.body["tools"]
            .as_array()
            .map(|t| {
                t.iter()
                    .map(|t| {
                        t["function"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn tool_choice(&self) -> Option<String> {
        self.body["tool_choice"].as_str().map(str::to_owned)
    }

    /// `(tool_call_id, content)` of every tool result message, in order.
    pub fn tool_results(&self) -> Vec<(String, String)> {
        self.body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter(|m| m["role"] == "tool")
                    .map(|m| {
                        (
                            m["tool_call_id"].as_str().unwrap_or_default().to_owned(),
                            m["content"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// All message contents of the request, in order (a message in parts: its text parts).
    pub fn contents(&self) -> Vec<String> {
        self.body["messages"]
            .as_array()
            .map(|m| m.iter().map(|m| text_of(&m["content"])).collect())
            .unwrap_or_default()
    }

    /// The `image_url` parts of the last message, as `(url, part)` in order.
    pub fn last_message_images(&self) -> Vec<String> {
        let Some(last) = self.body["messages"].as_array().and_then(|m| m.last()) else {
            return Vec::new();
        };
        last["content"]
            .as_array()
            .map(|parts| {
                parts
                    .iter()
                    .filter(|p| p["type"] == "image_url")
                    .map(|p| {
                        p["image_url"]["url"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every `image_url` part anywhere in the request.
    pub fn image_count(&self) -> usize {
        self.body.to_string().matches("\"image_url\"").count() / 2
    }

    /// Whether the request's first (system) message starts with `prefix`: how background
    /// jobs' requests are told apart.
    fn system_starts_with(&self, prefix: &str) -> bool {
        self.contents()
            .first()
            .is_some_and(|s| s.starts_with(prefix))
    }

    pub fn last_user_message(&self) -> String {
        self.contents().last().cloned().unwrap_or_default()
    }
}

/// A message's content as text: the string, or its text parts joined.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// How the server answers a fact-extraction request for a given user message.
#[derive(Clone, Debug)]
pub enum FactsAnswer {
    Text(String),
    Hang,
}

#[derive(Default)]
struct Shared {
    script: Mutex<VecDeque<Behavior>>,
    requests: Mutex<Vec<Recorded>>,
    fact_requests: Mutex<Vec<Recorded>>,
    summary_requests: Mutex<Vec<Recorded>>,
    describe_requests: Mutex<Vec<Recorded>>,
    /// The answer to an image-description request.
    description: Mutex<Option<String>>,
    facts: Mutex<std::collections::HashMap<String, FactsAnswer>>,
    echo_delay: Mutex<Duration>,
}

#[derive(Clone)]
pub struct ScriptedLlm {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl ScriptedLlm {
    /// Starts the server on a free loopback port, on the current tokio runtime.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Like real model servers, send each event at once (no Nagle delay on small writes).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        ScriptedLlm { addr, shared }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues behaviours for the next requests, in order.
    pub fn script(&self, behaviors: impl IntoIterator<Item = Behavior>) {
        self.shared.script.lock().unwrap().extend(behaviors);
    }

    /// Delay between echoed tokens when the script is empty.
    pub fn set_echo_delay(&self, delay: Duration) {
        *self.shared.echo_delay.lock().unwrap() = delay;
    }

    /// Chat requests (fact-extraction requests are kept apart, see `fact_requests`).
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Summary requests; each is answered "Summary: " plus the transcript's first user line.
    pub fn summary_requests(&self) -> Vec<Recorded> {
        self.shared.summary_requests.lock().unwrap().clone()
    }

    /// Image-description requests (the background job's), kept apart from chat requests.
    pub fn describe_requests(&self) -> Vec<Recorded> {
        self.shared.describe_requests.lock().unwrap().clone()
    }

    /// How image-description requests are answered (default: "an image").
    pub fn describe_images_as(&self, description: &str) {
        *self.shared.description.lock().unwrap() = Some(description.to_owned());
    }

    pub fn fact_requests(&self) -> Vec<Recorded> {
        self.shared.fact_requests.lock().unwrap().clone()
    }

    /// How to answer fact extraction for `message` (default: `[]`, nothing to extract).
    pub fn facts_for(&self, message: &str, answer: FactsAnswer) {
        self.shared
            .facts
            .lock()
            .unwrap()
            .insert(message.to_owned(), answer);
    }
}

fn chunk(content: Option<&str>, finish: Option<&str>) -> Bytes {
    let delta = match content {
        Some(c) => json!({ "role": "assistant", "content": c }),
        None => json!({}),
    };
    let body = json!({
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000u32,
        "model": "scripted",
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }]
    });
    Bytes::from(format!("data: {body}\n\n"))
}

async fn completions(State(shared): State<Arc<Shared>>, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let recorded = Recorded {
        body,
        at: Instant::now(),
    };
    if recorded.system_starts_with("You extract durable facts") {
        let answer = shared
            .facts
            .lock()
            .unwrap()
            .get(&recorded.last_user_message())
            .cloned();
        shared.fact_requests.lock().unwrap().push(recorded);
        return match answer.unwrap_or(FactsAnswer::Text("[]".into())) {
            FactsAnswer::Hang => {
                std::future::pending::<()>().await;
                unreachable!()
            }
            FactsAnswer::Text(text) => stream_response(vec![text], Duration::ZERO, Duration::ZERO),
        };
    }
    if recorded.system_starts_with("Summarise this conversation") {
        let transcript = recorded.last_user_message();
        let first = transcript
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("User: ")
            .to_owned();
        shared.summary_requests.lock().unwrap().push(recorded);
        return stream_response(
            vec![format!("Summary: {first}")],
            Duration::ZERO,
            Duration::ZERO,
        );
    }
    if recorded.system_starts_with("Describe the image the user shared") {
        let answer = shared
            .description
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| "an image".to_owned());
        shared.describe_requests.lock().unwrap().push(recorded);
        return stream_response(vec![answer], Duration::ZERO, Duration::ZERO);
    }
    let next = shared.script.lock().unwrap().pop_front();
    let behavior = next.unwrap_or_else(|| {
        let last = recorded.last_user_message();
        let tokens = format!("echo: {last}")
            .split_inclusive(' ')
            .map(str::to_owned)
            .collect();
        Behavior::Stream {
            tokens,
            first_delay: Duration::ZERO,
            delay: *shared.echo_delay.lock().unwrap(),
        }
    });
    shared.requests.lock().unwrap().push(recorded);
    match behavior {
        Behavior::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap();
            let body = json!({ "error": { "message": format!("scripted {code}"), "type": "server_error", "param": null, "code": null } });
            (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        Behavior::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Behavior::Stream {
            tokens,
            first_delay,
            delay,
        } => stream_response(tokens, first_delay, delay),
        Behavior::ToolCalls { text, calls } => tool_call_response(text, calls),
    }
}

fn tool_chunk(delta: Value, finish: Option<&str>) -> Bytes {
    let body = json!({
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000u32,
        "model": "scripted",
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }]
    });
    Bytes::from(format!("data: {body}\n\n"))
}

fn tool_call_response(text: Option<String>, calls: Vec<(String, String)>) -> Response {
    let mut events = Vec::new();
    if let Some(text) = text {
        events.push(chunk(Some(&text), None));
    }
    for (i, (name, _)) in calls.iter().enumerate() {
        events.push(tool_chunk(
            json!({ "tool_calls": [{ "index": i, "id": format!("call_{name}_{i}"), "type": "function",
                     "function": { "name": name, "arguments": "" } }] }),
            None,
        ));
    }
    // Arguments in two fragments per call, the calls interleaved.
    for half in 0..2 {
        for (i, (_, arguments)) in calls.iter().enumerate() {
            let mid = arguments.len() / 2;
            let part = if half == 0 {
                &arguments[..mid]
            } else {
                &arguments[mid..]
            };
            events.push(tool_chunk(
                json!({ "tool_calls": [{ "index": i, "function": { "arguments": part } }] }),
                None,
            ));
        }
    }
    events.push(tool_chunk(json!({}), Some("tool_calls")));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(futures::stream::iter(
            events.into_iter().map(Ok::<_, Infallible>),
        )))
        .unwrap()
}

fn stream_response(tokens: Vec<String>, first_delay: Duration, delay: Duration) -> Response {
    let events = futures::stream::iter(tokens.into_iter().enumerate())
        .then(move |(i, token)| async move {
            let wait = if i == 0 { first_delay } else { delay };
            // Even a zero sleep waits for the timer's next 1 ms tick: skip it.
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            Ok::<_, Infallible>(chunk(Some(&token), None))
        })
        .chain(futures::stream::iter([
            Ok(chunk(None, Some("stop"))),
            Ok(Bytes::from_static(b"data: [DONE]\n\n")),
        ]));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .unwrap()
}
