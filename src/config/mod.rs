//! Layered configuration: built-in defaults < `--config` file < `WHISPER__SECTION__KEY`
//! environment variables < command-line flags.
//!
//! `config/default.toml` is compiled in, so it is both the documentation of every key and the
//! complete set of defaults: the structs below have no serde defaults of their own and every
//! section rejects unknown keys, so a typo fails loudly instead of being ignored.

pub mod characters;
mod error;

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

pub use crate::secret::{Secret, SecretUrl};
pub use error::{ConfigError, extract_toml};

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
    pub storage: StorageSection,
    pub characters: CharactersSection,
    pub logging: LoggingSection,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    pub shards: u32,
    pub virtual_nodes: u32,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub max_conversations_per_shard: usize,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionSection {
    pub max_restarts: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolsSection {
    pub history: usize,
    pub postgres: usize,
    pub embedder: usize,
    pub memory: usize,
    pub graph: usize,
    pub llm_concurrency: usize,
    pub llm_queue: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSection {
    pub base_url: SecretUrl,
    pub api_key: Secret,
    pub model: String,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    pub max_retries: u32,
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    pub local: LocalLlmSection,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalLlmSection {
    pub server: PathBuf,
    pub model: PathBuf,
    pub threads: u32,
    pub context_size: u32,
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextSection {
    pub history_turns: usize,
    pub token_budget: usize,
    #[serde(with = "humantime_serde")]
    pub history_deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub profile_deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub classifier_deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub memory_deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub facts_deadline: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySection {
    pub top_k: usize,
    pub min_similarity: f32,
    #[serde(with = "humantime_serde")]
    pub recency_half_life: Duration,
    pub recency_weight: f32,
    pub importance_weight: f32,
    pub guild_memories_in_dm: bool,
    pub chunk_words: usize,
    pub cached_users: usize,
    pub summarise_every: u64,
    pub idle_summary_min_turns: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactsSection {
    pub extract: bool,
    pub model: String,
    pub min_confidence: f32,
    pub hops: usize,
    pub single_valued: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Messages one user may send per `window` (0: no limit).
    pub messages_per_window: u64,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Where `/metrics` and `/healthz` listen, e.g. "127.0.0.1:9464"; empty: off.
    pub address: String,
}

/// Who may talk to the bots in direct messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmPolicy {
    Off,
    Allowlist,
    Open,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordSection {
    /// Character id to bot token: one Discord bot per character, all in this process.
    pub tokens: std::collections::BTreeMap<String, Secret>,
    /// Where the Discord API is; empty for discord.com (tests point it at an emulator).
    pub api_url: String,
    /// serenity's rate limiter (always on against discord.com; it ignores `api_url`).
    pub ratelimiter: bool,
    pub ignore_bots: bool,
    pub dm_policy: DmPolicy,
    pub dm_allowlist: Vec<u64>,
    pub open_channels: Vec<u64>,
    pub allowed_channels: Vec<u64>,
    pub blocked_channels: Vec<u64>,
    pub allowed_users: Vec<u64>,
    pub blocked_users: Vec<u64>,
    pub allowed_roles: Vec<u64>,
    pub blocked_roles: Vec<u64>,
    pub admins: Vec<u64>,
    pub max_attachment_bytes: u64,
    /// Writes (sends and edits) allowed per channel in any `channel_window`.
    pub channel_writes: usize,
    #[serde(with = "humantime_serde")]
    pub channel_window: Duration,
    /// How long a channel that refused the bot (403) is skipped, unless its permissions change.
    #[serde(with = "humantime_serde")]
    pub forbidden_retry: Duration,
    pub channel_context: ChannelContextSection,
}

/// What a character sees of a guild channel's recent conversation.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelContextSection {
    pub enabled: bool,
    pub max_messages: usize,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    pub max_tokens: usize,
    pub include_bots: bool,
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsSection {
    pub enabled: bool,
    pub max_rounds: u32,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub summaries: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsSection {
    pub workers: usize,
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSection {
    pub enabled: bool,
    pub intents: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingSection {
    pub enabled: bool,
    pub onnxruntime: PathBuf,
    pub model_dir: PathBuf,
    pub max_length: usize,
    pub threads: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamingSection {
    #[serde(with = "humantime_serde")]
    pub edit_interval: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    pub data_dir: PathBuf,
    pub history: HistoryBackend,
    pub postgres_url: SecretUrl,
    pub jobs: JobsBackend,
    pub memory: MemoryBackend,
    /// Qdrant's gRPC URL (port 6334).
    pub qdrant_url: SecretUrl,
    /// Collections are `<prefix>_<character>`.
    pub qdrant_prefix: String,
    pub facts: FactsBackend,
    pub neo4j_uri: SecretUrl,
    pub neo4j_user: String,
    pub neo4j_password: Secret,
    /// Empty: the server's default database.
    pub neo4j_database: String,
    pub redis_url: SecretUrl,
    /// Namespace of every Redis key (several bots can share a server).
    pub redis_prefix: String,
    /// Cache profiles and keep rate limits in Redis (shared by every bot process).
    pub redis_cache: bool,
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// Where vector memories live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryBackend {
    Sqlite,
    Qdrant,
}

/// Where the fact graph lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FactsBackend {
    Sqlite,
    Neo4j,
}

/// Where the durable job queue lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobsBackend {
    Sqlite,
    Redis,
}

/// Where conversation history and profiles live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryBackend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CharactersSection {
    pub dir: PathBuf,
    pub default: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
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
pub fn load(overrides: &Overrides) -> Result<Loaded, ConfigError> {
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
        ("pools.llm_concurrency", s.pools.llm_concurrency as u64),
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

impl Settings {
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
