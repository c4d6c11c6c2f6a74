//! Store adapters. The embedded default keeps everything in one SQLite database in the data
//! directory; server-mode adapters implement the same `whisper_actors::ports` traits.

pub mod neo4j_facts;
pub mod postgres;
pub mod qdrant_memory;
pub mod redis_cache;
pub mod redis_jobs;
pub mod server;
pub mod sqlite;
pub mod sqlite_facts;
pub mod sqlite_jobs;
pub mod sqlite_memory;
