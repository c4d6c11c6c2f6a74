//! The portable format's tables: names and columns, the same in every backend.

/// A table in the portable format: its name and columns (the same in every backend).
pub(super) struct Table {
    pub(super) name: &'static str,
    pub(super) columns: &'static [&'static str],
}

pub(super) const TURNS: Table = Table {
    name: "turns",
    columns: &[
        "character",
        "user_id",
        "scope",
        "user_message",
        "reply",
        "created_at_ms",
        "replied_at_ms",
    ],
};
pub(super) const PROFILES: Table = Table {
    name: "profiles",
    columns: &[
        "user_id",
        "display_name",
        "first_seen_ms",
        "last_seen_ms",
        "message_count",
    ],
};
pub(super) const MEMORIES: Table = Table {
    name: "memories",
    columns: &[
        "character",
        "user_id",
        "scope",
        "kind",
        "grp",
        "chunk",
        "text",
        "importance",
        "created_at_ms",
        "vector",
    ],
};
pub(super) const FACTS: Table = Table {
    name: "facts",
    columns: &[
        "user_id",
        "subject",
        "predicate",
        "object",
        "confidence",
        "source",
        "valid_from_ms",
        "valid_to_ms",
    ],
};
