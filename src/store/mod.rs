//! Store adapters, one folder per backend. The embedded default keeps everything in one SQLite
//! database in the data directory; server-mode adapters implement the same
//! `whisper_actors` store traits.

#[cfg(feature = "server")]
pub mod neo4j;
#[cfg(feature = "server")]
pub mod postgres;
#[cfg(feature = "server")]
pub mod qdrant;
#[cfg(feature = "server")]
pub mod redis;
#[cfg(feature = "server")]
pub mod server;
pub mod sqlite;
