//! One turn, start to finish: context in parallel, prompt, model stream, transport updates,
//! persistence. Runs as a single future owned by the conversation actor, so dropping it (actor
//! stopped) drops the model stream and cancels the request.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::ConversationDeps;
use crate::character::Character;
use crate::context::{ContextPiece, ContextRequest, PieceKind, gather, no_embedding};
use crate::key::Scope;
use crate::llm::Generate;
use crate::messages::{FailureKind, ReplyStatus, ReplyUpdate, Timings, UserMessage};
use crate::ports::{ChatMessage, LlmError, Profile, ToolChoice, Turn};
use crate::prompt::{self, PromptInput};
use crate::streaming::{Relay, RoundEnd};
use crate::tools::ToolScope;

pub struct TurnInput {
    pub message: UserMessage,
    pub character: Arc<Character>,
    pub cached_history: Option<Vec<Turn>>,
    pub cached_profile: Option<Option<Profile>>,
    /// Set once the final update is out, so a later crash does not overwrite a finished reply.
    pub final_sent: Rc<Cell<bool>>,
}

/// What the actor learns from a turn, to update its warm state.
pub struct TurnReport {
    pub scope: Scope,
    pub display_name: String,
    pub loaded_history: Option<Vec<Turn>>,
    pub loaded_profile: Option<Option<Profile>>,
    pub completed: Option<Turn>,
    /// A summary job covering this turn was enqueued (every `summarise_every` turns).
    pub summarised: bool,
}

pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the user reads when the model could not answer.
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

pub async fn run_turn(deps: Arc<ConversationDeps>, input: TurnInput) -> TurnReport {
    let span = info_span!("turn", key = %input.message.key, message_id = input.message.message_id);
    run(deps, input).instrument(span).await
}

