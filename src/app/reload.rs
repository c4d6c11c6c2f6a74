//! Live reload: re-read every configuration layer and the character files, validate them
//! completely, and work out what changed — which of it the running bot applies at once and
//! which needs a restart. Applying is [`super::App::reload`]'s; nothing here touches the
//! running bot, so a file with an error changes nothing.

use std::collections::BTreeMap;

use serde::Serialize;
use whisper_actors::CharacterSet;

use crate::config::{self, Overrides, Settings};

/// Keys (or key prefixes, ending in `.`) the running bot applies without a restart.
const LIVE: &[&str] = &[
    "runtime.shards",
    "runtime.idle_timeout",
    "runtime.max_conversations_per_shard",
    "pools.memory",
    "pools.graph",
    "pools.classifier",
    "pools.llm_concurrency",
    "pools.llm_queue",
    "pools.history",
    "pools.postgres",
    "pools.embedder",
    "jobs.workers",
    "streaming.",
    "context.",
    "limits.",
    "classifier.intents",
    "discord.ignore_bots",
    "discord.dm_policy",
    "discord.dm_allowlist",
    "discord.open_channels",
    "discord.allowed_channels",
    "discord.blocked_channels",
    "discord.allowed_users",
    "discord.blocked_users",
    "discord.allowed_roles",
    "discord.blocked_roles",
    "discord.admins",
    "memory.top_k",
    "memory.min_similarity",
    "memory.recency_half_life",
    "memory.recency_weight",
    "memory.importance_weight",
    "memory.fusion_k",
    "facts.hops",
    "facts.token_budget",
];

/// Whether `key` changes live.
pub fn is_live(key: &str) -> bool {
    LIVE.iter().any(|live| match live.strip_suffix('.') {
        Some(prefix) => key.starts_with(prefix) && key[prefix.len()..].starts_with('.'),
        None => key == *live,
    })
}

/// One changed setting, as the operator reads it (secrets stay redacted).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    pub key: String,
    pub from: String,
    pub to: String,
    /// Applied at once; false: takes effect at the next restart.
    pub live: bool,
}

/// What a reload found: the new configuration and how it differs from the running one.
pub struct ReloadPlan {
    pub settings: Settings,
    pub characters: CharacterSet,
    pub changes: Vec<Change>,
}

impl ReloadPlan {
    pub fn live(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.live)
    }

    pub fn needs_restart(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| !c.live)
    }
}

/// Loads the configuration layers `source` names and the character files, validates them
/// the way startup does, and diffs them against what runs now. Any error (naming the file,
/// the key and what was expected) means nothing may change.
pub fn plan(
    source: &Overrides,
    running: &Settings,
    running_characters: &CharacterSet,
) -> anyhow::Result<ReloadPlan> {
    let settings = config::load(source)?.settings;
    let characters = config::characters::load_dir(&settings.characters.dir)?;
    if characters.get(&settings.characters.default).is_none() {
        anyhow::bail!(
            "key `characters.default`: no character {:?} in {} (have: {})",
            settings.characters.default,
            settings.characters.dir.display(),
            characters.ids().collect::<Vec<_>>().join(", ")
        );
    }
    let mut changes = diff(running, &settings);
    changes.extend(character_changes(running_characters, &characters));
    Ok(ReloadPlan {
        settings,
        characters,
        changes,
    })
}

/// Every setting whose value differs, by dotted key. Secrets compare by their exposed value
/// (a new token is a change) but show redacted.
pub fn diff(old: &Settings, new: &Settings) -> Vec<Change> {
    let (a, b) = (flatten(old), flatten(new));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let missing = String::from("(unset)");
    let mut changes: Vec<Change> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| Change {
            key: k.clone(),
            from: a.get(k).unwrap_or(&missing).clone(),
            to: b.get(k).unwrap_or(&missing).clone(),
            live: is_live(k),
        })
        .collect();
    for (key, changed) in secret_changes(old, new) {
        if changed && !changes.iter().any(|c| c.key == key) {
            changes.push(Change {
                key,
                from: "***".into(),
                to: "*** (changed)".into(),
                live: false,
            });
        }
    }
    changes
}

/// The secrets whose redacted form hides a change.
fn secret_changes(old: &Settings, new: &Settings) -> Vec<(String, bool)> {
    let mut out = vec![
        (
            "llm.api_key".to_owned(),
            old.llm.api_key.expose() != new.llm.api_key.expose(),
        ),
        (
            "llm.base_url".to_owned(),
            old.llm.base_url.expose() != new.llm.base_url.expose(),
        ),
        (
            "storage.postgres_url".to_owned(),
            old.storage.postgres_url.expose() != new.storage.postgres_url.expose(),
        ),
        (
            "storage.redis_url".to_owned(),
            old.storage.redis_url.expose() != new.storage.redis_url.expose(),
        ),
        (
            "storage.neo4j_password".to_owned(),
            old.storage.neo4j_password.expose() != new.storage.neo4j_password.expose(),
        ),
    ];
    let names: std::collections::BTreeSet<&String> = old
        .discord
        .tokens
        .keys()
        .chain(new.discord.tokens.keys())
        .collect();
    for name in names {
        let (a, b) = (old.discord.tokens.get(name), new.discord.tokens.get(name));
        out.push((
            format!("discord.tokens.{name}"),
            a.map(|s| s.expose()) != b.map(|s| s.expose()),
        ));
    }
    out
}

