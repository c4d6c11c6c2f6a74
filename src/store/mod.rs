//! Store adapters, one folder per backend. The embedded default keeps everything in one SQLite
//! database in the data directory; server-mode adapters implement the same
//! `whisper_actors` store traits.

pub mod neo4j;
pub mod postgres;
pub mod qdrant;
pub mod redis;
pub mod server;
pub mod sqlite;
