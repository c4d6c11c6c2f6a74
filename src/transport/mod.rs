//! Transports: where messages come from and replies go. Each hands `UserMessage`s to the
//! `ShardRouter` and consumes `ReplyUpdate`s.

pub mod console;
