//! Store adapters, one folder per backend. The embedded default keeps everything in one SQLite
//! database in the data directory; server-mode adapters implement the same
//! `whisper_actors` store traits.

/// A server backend asked for in a build without them (the `server` feature). `config::load`
/// refuses such a configuration first, naming the key and the file; this keeps any other
/// caller from getting anything but an error.
#[cfg(not(feature = "server"))]
pub(crate) fn not_built(key: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{key} needs the server backends, which this build leaves out (build with `--features server`)"
    )
}

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
