//! Step 1, admit: a user over their message limit gets a notice, not a model call.

use tracing::warn;

use crate::conversation::ConversationDeps;
use crate::messages::UserMessage;

/// The notice says the message was not kept: a refused message is stored nowhere.
pub const RATE_LIMITED: &str = "You're sending messages faster than I can read them, so I skipped \
that one (it isn't saved). Give me a moment, then send it again.";

/// Whether the message may go on. A limiter that is down lets messages through (logged):
/// limits protect capacity, they must not stop it.
pub async fn admit(deps: &ConversationDeps, message: &UserMessage) -> bool {
    let Some(limiter) = &deps.limiter else {
        return true;
    };
    match limiter.allow(&message.key.user).await {
        Ok(allowed) => {
            if !allowed {
                deps.stats.pipeline.rate_limited.inc();
            }
            allowed
        }
        Err(error) => {
            warn!(%error, "rate limiter unavailable; letting the message through");
            true
        }
    }
}
