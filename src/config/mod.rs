//! Layered configuration: built-in defaults < `--config` file < `WHISPER__SECTION__KEY`
//! environment variables < command-line flags.
//!
//! `config/default.toml` is compiled in, so it is both the documentation of every key and the
//! complete set of defaults: the structs below have no serde defaults of their own and every
//! section rejects unknown keys, so a typo fails loudly instead of being ignored.

pub mod characters;
mod error;
mod sections;

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

pub use crate::secret::{Secret, SecretUrl};
pub use error::{ConfigError, extract_toml};
pub use sections::*;

/// The shipped defaults, compiled in.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Where `--config` points when not given (used only if the file exists).
pub const DEFAULT_CONFIG_PATH: &str = "config/default.toml";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub runtime: RuntimeSection,
    pub supervision: SupervisionSection,
    pub pools: PoolsSection,
    pub llm: LlmSection,
    pub context: ContextSection,
    pub embedding: EmbeddingSection,
    pub classifier: ClassifierSection,
    pub memory: MemorySection,
    pub facts: FactsSection,
    pub tools: ToolsSection,
    pub jobs: JobsSection,
    pub streaming: StreamingSection,
    pub discord: DiscordSection,
    pub limits: LimitsSection,
    pub metrics: MetricsSection,
    pub cluster: ClusterSection,
    pub storage: StorageSection,
    pub characters: CharactersSection,
    pub logging: LoggingSection,
}

/// Command-line overrides, the top layer.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--config`: replaces the default `config/default.toml` lookup.
    pub config_file: Option<PathBuf>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// Leave `WHISPER__*` variables out (tests must not depend on the developer's shell).
    pub ignore_environment: bool,
}

/// A loaded configuration plus the layers it came from, for error messages.
pub struct Loaded {
    pub settings: Settings,
    figment: Figment,
}

impl Loaded {
    /// Which layer set `key`, for messages: a file path, an environment variable or a flag.
    pub fn source_of(&self, key: &str) -> String {
        error::describe_source(&self.figment, key)
    }
}

/// Loads and validates the configuration.
fn load_layers(overrides: &Overrides) -> Result<Loaded, ConfigError> {
    let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
    match &overrides.config_file {
        Some(path) => {
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path.clone()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        None if Path::new(DEFAULT_CONFIG_PATH).is_file() => {
            figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_PATH));
        }
        None => {}
    }
    if !overrides.ignore_environment {
        figment = figment.merge(Env::prefixed("WHISPER__").split("__"));
    }
    if let Some(dir) = &overrides.data_dir {
        figment = figment.merge(("storage.data_dir", dir));
    }
    let settings: Settings = figment
        .extract()
        .map_err(|e| ConfigError::from_figment(&figment, e))?;
    let loaded = Loaded { settings, figment };
    validate(&loaded)?;
    Ok(loaded)
}

/// Loads and validates the configuration, and checks this build can serve it: a build without
/// the `server` feature names the key that asks for a server and how to get one.
pub fn load(overrides: &Overrides) -> Result<Loaded, ConfigError> {
    let loaded = load_layers(overrides)?;
    refuse_absent_backends(&loaded, cfg!(feature = "server"))?;
    Ok(loaded)
}

fn refuse_absent_backends(loaded: &Loaded, built_with_server: bool) -> Result<(), ConfigError> {
    match loaded.settings.server_keys().first() {
        Some(key) if !built_with_server => Err(loaded.invalid(
            key,
            "an embedded backend: this build has no server backends (`./bot.sh run` builds them \
             in when the configuration asks for one; or `cargo build --release --features server`)",
        )),
        _ => Ok(()),
    }
}

/// The cargo features the configuration needs (`server`, or none), whatever this build has:
/// `./bot.sh run` asks a build without them before it runs it.
pub fn needed_features(overrides: &Overrides) -> Result<Vec<&'static str>, ConfigError> {
    let loaded = load_layers(overrides)?;
    Ok(if loaded.settings.server_keys().is_empty() {
        Vec::new()
    } else {
        vec!["server"]
    })
}

