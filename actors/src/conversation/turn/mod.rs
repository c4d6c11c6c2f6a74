//! One turn, start to finish, as named steps: [`admit`] (rate limit), [`gather`] (context in
//! parallel, then the prompt), [`generate`] (model stream and tools), [`reply`] (the one value
//! every user-visible update goes through) and [`persist`] (history and background jobs).
//! Runs as a single future owned by the conversation actor, so dropping it (actor stopped)
//! drops the model stream and cancels the request.

mod admit;
mod gather;
mod generate;
mod persist;
mod reply;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tracing::{Instrument, info, info_span};

use self::reply::Reply;
use super::ConversationDeps;
use crate::character::Character;
use crate::key::Scope;
use crate::messages::{FailureKind, Timings, UserMessage};
use crate::ports::{Profile, Turn};

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

pub async fn run_turn(deps: Arc<ConversationDeps>, input: TurnInput) -> TurnReport {
    let span = info_span!("turn", key = %input.message.key, message_id = input.message.message_id);
    run(&deps, input).instrument(span).await
}

async fn run(deps: &ConversationDeps, input: TurnInput) -> TurnReport {
    let TurnInput {
        message: msg,
        character,
        cached_history,
        cached_profile,
        final_sent,
    } = input;
    let reply = Reply::new(&msg, final_sent);
    let mut timings = Timings {
        queued: Instant::now() - msg.received_at,
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

    if !admit::admit(deps, &msg).await {
        reply.notice(FailureKind::RateLimited, admit::RATE_LIMITED);
        return report;
    }

    let gathered = gather::gather(
        deps,
        &msg,
        cached_history.is_none(),
        cached_profile.is_none(),
        &mut timings,
    )
    .await;
    let fast = gathered.fast;
    report.loaded_history = gathered.loaded_history;
    report.loaded_profile = gathered.loaded_profile;
    let history = cached_history.as_ref().or(report.loaded_history.as_ref());
    let profile = cached_profile.as_ref().or(report.loaded_profile.as_ref());
    let request = gather::build_prompt(
        deps,
        &character,
        fast,
        &gathered.sections,
        history.map_or(&[][..], Vec::as_slice),
        profile.and_then(Option::as_ref),
        &msg,
    );
    timings.prompt_ready = msg.received_at.elapsed();

    let generated = generate::generate(deps, &msg, request, fast, &reply, &mut timings).await;
    if let Some(error) = &generated.error {
        deps.stats.pipeline.failed_replies.inc();
        reply.apologise(error, &generated.text);
        return report;
    }
    timings.updates = generated.updates + 1;
    timings.total = msg.received_at.elapsed();
    log_timings(&timings);
    deps.stats.pipeline.replies.inc();
    reply.done(generated.text.clone(), timings);

    let replied_at_ms = deps.clock.now_ms();
    let turn = Turn {
        key: msg.key.clone(),
        scope: msg.scope.clone(),
        user_message: msg.text.clone(),
        reply: generated.text,
        created_at_ms: replied_at_ms - msg.received_at.elapsed().as_millis() as i64,
        replied_at_ms,
        message_id: msg
            .key
            .user
            .starts_with("discord:")
            .then_some(msg.message_id),
    };
    persist::record(deps, &turn, &msg.display_name).await;
    if let Some(jobs) = &deps.jobs {
        // The user's message count including this turn (profile known from cache or store).
        let previous = profile
            .and_then(Option::as_ref)
            .map_or(0, |p| p.message_count);
        let follow = persist::FollowUp {
            vector: gathered.embedding.await,
            fast,
            turn_number: previous + 1,
            images: &msg.images,
            model: character.model.model.clone(),
        };
        report.summarised = persist::enqueue_follow_ups(jobs, deps, &turn, follow).await;
    }
    report.completed = Some(turn);
    report
}

/// The per-step latency line, and the same numbers as histograms for the metrics endpoint
/// (the `metrics` facade: a no-op unless the application installs a recorder).
fn log_timings(t: &Timings) {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    info!(
        queued_ms = ms(t.queued),
        context_ms = ms(t.context),
        prompt_ready_ms = ms(t.prompt_ready),
        first_token_ms = t.first_token.map(ms),
        tool_calls = t.tool_calls,
        tools_ms = ms(t.tools),
        total_ms = ms(t.total),
        updates = t.updates,
        route = ?t.route,
        intent = ?t.intent,
        degraded = ?t.degraded,
        "reply complete"
    );
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
        Some(crate::classifier::Route::Fast) => "fast",
        Some(crate::classifier::Route::Full) => "full",
        None => "unclassified",
    };
    metrics::counter!("whisper_replies_by_route_total", "route" => route).increment(1);
    for provider in &t.degraded {
        metrics::counter!("whisper_degraded_context_total", "provider" => provider.clone())
            .increment(1);
    }
}
