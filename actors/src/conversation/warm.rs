//! The conversation's warm state: its recent history and profile, reloaded from the store
//! after a restart or passivation.

use crate::key::{ConversationKey, Scope};
use crate::ports::{Profile, Turn};

/// Cached state: reloaded from the store after a restart or passivation. Kept compact: an
/// idle actor's size is paid once per user, 100k times over on a big server. History is kept
/// per scope in a small vector (nearly every conversation has exactly one scope), and turns
/// drop what the actor already knows (its key and the scope).
#[derive(Default)]
pub(super) struct WarmState {
    pub(super) history: Vec<(Scope, Vec<CachedTurn>)>,
    /// `Some(None)`: known to have no profile yet.
    pub(super) profile: Option<Option<Box<Profile>>>,
}

pub(super) struct CachedTurn {
    user_message: Box<str>,
    reply: Box<str>,
    created_at_ms: i64,
    replied_at_ms: i64,
}

impl From<Turn> for CachedTurn {
    fn from(turn: Turn) -> Self {
        CachedTurn {
            user_message: turn.user_message.into_boxed_str(),
            reply: turn.reply.into_boxed_str(),
            created_at_ms: turn.created_at_ms,
            replied_at_ms: turn.replied_at_ms,
        }
    }
}

impl WarmState {
    pub(super) fn history_for(&self, key: &ConversationKey, scope: &Scope) -> Option<Vec<Turn>> {
        let (_, turns) = self.history.iter().find(|(s, _)| s == scope)?;
        Some(
            turns
                .iter()
                .map(|t| Turn {
                    key: key.clone(),
                    scope: scope.clone(),
                    user_message: t.user_message.to_string(),
                    reply: t.reply.to_string(),
                    created_at_ms: t.created_at_ms,
                    replied_at_ms: t.replied_at_ms,
                    message_id: None,
                })
                .collect(),
        )
    }

    pub(super) fn set_history(&mut self, scope: &Scope, turns: Vec<Turn>) {
        let turns = turns.into_iter().map(CachedTurn::from).collect();
        self.history.retain(|(s, _)| s != scope);
        self.history.push((scope.clone(), turns));
    }

    /// Appends to a loaded cache only: extending a partial one would hide older turns.
    pub(super) fn push_turn(&mut self, scope: &Scope, turn: Turn, limit: usize) {
        if let Some((_, turns)) = self.history.iter_mut().find(|(s, _)| s == scope) {
            turns.push(turn.into());
            let excess = turns.len().saturating_sub(limit);
            turns.drain(..excess);
            turns.shrink_to_fit();
        }
    }
}
