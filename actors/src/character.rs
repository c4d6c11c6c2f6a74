//! Personas. The application loads them from `config/characters/*.toml`; the core only needs the
//! prompt and sampling parameters.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Sampling parameters for one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelParams {
    /// Model name sent to the endpoint; `None` uses the endpoint's configured default.
    pub model: Option<String>,
    pub temperature: f32,
    pub top_p: Option<f32>,
    /// OpenAI-style repetition controls (-2 to 2); small models need them to avoid loops.
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub max_tokens: u32,
    /// Whether the model reads images; `None` follows `llm.vision`. Decided by the transport,
    /// which only downloads images for a model that reads them.
    #[serde(default)]
    pub vision: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Character {
    /// Stable id: the file stem, used in conversation keys and storage.
    pub id: String,
    /// Display name.
    pub name: String,
    pub system_prompt: String,
    pub model: ModelParams,
    /// Cheaper model for the fast track (small talk); falls back to `model`.
    pub fast_model: Option<ModelParams>,
}

/// All loaded characters, by id.
#[derive(Clone, Debug, Default)]
pub struct CharacterSet {
    by_id: BTreeMap<String, (Arc<str>, Arc<Character>)>,
}

impl CharacterSet {
    pub fn new(characters: impl IntoIterator<Item = Character>) -> Self {
        Self {
            by_id: characters
                .into_iter()
                .map(|c| (c.id.clone(), (Arc::from(c.id.as_str()), Arc::new(c))))
                .collect(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Character>> {
        self.by_id.get(id).map(|(_, c)| c)
    }

    /// The shared copy of a character id, so every conversation key for a character points at
    /// one allocation instead of one per message.
    pub fn interned_id(&self, id: &str) -> Option<&Arc<str>> {
        self.by_id.get(id).map(|(id, _)| id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.by_id.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// The character set in force, swapped whole by a reload: every conversation reads it at its
/// next message, so an edited persona takes effect there.
pub type LiveCharacters = std::sync::Arc<arc_swap::ArcSwap<CharacterSet>>;