fn validate(loaded: &Loaded) -> Result<(), ConfigError> {
    let s = &loaded.settings;
    let positive: [(&str, u64); 21] = [
        ("discord.channel_writes", s.discord.channel_writes as u64),
        ("tools.summaries", s.tools.summaries as u64),
        ("runtime.shards", s.runtime.shards as u64),
        ("runtime.virtual_nodes", s.runtime.virtual_nodes as u64),
        (
            "runtime.max_conversations_per_shard",
            s.runtime.max_conversations_per_shard as u64,
        ),
        ("pools.history", s.pools.history as u64),
        ("pools.postgres", s.pools.postgres as u64),
        ("pools.embedder", s.pools.embedder as u64),
        ("pools.memory", s.pools.memory as u64),
        ("pools.graph", s.pools.graph as u64),
        ("memory.top_k", s.memory.top_k as u64),
        ("memory.chunk_words", s.memory.chunk_words as u64),
        ("memory.cached_users", s.memory.cached_users as u64),
        ("jobs.workers", s.jobs.workers as u64),
        ("jobs.max_attempts", s.jobs.max_attempts as u64),
        ("embedding.max_length", s.embedding.max_length as u64),
        ("embedding.threads", s.embedding.threads as u64),
        ("pools.llm_concurrency", s.llm_concurrency() as u64),
        ("context.history_turns", s.context.history_turns as u64),
        ("context.token_budget", s.context.token_budget as u64),
        ("llm.local.threads", s.llm.local.threads as u64),
    ];
    for (key, value) in positive {
        if value == 0 {
            return Err(loaded.invalid(key, "a number greater than zero"));
        }
    }
    let durations = [
        ("runtime.idle_timeout", s.runtime.idle_timeout),
        ("runtime.status_interval", s.runtime.status_interval),
        ("streaming.edit_interval", s.streaming.edit_interval),
        ("llm.request_timeout", s.llm.request_timeout),
        ("llm.stream_idle_timeout", s.llm.stream_idle_timeout),
        ("context.history_deadline", s.context.history_deadline),
        ("context.profile_deadline", s.context.profile_deadline),
        ("context.classifier_deadline", s.context.classifier_deadline),
        ("context.memory_deadline", s.context.memory_deadline),
        ("memory.recency_half_life", s.memory.recency_half_life),
        ("context.facts_deadline", s.context.facts_deadline),
        ("jobs.lease", s.jobs.lease),
        ("tools.timeout", s.tools.timeout),
        ("limits.window", s.limits.window),
        ("storage.cache_ttl", s.storage.cache_ttl),
        ("discord.channel_window", s.discord.channel_window),
        ("discord.forbidden_retry", s.discord.forbidden_retry),
        (
            "discord.channel_context.deadline",
            s.discord.channel_context.deadline,
        ),
        ("storage.connect_timeout", s.storage.connect_timeout),
        ("jobs.poll_interval", s.jobs.poll_interval),
    ];
    for (key, value) in durations {
        if value.is_zero() {
            return Err(loaded.invalid(key, "a duration greater than zero, like \"500ms\""));
        }
    }
    for (key, value) in [
        ("memory.min_similarity", s.memory.min_similarity),
        ("memory.recency_weight", s.memory.recency_weight),
        ("memory.importance_weight", s.memory.importance_weight),
        ("facts.min_confidence", s.facts.min_confidence),
    ] {
        if !(0.0..=1.0).contains(&value) {
            return Err(loaded.invalid(key, "a number from 0 to 1"));
        }
    }
    cluster_rules(loaded)?;
    if !(s.memory.fusion_k >= 0.0 && s.memory.fusion_k <= 1000.0) {
        return Err(loaded.invalid("memory.fusion_k", "a number from 0 to 1000"));
    }
    if s.runtime.shards > 1024 {
        return Err(loaded.invalid("runtime.shards", "at most 1024 (each shard is a thread)"));
    }
    let url = s.llm.base_url.expose();
    if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
        return Err(loaded.invalid(
            "llm.base_url",
            "an http:// or https:// URL, or empty for the local server",
        ));
    }
    if !matches!(s.logging.level.trim(), "")
        && tracing_subscriber::EnvFilter::try_new(&s.logging.level).is_err()
    {
        return Err(loaded.invalid(
            "logging.level",
            "a tracing filter such as \"info\" or \"whisperengine=debug,info\"",
        ));
    }
    Ok(())
}

