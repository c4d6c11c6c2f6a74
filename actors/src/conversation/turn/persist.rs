//! Step 5, persist: after the user has the reply (it adds nothing to their wait), store the turn
//! and enqueue its durable follow-ups. The shard is only told the turn finished after this, so a
//! graceful shutdown waits for it.

use tracing::{Instrument, error, info_span};

use crate::conversation::ConversationDeps;
use crate::graph::ExtractFacts;
use crate::jobs::{JobSystem, NewJob};
use crate::memory::{DescribeImage, RememberTurn, Summarise};
use crate::messages::Image;
use crate::ports::{Embedding, Turn};

pub async fn record(deps: &ConversationDeps, turn: &Turn, display_name: &str) {
    if let Err(error) = deps
        .history
        .record_turn(turn, display_name)
        .instrument(info_span!("persist"))
        .await
    {
        deps.stats.pipeline.store_write_failures.inc();
        error!(%error, "could not store the turn; it will be missing from history");
    }
}

/// What a turn leaves for its follow-ups beyond the stored turn.
pub struct FollowUp<'a> {
    /// The message's embedding, reused by the remember job.
    pub vector: Option<Embedding>,
    pub fast: bool,
    /// The user's message count including this turn.
    pub turn_number: u64,
    /// Images the message carried (vision models only): each is described into a memory.
    pub images: &'a [Image],
    /// The model that read them.
    pub model: Option<String>,
}

/// Durable follow-ups of a turn: remember it, describe its images, summarise every
/// `summarise_every` turns, and (full path only) extract facts. Job ids are derived from the
/// turn, so enqueueing twice stores one job. Returns whether a summary was enqueued.
pub async fn enqueue_follow_ups(
    jobs: &JobSystem,
    deps: &ConversationDeps,
    turn: &Turn,
    follow: FollowUp<'_>,
) -> bool {
    let FollowUp {
        vector,
        fast,
        turn_number,
        images,
        model,
    } = follow;
    let id = format!(
        "{}:{}:{}",
        turn.key.character, turn.key.user, turn.created_at_ms
    );
    let user = turn.key.user.to_string();
    let remembers = deps.memory.is_some() && deps.embedder.is_some();
    let mut pending = Vec::new();
    if remembers {
        let payload = RememberTurn {
            turn: turn.clone(),
            message_vector: vector,
        };
        pending.push(NewJob::of(&id, user.clone(), &payload));
    }
    if remembers {
        for (index, image) in images.iter().enumerate() {
            let payload = DescribeImage {
                key: turn.key.clone(),
                scope: turn.scope.clone(),
                at_ms: turn.created_at_ms,
                index: index as u32,
                image: image.clone(),
                model: model.clone(),
            };
            pending.push(NewJob::of(&format!("{id}:{index}"), user.clone(), &payload));
        }
    }
    let summarise = deps
        .summarise_every
        .is_some_and(|every| every > 0 && turn_number.is_multiple_of(every))
        && deps.memory.is_some();
    if summarise {
        let payload = Summarise {
            key: turn.key.clone(),
            scope: turn.scope.clone(),
            turns: deps.summarise_every.unwrap_or_default() as usize,
            at_ms: turn.replied_at_ms,
        };
        pending.push(NewJob::of(&id, user.clone(), &payload));
    }
    if deps.extract_facts && !fast {
        let payload = ExtractFacts {
            user: user.clone(),
            message: turn.user_message.clone(),
            at_ms: turn.created_at_ms,
        };
        pending.push(NewJob::of(&id, user.clone(), &payload));
    }
    let mut summarised = summarise;
    for job in pending {
        let kind = job.kind;
        if let Err(error) = jobs.submit(job).await {
            deps.stats.pipeline.store_write_failures.inc();
            error!(%error, %kind, "could not enqueue a background job; it is lost for this turn");
            if kind == crate::jobs::JobKind::Summarise {
                summarised = false;
            }
        }
    }
    summarised
}
