//! Configuration errors that name the file (or variable), the key and what was expected.

use std::path::PathBuf;

use figment::Figment;
use figment::Source;
use figment::error::Kind;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} does not exist", .0.display())]
    MissingFile(PathBuf),
    /// A value that does not parse, or a key that does not exist.
    #[error("{source_name}: key `{key}`: {problem}")]
    Key {
        key: String,
        source_name: String,
        problem: String,
    },
    /// A value that parses but is out of range.
    #[error("{source_name}: key `{key}`: expected {expected}")]
    Invalid {
        key: String,
        source_name: String,
        expected: String,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
    /// A problem in a standalone TOML file (intents...).
    #[error("{}: {problem}", path.display())]
    File { path: PathBuf, problem: String },
    #[error("character file {}: {problem}", path.display())]
    Character { path: PathBuf, problem: String },
    #[error("characters directory {}: {problem}", path.display())]
    CharacterDir { path: PathBuf, problem: String },
}

impl ConfigError {
    pub fn from_figment(figment: &Figment, error: figment::Error) -> ConfigError {
        let mut errors: Vec<ConfigError> = error.into_iter().map(|e| one(figment, e)).collect();
        if errors.len() == 1 {
            errors.remove(0)
        } else {
            ConfigError::Several(errors)
        }
    }
}

fn one(figment: &Figment, error: figment::Error) -> ConfigError {
    let mut path = error.path.clone();
    let problem = match &error.kind {
        Kind::UnknownField(field, expected) => {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            format!("unknown key; expected one of: {}", expected.join(", "))
        }
        Kind::MissingField(field) => {
            if path.last().map(String::as_str) != Some(field.as_ref()) {
                path.push(field.to_string());
            }
            "missing".to_owned()
        }
        Kind::InvalidType(actual, expected) => format!("expected {expected}, found {actual}"),
        Kind::InvalidValue(actual, expected) => format!("expected {expected}, found {actual}"),
        Kind::UnknownVariant(found, expected) => {
            format!(
                "unknown value {found:?}; expected one of: {}",
                expected.join(", ")
            )
        }
        other => other.to_string(),
    };
    let key = path.join(".");
    let mut source_name = describe_source(figment, &key);
    if source_name == UNKNOWN_SOURCE
        && let Some(md) = &error.metadata
    {
        source_name = describe(md, &path);
    }
    ConfigError::Key {
        key,
        source_name,
        problem,
    }
}

const UNKNOWN_SOURCE: &str = "configuration";

/// Which layer set `key`: a file path, an environment variable, a flag or the defaults.
pub(crate) fn describe_source(figment: &Figment, key: &str) -> String {
    match figment.find_metadata(key) {
        Some(md) => describe(md, &key.split('.').collect::<Vec<_>>()),
        None => UNKNOWN_SOURCE.to_owned(),
    }
}

fn describe<K: AsRef<str>>(md: &figment::Metadata, path: &[K]) -> String {
    match &md.source {
        Some(Source::File(file)) => file.display().to_string(),
        Some(Source::Code(_)) => "command-line flag".to_owned(),
        Some(Source::Custom(custom)) => custom.clone(),
        Some(other) => other.to_string(),
        None if md.name.contains("environment") => {
            let parts: Vec<String> = path.iter().map(|k| k.as_ref().to_uppercase()).collect();
            format!("environment variable WHISPER__{}", parts.join("__"))
        }
        None => "built-in defaults (config/default.toml)".to_owned(),
    }
}

/// Reads a standalone TOML file into `T`; the error text names the key and the problem (the
/// caller adds which kind of file it is).
pub fn extract_toml<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, String> {
    use figment::providers::{Format, Toml};
    let figment = Figment::from(Toml::file_exact(path));
    figment
        .extract()
        .map_err(|e| match ConfigError::from_figment(&figment, e) {
            ConfigError::Key { key, problem, .. } => format!("key `{key}`: {problem}"),
            other => other.to_string(),
        })
}
