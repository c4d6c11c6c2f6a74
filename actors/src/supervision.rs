//! Restart policy: how often a failing actor may be restarted, how long to back off, and when
//! to give up and escalate the failure to the parent.
//!
//! The policy is data (from `[supervision]` in config) and the [`RestartTracker`] is a small
//! state machine, so every supervisor in the system (conversation actors, shards, the local model
//! server) decides the same way and the decision is unit-testable without actors.

use std::any::Any;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// Restarts allowed inside `window`; one more failure escalates.
    pub max_restarts: u32,
    /// Sliding window over which restarts are counted.
    pub window: Duration,
    /// Delay before the first restart; doubles with each restart still inside the window.
    pub backoff_initial: Duration,
    /// Upper bound for the doubling delay.
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// What a supervisor should do about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart after `backoff`; `attempt` counts restarts inside the current window (1-based).
    Restart { attempt: u32, backoff: Duration },
    /// The budget is spent: hand the failure to the parent.
    Escalate { failures: u32 },
}

#[derive(Clone, Debug)]
pub struct RestartTracker {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
}

impl RestartTracker {
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            recent: VecDeque::new(),
        }
    }

    pub fn policy(&self) -> &RestartPolicy {
        &self.policy
    }

    /// Records a failure at `now` and decides.
    pub fn on_failure(&mut self, now: Instant) -> RestartDecision {
        while let Some(&oldest) = self.recent.front() {
            if now.duration_since(oldest) > self.policy.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() as u32 >= self.policy.max_restarts {
            return RestartDecision::Escalate {
                failures: self.recent.len() as u32 + 1,
            };
        }
        self.recent.push_back(now);
        let attempt = self.recent.len() as u32;
        let backoff =
            crate::backoff::Backoff::new(self.policy.backoff_initial, self.policy.backoff_max)
                .delay(attempt);
        RestartDecision::Restart { attempt, backoff }
    }
}

/// Best-effort text of a panic payload, for the restart log line.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Runs a synchronous handler body of a supervised actor. A panic does not take the arbiter's
/// thread down with it: it is logged, the actor is stopped (its actix `Supervisor` restarts
/// it, and its `restarting` counts the restart), and `None` tells the handler to answer its
/// caller with an error instead.
pub fn catch<A, R>(
    kind: &'static str,
    ctx: &mut actix::Context<A>,
    body: impl FnOnce(&mut actix::Context<A>) -> R,
) -> Option<R>
where
    A: actix::Actor<Context = actix::Context<A>>,
{
    use actix::ActorContext;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(ctx))) {
        Ok(result) => Some(result),
        Err(panic) => {
            tracing::error!(kind, cause = %panic_message(&*panic), "actor panicked in a handler; restarting it");
            ctx.stop();
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: u32) -> RestartPolicy {
        RestartPolicy {
            max_restarts: max,
            window: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(350),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_then_escalates() {
        let mut t = RestartTracker::new(policy(3));
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(
            t.on_failure(now),
            RestartDecision::Restart {
                attempt: 1,
                backoff: ms(100)
            }
        );
        assert_eq!(
            t.on_failure(now),
            RestartDecision::Restart {
                attempt: 2,
                backoff: ms(200)
            }
        );
        assert_eq!(
            t.on_failure(now),
            RestartDecision::Restart {
                attempt: 3,
                backoff: ms(350)
            }
        );
        assert_eq!(t.on_failure(now), RestartDecision::Escalate { failures: 4 });
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let mut t = RestartTracker::new(policy(1));
        let start = Instant::now();
        assert!(matches!(
            t.on_failure(start),
            RestartDecision::Restart { attempt: 1, .. }
        ));
        assert!(matches!(
            t.on_failure(start),
            RestartDecision::Escalate { .. }
        ));
        let later = start + Duration::from_secs(11);
        assert!(matches!(
            t.on_failure(later),
            RestartDecision::Restart { attempt: 1, .. }
        ));
    }

    #[test]
    fn zero_restarts_escalates_immediately() {
        let mut t = RestartTracker::new(policy(0));
        assert_eq!(
            t.on_failure(Instant::now()),
            RestartDecision::Escalate { failures: 1 }
        );
    }
}