async fn run(deps: Arc<ConversationDeps>, input: TurnInput) -> TurnReport {
    let TurnInput {
        message: msg,
        character,
        cached_history,
        cached_profile,
        final_sent,
    } = input;
    let started = Instant::now();
    let settings = &deps.settings;
    let stats = &deps.stats.pipeline;
    let mut timings = Timings {
        queued: started - msg.received_at,
        ..Default::default()
    };
    let mut report = TurnReport {
        scope: msg.scope.clone(),
        display_name: msg.display_name.clone(),
        loaded_history: None,
        loaded_profile: None,
        completed: None,
        summarised: false,
    };

    // 0. A user over their message limit gets a notice, not a model call. A limiter that is
    //    down lets messages through (logged): limits protect capacity, they must not stop it.
    if let Some(limiter) = &deps.limiter {
        match limiter.allow(&msg.key.user).await {
            Ok(true) => {}
            Ok(false) => {
                stats.rate_limited.inc();
                msg.reply_to.do_send(ReplyUpdate {
                    message_id: msg.message_id,
                    key: msg.key.clone(),
                    text: "You're sending messages faster than I can read them. Give me a moment, then try again.".into(),
                    status: ReplyStatus::Failed(FailureKind::RateLimited),
                });
                final_sent.set(true);
                return report;
            }
            Err(error) => warn!(%error, "rate limiter unavailable; letting the message through"),
        }
    }

    // 1. Context, every provider at once, each within its own deadline.
    let providers: Vec<_> = deps
        .providers
        .iter()
        .filter(|p| match p.kind() {
            PieceKind::History => cached_history.is_none(),
            PieceKind::Profile => cached_profile.is_none(),
            PieceKind::Section | PieceKind::Route => true,
        })
        .cloned()
        .collect();
    // The message is embedded once; the classifier and the memory search share the vector.
    let embedding = match &deps.embedder {
        Some(embedder) => {
            let (embedder, text) = (embedder.clone(), msg.text.clone());
            async move {
                match embedder.embed(vec![text]).await {
                    Ok(mut vectors) => vectors.pop(),
                    Err(error) => {
                        warn!(%error, "embedding failed; classifier and memory search are skipped");
                        None
                    }
                }
            }
            .instrument(info_span!("embed"))
            .boxed()
            .shared()
        }
        None => no_embedding(),
    };
    let request = ContextRequest {
        key: msg.key.clone(),
        scope: msg.scope.clone(),
        channel: msg.channel,
        message_id: msg.message_id,
        text: msg.text.clone(),
        embedding: embedding.clone(),
    };
    let gathered = gather(&providers, &request)
        .instrument(info_span!("context"))
        .await;
    timings.context = gathered.elapsed;
    timings.degraded = gathered.degraded();
    if !timings.degraded.is_empty() {
        stats.degraded_context.inc();
    }
    let fast = gathered.is_fast();
    if let Some(verdict) = &gathered.verdict {
        timings.route = Some(verdict.route);
        timings.intent.clone_from(&verdict.intent);
    }
    let mut sections = Vec::new();
    for piece in gathered.pieces {
        match piece {
            ContextPiece::History(turns) => report.loaded_history = Some(turns),
            ContextPiece::Profile(profile) => report.loaded_profile = Some(profile),
            // The fast track answers from persona and recent history only.
            ContextPiece::Section(section) if !fast => sections.push(section),
            ContextPiece::Section(_) | ContextPiece::Route(_) => {}
        }
    }
    let params = match (&character.fast_model, fast) {
        (Some(fast_model), true) => fast_model,
        _ => &character.model,
    };

    // 2. Prompt.
    let built = {
        let _prompt = info_span!("prompt").entered();
        let history = cached_history
            .as_deref()
            .or(report.loaded_history.as_deref())
            .unwrap_or(&[]);
        let profile = cached_profile
            .as_ref()
            .or(report.loaded_profile.as_ref())
            .and_then(Option::as_ref);
        prompt::build(PromptInput {
            character: &character,
            params,
            profile,
            sections: &sections,
            history,
            message: &msg.text,
            token_budget: settings.token_budget,
            now_ms: unix_ms(),
        })
    };
    timings.prompt_ready = msg.received_at.elapsed();
    debug!(
        history_turns = built.history_turns_used,
        tokens = built.estimated_tokens,
        "prompt ready"
    );

    // 3. Model stream, relayed to the transport at the configured cadence.
    let send_final = |text: String, status: ReplyStatus| {
        msg.reply_to.do_send(ReplyUpdate {
            message_id: msg.message_id,
            key: msg.key.clone(),
            text,
            status,
        });
        final_sent.set(true);
    };
    //    On the full path the model may call tools: each round's calls run in parallel, their
    //    results go back to the model, and the round after the last allowed one must answer.
    let mut request = built.request;
    let toolbox = deps.tools.as_ref().filter(|_| !fast);
    if let Some(toolbox) = toolbox {
        request.tools = toolbox.specs().to_vec();
    }
    let tool_scope = ToolScope {
        key: msg.key.clone(),
        scope: msg.scope.clone(),
    };
    let mut relay = Relay::new(settings.edit_interval);
    let mut emit = |text: &str| {
        msg.reply_to.do_send(ReplyUpdate {
            message_id: msg.message_id,
            key: msg.key.clone(),
            text: text.to_owned(),
            status: ReplyStatus::Streaming,
        });
    };
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
    timings.first_token = relay.first_token_at.map(|at| at - msg.received_at);
    let relayed = relay;
    if let RoundEnd::Failed(error) = outcome {
        return failed(&deps, report, &error, relayed.text, send_final);
    }
    if relayed.text.trim().is_empty() {
        let error = LlmError::Rejected {
            status: None,
            message: "empty reply".into(),
        };
        return failed(&deps, report, &error, String::new(), send_final);
    }

    timings.updates = relayed.updates + 1;
    timings.total = msg.received_at.elapsed();
    info!(
        queued_ms = timings.queued.as_secs_f64() * 1e3,
        context_ms = timings.context.as_secs_f64() * 1e3,
        prompt_ready_ms = timings.prompt_ready.as_secs_f64() * 1e3,
        first_token_ms = timings.first_token.map(|d| d.as_secs_f64() * 1e3),
        tool_calls = timings.tool_calls,
        tools_ms = timings.tools.as_secs_f64() * 1e3,
        total_ms = timings.total.as_secs_f64() * 1e3,
        updates = timings.updates,
        route = ?timings.route,
        intent = ?timings.intent,
        degraded = ?timings.degraded,
        "reply complete"
    );
    stats.replies.inc();
    record_metrics(&timings);
    send_final(relayed.text.clone(), ReplyStatus::Done(timings));

    // 4. Persist after the user has the reply: it adds nothing to their wait. The shard is only
    //    told the turn finished after this, so a graceful shutdown waits for it.
    let replied_at_ms = unix_ms();
    let turn = Turn {
        key: msg.key.clone(),
        scope: msg.scope.clone(),
        user_message: msg.text.clone(),
        reply: relayed.text,
        created_at_ms: replied_at_ms - msg.received_at.elapsed().as_millis() as i64,
        replied_at_ms,
    };
    if let Err(error) = deps
        .history
        .record_turn(&turn, &msg.display_name)
        .instrument(info_span!("persist"))
        .await
    {
        stats.store_write_failures.inc();
        error!(%error, "could not store the turn; it will be missing from history");
    }
    if let Some(jobs) = &deps.jobs {
        // The user's message count including this turn (profile known from cache or store).
        let previous = cached_profile
            .as_ref()
            .or(report.loaded_profile.as_ref())
            .and_then(Option::as_ref)
            .map_or(0, |p| p.message_count);
        report.summarised =
            enqueue_background(jobs, &deps, &turn, embedding.await, fast, previous + 1).await;
    } else if let (Some(store), Some(embedder)) = (&deps.memory, &deps.embedder) {
        let vector = embedding.await;
        let remembered = crate::memory::remember_turn(
            store.as_ref(),
            embedder.as_ref(),
            &turn,
            vector,
            settings.memory_chunk_words,
        )
        .instrument(info_span!("remember"))
        .await;
        if let Err(error) = remembered {
            stats.store_write_failures.inc();
            error!(%error, "could not store the turn's memories");
        }
    }
    report.completed = Some(turn);
    report
}

