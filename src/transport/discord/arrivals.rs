//! Each user's messages in the order Discord sent them.
//!
//! serenity hands every gateway event to its handler in a task of its own, so two messages of
//! one user can reach the router (or, in cluster mode, the broker) in either order when they
//! arrive close together. Its shard runner, though, calls collectors synchronously, in the
//! gateway's order, before it spawns the handlers: a collector notes each message (and each
//! `/forget`, which must run after the messages before it) in its author's line, and a handler
//! waits until everything its author sent earlier has been handed on before it hands on its own.
//!
//! A handler enters the line first thing ([`Arrivals::enter`]) and leaves it when its guard
//! drops, whatever path it takes (ignored, refused, routed or published), so a message that is
//! never answered never holds the line up. A wait is bounded ([`MAX_WAIT`]): a line is an
//! ordering aid, never a reason to lose a message.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serenity::all::{Event, Interaction};
use serenity::gateway::CollectorCallback;
use tokio::sync::Notify;
use tracing::warn;

/// The longest a message waits for earlier ones of its author: longer than a cluster gateway
/// keeps trying to hand a message to the broker (30 s), so a broker restart keeps the order.
pub const MAX_WAIT: Duration = Duration::from_secs(45);

#[derive(Default)]
pub struct Arrivals {
    /// Per author, the ids (Discord snowflakes, growing with time) noted and not yet handed on.
    lines: Mutex<HashMap<u64, BTreeSet<u64>>>,
    moved: Notify,
}

/// A message's place in its author's line; leaving it lets the next one go.
pub struct Place {
    arrivals: Arc<Arrivals>,
    author: u64,
    id: u64,
}

impl Arrivals {
    /// The callback a shard runner calls for every event, in order: notes new messages and
    /// `/forget` commands in their author's line.
    pub fn collector(self: &Arc<Self>) -> CollectorCallback {
        let arrivals = self.clone();
        CollectorCallback(Box::new(move |event| {
            match event {
                Event::MessageCreate(e) => {
                    arrivals.note(e.message.author.id.get(), e.message.id.get());
                }
                Event::InteractionCreate(e) => {
                    if let Interaction::Command(command) = &e.interaction
                        && command.data.name == "forget"
                    {
                        arrivals.note(command.user.id.get(), command.id.get());
                    }
                }
                _ => {}
            }
            true
        }))
    }

    fn note(&self, author: u64, id: u64) {
        self.lock().entry(author).or_default().insert(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, BTreeSet<u64>>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the message's place in its author's line (it is there already if the collector
    /// saw it).
    pub fn enter(self: &Arc<Self>, author: u64, id: u64) -> Place {
        self.note(author, id);
        Place {
            arrivals: self.clone(),
            author,
            id,
        }
    }
}

impl Place {
    /// Waits until no earlier message of the author is still waiting to be handed on.
    pub async fn wait_turn(&self) {
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            let moved = self.arrivals.moved.notified();
            let first = self
                .arrivals
                .lock()
                .get(&self.author)
                .and_then(|line| line.first().copied());
            if first.is_none_or(|first| first >= self.id) {
                return;
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                warn!(
                    waited = ?MAX_WAIT,
                    "an earlier message of this author is still not handed on; going ahead"
                );
                return;
            }
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut lines = self.arrivals.lock();
        if let Some(line) = lines.get_mut(&self.author) {
            line.remove(&self.id);
            if line.is_empty() {
                lines.remove(&self.author);
            }
        }
        drop(lines);
        self.arrivals.moved.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_later_message_waits_for_an_earlier_one_of_its_author_only() {
        let arrivals = Arc::new(Arrivals::default());
        // The collector saw 10, 11 (author 1) and 20 (author 2), in that order.
        arrivals.note(1, 10);
        arrivals.note(1, 11);
        arrivals.note(2, 20);
        // 11's handler runs first.
        let later = arrivals.enter(1, 11);
        let other = arrivals.enter(2, 20);
        tokio::time::timeout(Duration::from_millis(50), other.wait_turn())
            .await
            .expect("another author never waits");
        let waiting = tokio::spawn(async move {
            later.wait_turn().await;
            later
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "11 waits for 10");
        let earlier = arrivals.enter(1, 10);
        earlier.wait_turn().await;
        drop(earlier);
        let later = tokio::time::timeout(Duration::from_millis(200), waiting)
            .await
            .expect("11 goes once 10 is handed on")
            .unwrap();
        drop((later, other));
        assert!(arrivals.lock().is_empty(), "lines are dropped when empty");
    }
}
