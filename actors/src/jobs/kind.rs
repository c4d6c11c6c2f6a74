//! The kinds of background job and their typed payloads. The queue stores a kind's name and a
//! JSON payload; everything else in the code names kinds by this enum, so a new kind is one
//! variant and one `Payload` impl, and a typo cannot enqueue a job nothing runs.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Job, JobError, NewJob};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// Store a finished turn as memories.
    RememberTurn,
    /// Condense a conversation's recent turns into one memory.
    Summarise,
    /// Ask the model for facts in a user's message.
    ExtractFacts,
    /// Ask a vision model to describe an image the user sent, and remember the description.
    DescribeImage,
}

impl JobKind {
    pub const ALL: [JobKind; 4] = [
        Self::RememberTurn,
        Self::Summarise,
        Self::ExtractFacts,
        Self::DescribeImage,
    ];

    /// The name stored in the queue (stable across versions: queued jobs survive upgrades).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RememberTurn => "remember_turn",
            Self::Summarise => "summarise",
            Self::ExtractFacts => "extract_facts",
            Self::DescribeImage => "describe_image",
        }
    }

    /// The kind a stored job names, if this version knows it.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's payload: the type says which kind it is.
pub trait Payload: Serialize + DeserializeOwned {
    const KIND: JobKind;
}

impl NewJob {
    /// A job of `P`'s kind. Its id is the kind plus `id` (derived from what the job is about),
    /// so enqueueing the same work twice stores one job.
    pub fn of<P: Payload>(id: &str, user: impl Into<String>, payload: &P) -> Self {
        Self {
            id: format!("{}:{id}", P::KIND),
            kind: P::KIND,
            user: user.into(),
            payload: serde_json::to_string(payload).expect("job payloads serialise"),
        }
    }
}

impl Job {
    /// The job's payload, read as `P`.
    pub fn payload<P: Payload>(&self) -> Result<P, JobError> {
        serde_json::from_str(&self.payload)
            .map_err(|e| JobError::new(format!("bad {} payload: {e}", P::KIND)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in JobKind::ALL {
            assert_eq!(JobKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(JobKind::parse("remember"), None);
    }
}