impl Loaded {
    fn invalid(&self, key: &str, expected: &str) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_owned(),
            source_name: self.source_of(key),
            expected: expected.to_owned(),
        }
    }
}

/// Model requests at once for the bundled local server: its parallel slots share one core's
/// worth of generation, and more slots only split it.
pub const LOCAL_LLM_CONCURRENCY: usize = 2;
/// Model requests at once for a configured endpoint: a hosted API or a GPU server serves many
/// streams; 2 would queue a burst of mentions for seconds behind two replies.
pub const ENDPOINT_LLM_CONCURRENCY: usize = 32;

impl Settings {
    /// The keys whose values need the server backends (the `server` feature), in the order an
    /// operator would read them. A cluster role is not among them: `validate` already requires
    /// every store of a cluster member to be a server one.
    pub fn server_keys(&self) -> Vec<&'static str> {
        let s = &self.storage;
        let mut keys = Vec::new();
        if s.history != HistoryBackend::Sqlite {
            keys.push("storage.history");
        }
        if s.memory != MemoryBackend::Sqlite {
            keys.push("storage.memory");
        }
        if s.facts != FactsBackend::Sqlite {
            keys.push("storage.facts");
        }
        if s.jobs != JobsBackend::Sqlite {
            keys.push("storage.jobs");
        }
        if s.redis_cache {
            keys.push("storage.redis_cache");
        }
        keys
    }

    /// Turns a cluster worker runs at once: what its model admission takes, less the slots
    /// background jobs (summaries, fact extraction) may hold.
    pub fn worker_turns(&self) -> usize {
        (self.llm_concurrency() + self.pools.llm_queue)
            .saturating_sub(self.jobs.workers)
            .max(1)
    }

    /// `pools.llm_concurrency`, with "auto" resolved for the endpoint in use.
    pub fn llm_concurrency(&self) -> usize {
        match self.pools.llm_concurrency {
            AutoCount::Fixed(n) => n as usize,
            AutoCount::Auto if self.uses_local_llm() => LOCAL_LLM_CONCURRENCY,
            AutoCount::Auto => ENDPOINT_LLM_CONCURRENCY,
        }
    }

    /// The effective configuration as TOML; every secret shows as `<redacted>` (or with its
    /// password masked), so it is safe to print.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("settings always serialise")
    }

    /// The ids of the characters in `characters.dir` (the stores keyed by character, e.g.
    /// Qdrant's collections, own exactly these).
    pub fn character_ids(&self) -> Result<Vec<String>, ConfigError> {
        Ok(characters::load_dir(&self.characters.dir)?
            .ids()
            .map(str::to_owned)
            .collect())
    }

    /// Whether the embedded local model server should be started.
    pub fn uses_local_llm(&self) -> bool {
        self.llm.base_url.is_empty()
    }
}

/// The provisioning cache (`$WHISPER_CACHE`, default `~/.cache/whisperengine`), shared with bot.sh.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WHISPER_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("whisperengine")
}