/// Per-step latency histograms and reply counters, for the metrics endpoint (the `metrics`
/// facade: a no-op unless the application installs a recorder).
fn record_metrics(t: &Timings) {
    let steps = [
        ("queued", Some(t.queued)),
        ("context", Some(t.context)),
        ("prompt_ready", Some(t.prompt_ready)),
        ("first_token", t.first_token),
        ("tools", (t.tool_calls > 0).then_some(t.tools)),
        ("total", Some(t.total)),
    ];
    for (step, elapsed) in steps {
        if let Some(elapsed) = elapsed {
            metrics::histogram!("whisper_step_seconds", "step" => step)
                .record(elapsed.as_secs_f64());
        }
    }
    let route = match t.route {
        Some(crate::classify::Route::Fast) => "fast",
        Some(crate::classify::Route::Full) => "full",
        None => "unclassified",
    };
    metrics::counter!("whisper_replies_by_route_total", "route" => route).increment(1);
    for provider in &t.degraded {
        metrics::counter!("whisper_degraded_context_total", "provider" => provider.clone())
            .increment(1);
    }
}

fn failed(
    deps: &ConversationDeps,
    report: TurnReport,
    error: &LlmError,
    partial: String,
    send_final: impl FnOnce(String, ReplyStatus),
) -> TurnReport {
    let (kind, text) = apology(error);
    let text = if partial.trim().is_empty() {
        text.to_owned()
    } else {
        format!("{partial}\n\n[{text}]")
    };
    deps.stats.pipeline.failed_replies.inc();
    send_final(text, ReplyStatus::Failed(kind));
    report
}

/// Durable follow-ups of a turn: remember it, summarise every `summarise_every` turns, and (full
/// path only) extract facts. Job ids are derived from the turn, so enqueueing twice stores one
/// job. Returns whether a summary was enqueued.
async fn enqueue_background(
    jobs: &crate::jobs::JobSystem,
    deps: &ConversationDeps,
    turn: &Turn,
    vector: Option<crate::ports::Embedding>,
    fast: bool,
    turn_number: u64,
) -> bool {
    let mut summarised = false;
    let id = format!(
        "{}:{}:{}",
        turn.key.character, turn.key.user, turn.created_at_ms
    );
    let mut pending = Vec::new();
    if deps.memory.is_some() && deps.embedder.is_some() {
        let payload = crate::memory::RememberTurn {
            turn: turn.clone(),
            message_vector: vector,
        };
        pending.push(("remember_turn", serde_json::to_string(&payload)));
    }
    if let Some(every) = deps.summarise_every.filter(|n| *n > 0)
        && deps.memory.is_some()
        && turn_number.is_multiple_of(every)
    {
        let payload = crate::memory::Summarise {
            key: turn.key.clone(),
            scope: turn.scope.clone(),
            turns: every as usize,
            at_ms: turn.replied_at_ms,
        };
        pending.push(("summarise", serde_json::to_string(&payload)));
        summarised = true;
    }
    if deps.extract_facts && !fast {
        let payload = crate::facts::ExtractFacts {
            user: turn.key.user.to_string(),
            message: turn.user_message.clone(),
            at_ms: turn.created_at_ms,
        };
        pending.push(("extract_facts", serde_json::to_string(&payload)));
    }
    for (kind, payload) in pending {
        let job = crate::jobs::NewJob {
            id: format!("{kind}:{id}"),
            kind: kind.to_owned(),
            user: turn.key.user.to_string(),
            payload: payload.expect("job payloads serialise"),
        };
        if let Err(error) = jobs.submit(job).await {
            deps.stats.pipeline.store_write_failures.inc();
            error!(%error, kind, "could not enqueue a background job; it is lost for this turn");
            if kind == "summarise" {
                summarised = false;
            }
        }
    }
    summarised
}
