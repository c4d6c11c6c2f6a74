//! The actor core of whisperengine.
//!
//! This crate holds everything that decides *how* a message becomes a reply: the message types,
//! the consistent-hash [`router`], the [`shard`]s that own per-user [`conversation`] actors, the
//! [`llm`] actor with its admission queue, [`supervision`] policy, and the [`ports`] (traits) that
//! stores and model backends implement. It deliberately depends on no database, HTTP or Discord
//! crate, so the whole pipeline can be exercised with any backend, and so the application crate
//! is the only place that knows which servers exist.

pub mod backoff;
pub mod character;
pub mod classifier;
pub mod clock;
pub mod conversation;
pub mod graph;
pub mod jobs;
pub mod key;
pub mod limits;
pub mod live;
pub mod llm;
pub mod memory;
pub mod messages;
pub mod pool;
pub mod ports;
pub mod routing;
pub mod runtime;
pub mod shutdown;
pub mod sink;
pub mod stats;
pub mod supervision;
pub mod text;
pub mod tools;
pub mod vector;

pub use character::{Character, CharacterSet, ModelParams};
pub use key::{ConversationKey, Scope};
pub use messages::{Image, ReplyStatus, ReplyUpdate, Timings, UserMessage};
pub use routing::router::{RouteError, ShardRouter};
pub use runtime::{Runtime, RuntimeParts, RuntimeSettings};