fn flatten(settings: &Settings) -> BTreeMap<String, String> {
    let value = toml::Value::try_from(settings).expect("settings always serialise");
    let mut out = BTreeMap::new();
    walk("", &value, &mut out);
    out
}

fn walk(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

/// What a reload did, as `whisperengine reload` prints it and `<data_dir>/reload.json` keeps it.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ReloadOutcome {
    /// Counts every reload this process was asked for, applied or not.
    pub attempt: u64,
    /// The configuration generation in force afterwards.
    pub generation: u64,
    pub at_ms: u64,
    pub applied: bool,
    /// Why nothing changed: the file, the key and what was expected.
    pub error: Option<String>,
    pub changes: Vec<OutcomeChange>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct OutcomeChange {
    pub key: String,
    pub from: String,
    pub to: String,
    pub live: bool,
}

impl ReloadOutcome {
    pub fn rejected(attempt: u64, generation: u64, error: &anyhow::Error) -> Self {
        Self {
            attempt,
            generation,
            at_ms: whisper_actors::clock::unix_ms() as u64,
            applied: false,
            error: Some(format!("{error:#}")),
            changes: Vec::new(),
        }
    }

    pub fn applied(attempt: u64, generation: u64, changes: Vec<Change>) -> Self {
        Self {
            attempt,
            generation,
            at_ms: whisper_actors::clock::unix_ms() as u64,
            applied: true,
            error: None,
            changes: changes
                .into_iter()
                .map(|c| OutcomeChange {
                    key: c.key,
                    from: c.from,
                    to: c.to,
                    live: c.live,
                })
                .collect(),
        }
    }

    pub fn path(data_dir: &std::path::Path) -> std::path::PathBuf {
        data_dir.join("reload.json")
    }

    /// Writes the outcome where `whisperengine reload` waits for it (atomically).
    pub fn write(&self, data_dir: &std::path::Path) {
        let path = Self::path(data_dir);
        let tmp = path.with_extension("json.tmp");
        let written = std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("serialises"))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(error = %e, path = %path.display(), "cannot write the reload outcome");
        }
    }

    pub fn read(data_dir: &std::path::Path) -> Option<Self> {
        let text = std::fs::read_to_string(Self::path(data_dir)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

impl std::fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(error) = &self.error {
            return write!(f, "reload rejected, nothing changed: {error}");
        }
        if self.changes.is_empty() {
            return write!(
                f,
                "reload: no changes (configuration generation {})",
                self.generation
            );
        }
        writeln!(
            f,
            "reload applied: configuration generation {}",
            self.generation
        )?;
        for c in &self.changes {
            let effect = if c.live { "applied" } else { "needs a restart" };
            writeln!(f, "  {}: {} -> {} ({effect})", c.key, c.from, c.to)?;
        }
        Ok(())
    }
}

/// Characters added, removed or edited, as `characters.<id>` changes.
fn character_changes(old: &CharacterSet, new: &CharacterSet) -> Vec<Change> {
    let mut ids: Vec<&str> = old.ids().chain(new.ids()).collect();
    ids.sort();
    ids.dedup();
    ids.into_iter()
        .filter_map(|id| {
            let (a, b) = (old.get(id), new.get(id));
            let describe = |c: Option<&std::sync::Arc<whisper_actors::Character>>| match c {
                Some(c) => format!("{} ({} chars of persona)", c.name, c.system_prompt.len()),
                None => "(none)".to_owned(),
            };
            (a.map(|c| &**c) != b.map(|c| &**c)).then(|| Change {
                key: format!("characters.{id}"),
                from: describe(a),
                to: describe(b),
                // Applied at once: each conversation reads its persona at its next message.
                live: true,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Settings {
        config::load(&Overrides {
            ignore_environment: true,
            ..Overrides::default()
        })
        .unwrap()
        .settings
    }

    #[test]
    fn a_diff_names_each_key_and_whether_it_is_live() {
        let old = defaults();
        let mut new = old.clone();
        new.runtime.shards = old.runtime.shards + 3;
        new.storage.data_dir = "/elsewhere".into();
        let changes = diff(&old, &new);
        let keys: Vec<(&str, bool)> = changes.iter().map(|c| (c.key.as_str(), c.live)).collect();
        assert_eq!(
            keys,
            [("runtime.shards", true), ("storage.data_dir", false)]
        );
        assert_eq!(changes[0].to, (old.runtime.shards + 3).to_string());
    }

    #[test]
    fn a_changed_secret_is_a_change_but_stays_hidden() {
        let old = defaults();
        let mut new = old.clone();
        new.llm.api_key = "sk-new-secret".into();
        let changes = diff(&old, &new);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].key, "llm.api_key");
        assert!(!format!("{changes:?}").contains("sk-new-secret"));
    }
}
