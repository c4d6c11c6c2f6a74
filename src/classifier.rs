//! Loading the fast-track intents (`config/intents.toml`) and their example vectors.
//!
//! Example vectors are computed with the same embedder as messages and cached in
//! `<data_dir>/cache/intents-<hash>.f32`, keyed by the model and a hash of every phrase, so a
//! restart costs a file read and an edit to the phrases simply produces a new cache file.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tracing::{info, warn};
use whisper_actors::classifier::{Intent, IntentSet, Route};
use whisper_actors::ports::{Embedder, Embedding};
use whisper_actors::vector::normalize;
use xxhash_rust::xxh3::xxh3_64;

use crate::config::{ConfigError, extract_toml};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntentsFile {
    guards: GuardsFile,
    intent: Vec<IntentFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardsFile {
    full_if_contains: Vec<String>,
    max_fast_words: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntentFile {
    name: String,
    route: Route,
    threshold: f32,
    examples: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IntentsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("embedding the intent examples: {0}")]
    Embed(String),
}

/// Parses and validates the intents file (errors name the file and key).
fn parse(path: &Path) -> Result<IntentsFile, ConfigError> {
    let bad = |problem: String| ConfigError::File {
        path: path.to_owned(),
        problem,
    };
    if !path.is_file() {
        return Err(ConfigError::MissingFile(path.to_owned()));
    }
    let file: IntentsFile = extract_toml(path).map_err(bad)?;
    for (i, intent) in file.intent.iter().enumerate() {
        if intent.examples.is_empty() {
            return Err(bad(format!(
                "key `intent[{i}].examples`: intent {:?} needs at least one example",
                intent.name
            )));
        }
        if !(0.0..=1.0).contains(&intent.threshold) {
            return Err(bad(format!(
                "key `intent[{i}].threshold`: expected a number from 0 to 1"
            )));
        }
    }
    Ok(file)
}

fn cache_path(cache_dir: &Path, model_id: &str, file: &IntentsFile) -> PathBuf {
    let mut key = model_id.to_owned();
    for intent in &file.intent {
        key.push('\u{1}');
        key.push_str(&intent.name);
        for example in &intent.examples {
            key.push('\u{2}');
            key.push_str(example);
        }
    }
    cache_dir.join(format!("intents-{:016x}.f32", xxh3_64(key.as_bytes())))
}

fn read_cache(path: &Path, count: usize, dims: usize) -> Option<Vec<Embedding>> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() != count * dims * 4 {
        return None;
    }
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some(floats.chunks_exact(dims).map(Embedding::from).collect())
}

fn write_cache(path: &Path, vectors: &[Embedding]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes: Vec<u8> = vectors
        .iter()
        .flat_map(|v| v.iter().flat_map(|x| x.to_le_bytes()))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

/// Loads the intents and their example vectors (from the cache when it matches).
pub async fn load(
    path: &Path,
    cache_dir: &Path,
    embedder: &dyn Embedder,
) -> Result<IntentSet, IntentsError> {
    let file = parse(path)?;
    let phrases: Vec<String> = file
        .intent
        .iter()
        .flat_map(|i| i.examples.iter().cloned())
        .collect();
    let cache = cache_path(cache_dir, embedder.model_id(), &file);
    let vectors = match read_cache(&cache, phrases.len(), embedder.dimensions()) {
        Some(vectors) => vectors,
        None => {
            let started = std::time::Instant::now();
            let vectors = embedder
                .embed(phrases.clone())
                .await
                .map_err(|e| IntentsError::Embed(e.0))?;
            info!(examples = phrases.len(), elapsed = ?started.elapsed(), "intent examples embedded");
            if let Err(e) = write_cache(&cache, &vectors) {
                warn!(error = %e, path = %cache.display(), "cannot cache intent vectors");
            }
            vectors
        }
    };
    let mut vectors = vectors.into_iter();
    let intents = file
        .intent
        .into_iter()
        .map(|i| Intent {
            examples: vectors
                .by_ref()
                .take(i.examples.len())
                .map(|v| normalize(&v))
                .collect(),
            name: i.name,
            route: i.route,
            threshold: i.threshold,
        })
        .collect();
    Ok(IntentSet {
        intents,
        guards: file
            .guards
            .full_if_contains
            .iter()
            .map(|g| g.to_lowercase())
            .collect(),
        max_fast_words: file.guards.max_fast_words,
    })
}