/// Cluster mode runs across processes: every store must be a server every process reaches
/// (the embedded SQLite belongs to one process), and the partition count must be sane.
fn cluster_rules(loaded: &Loaded) -> Result<(), ConfigError> {
    let s = &loaded.settings;
    let c = &s.cluster;
    if !(1..=65_536).contains(&c.partitions) {
        return Err(loaded.invalid("cluster.partitions", "a number from 1 to 65536"));
    }
    if c.standby > 8 {
        return Err(loaded.invalid("cluster.standby", "at most 8"));
    }
    if c.prefetch == 0 {
        return Err(loaded.invalid("cluster.prefetch", "at least 1"));
    }
    let d = &s.discord;
    match (d.shard_total, d.shard_last) {
        (AutoCount::Fixed(0), _) => {
            return Err(loaded.invalid("discord.shard_total", "at least 1, or \"auto\""));
        }
        (AutoCount::Fixed(total), _) if d.shard_first >= total => {
            return Err(loaded.invalid(
                "discord.shard_first",
                &format!("below discord.shard_total ({total})"),
            ));
        }
        (AutoCount::Fixed(total), AutoCount::Fixed(last)) if last >= total => {
            return Err(loaded.invalid(
                "discord.shard_last",
                &format!("below discord.shard_total ({total}), or \"auto\""),
            ));
        }
        (AutoCount::Auto, _) if d.shard_first != 0 => {
            return Err(loaded.invalid(
                "discord.shard_first",
                "0 while discord.shard_total is \"auto\" (a range needs a fixed total)",
            ));
        }
        (AutoCount::Auto, AutoCount::Fixed(_)) => {
            return Err(loaded.invalid(
                "discord.shard_last",
                "\"auto\" while discord.shard_total is \"auto\" (a range needs a fixed total)",
            ));
        }
        (_, AutoCount::Fixed(last)) if last < d.shard_first => {
            return Err(loaded.invalid("discord.shard_last", "at least discord.shard_first"));
        }
        _ => {}
    }
    if c.role == ClusterRole::All {
        return Ok(());
    }
    let role = format!("{:?}", c.role).to_lowercase();
    let embedded = [
        (
            "storage.history",
            s.storage.history == HistoryBackend::Sqlite,
            "\"postgres\"",
        ),
        (
            "storage.memory",
            s.storage.memory == MemoryBackend::Sqlite,
            "\"postgres\" or \"qdrant\"",
        ),
        (
            "storage.facts",
            s.storage.facts == FactsBackend::Sqlite,
            "\"neo4j\"",
        ),
        (
            "storage.jobs",
            s.storage.jobs == JobsBackend::Sqlite,
            "\"redis\"",
        ),
    ];
    for (key, is_embedded, servers) in embedded {
        if is_embedded {
            return Err(loaded.invalid(
                key,
                &format!(
                    "a server store ({servers}): cluster.role = \"{role}\" runs across processes, and the embedded SQLite belongs to one"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_file(toml: &str) -> (tempfile::NamedTempFile, Overrides) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), toml).unwrap();
        let overrides = Overrides {
            config_file: Some(file.path().to_owned()),
            data_dir: None,
            ignore_environment: true,
        };
        (file, overrides)
    }

    #[test]
    fn the_embedded_default_needs_no_feature() {
        let (_file, overrides) = from_file("");
        assert!(needed_features(&overrides).unwrap().is_empty());
        let loaded = load_layers(&overrides).unwrap();
        assert!(refuse_absent_backends(&loaded, false).is_ok());
    }

    #[test]
    fn each_server_key_needs_the_server_feature_and_a_build_without_it_names_the_key_and_file() {
        for (toml, key) in [
            ("[storage]\nhistory = \"postgres\"", "storage.history"),
            ("[storage]\nmemory = \"qdrant\"", "storage.memory"),
            ("[storage]\nmemory = \"postgres\"", "storage.memory"),
            ("[storage]\nfacts = \"neo4j\"", "storage.facts"),
            ("[storage]\njobs = \"redis\"", "storage.jobs"),
            ("[storage]\nredis_cache = true", "storage.redis_cache"),
            // A cluster role needs every store on a server (checked by `validate`), so the
            // first key named is a store's.
            (
                "[cluster]\nrole = \"worker\"\n[storage]\nhistory = \"postgres\"\n\
                 memory = \"postgres\"\nfacts = \"neo4j\"\njobs = \"redis\"",
                "storage.history",
            ),
        ] {
            let (file, overrides) = from_file(toml);
            assert_eq!(needed_features(&overrides).unwrap(), ["server"], "{toml}");
            let loaded = load_layers(&overrides).unwrap();
            assert!(refuse_absent_backends(&loaded, true).is_ok());
            let error = refuse_absent_backends(&loaded, false)
                .unwrap_err()
                .to_string();
            assert!(error.contains(&format!("key `{key}`")), "{error}");
            assert!(
                error.contains(&file.path().display().to_string()),
                "{error}"
            );
            assert!(error.contains("./bot.sh run"), "{error}");
        }
    }
}
