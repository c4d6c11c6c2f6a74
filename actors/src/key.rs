//! Identity of a conversation and the privacy scope a message was sent in.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One conversation actor exists per `(character, user)`: the same person talking to two
/// characters has two independent conversations, and sharding keys on exactly this pair.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConversationKey {
    /// Character id (the file stem of `config/characters/<id>.toml`).
    pub character: Arc<str>,
    /// Transport-qualified user id, e.g. `console:alice` or `discord:80351110224678912`.
    pub user: Arc<str>,
}

impl ConversationKey {
    pub fn new(character: impl Into<Arc<str>>, user: impl Into<Arc<str>>) -> Self {
        Self {
            character: character.into(),
            user: user.into(),
        }
    }
}

impl fmt::Display for ConversationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.character, self.user)
    }
}

/// Where a message was said. History is only ever read back within the same scope, which is
/// what keeps a direct message from surfacing in a guild channel.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// The local terminal (`whisperengine chat`).
    Console,
    /// A private conversation (a Discord DM).
    Direct,
    /// A guild (server) identified by its id.
    Guild(u64),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Console => f.write_str("console"),
            Scope::Direct => f.write_str("dm"),
            Scope::Guild(id) => write!(f, "guild:{id}"),
        }
    }
}

/// A stored scope string that is not one of `console`, `dm` or `guild:<id>`.
#[derive(Debug, thiserror::Error)]
#[error("invalid scope {0:?}: expected \"console\", \"dm\" or \"guild:<id>\"")]
pub struct ParseScopeError(String);

impl FromStr for Scope {
    type Err = ParseScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "console" => Ok(Scope::Console),
            "dm" => Ok(Scope::Direct),
            other => other
                .strip_prefix("guild:")
                .and_then(|id| id.parse().ok())
                .map(Scope::Guild)
                .ok_or_else(|| ParseScopeError(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_round_trips_through_its_storage_form() {
        for scope in [Scope::Console, Scope::Direct, Scope::Guild(42)] {
            assert_eq!(scope.to_string().parse::<Scope>().unwrap(), scope);
        }
        assert!("guild:x".parse::<Scope>().is_err());
        assert!("channel".parse::<Scope>().is_err());
    }
}
