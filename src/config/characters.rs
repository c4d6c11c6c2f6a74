//! Loading personas from `config/characters/<id>.toml`.

use std::path::Path;

use serde::Deserialize;
use whisper_actors::{Character, CharacterSet, ModelParams};

use super::{ConfigError, extract_toml};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CharacterFile {
    name: String,
    system_prompt: String,
    model: ModelFile,
    fast_model: Option<ModelFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    /// Empty: `llm.model`.
    #[serde(default)]
    name: String,
    temperature: f32,
    top_p: Option<f32>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    max_tokens: u32,
    /// The model reads images; absent: `llm.vision`.
    vision: Option<bool>,
}

impl ModelFile {
    fn into_params(self, path: &Path, key: &str) -> Result<ModelParams, ConfigError> {
        let bad = |problem: String| ConfigError::Character {
            path: path.to_owned(),
            problem,
        };
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(bad(format!(
                "key `{key}.temperature`: expected a number from 0 to 2, found {}",
                self.temperature
            )));
        }
        if let Some(top_p) = self.top_p
            && !(0.0..=1.0).contains(&top_p)
        {
            return Err(bad(format!(
                "key `{key}.top_p`: expected a number from 0 to 1, found {top_p}"
            )));
        }
        for (name, value) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if let Some(v) = value
                && !(-2.0..=2.0).contains(&v)
            {
                return Err(bad(format!(
                    "key `{key}.{name}`: expected a number from -2 to 2, found {v}"
                )));
            }
        }
        if self.max_tokens == 0 {
            return Err(bad(format!(
                "key `{key}.max_tokens`: expected a number greater than zero"
            )));
        }
        Ok(ModelParams {
            model: (!self.name.trim().is_empty()).then(|| self.name.trim().to_owned()),
            temperature: self.temperature,
            top_p: self.top_p,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            max_tokens: self.max_tokens,
            vision: self.vision,
        })
    }
}

/// Loads every `*.toml` in `dir`; the file stem is the character id.
pub fn load_dir(dir: &Path) -> Result<CharacterSet, ConfigError> {
    let dir_error = |problem: String| ConfigError::CharacterDir {
        path: dir.to_owned(),
        problem,
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| dir_error(format!("cannot be read: {e} (set characters.dir)")))?;
    let mut characters = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| dir_error(e.to_string()))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        characters.push(load_file(&path)?);
    }
    if characters.is_empty() {
        return Err(dir_error(
            "contains no character files (<id>.toml)".to_owned(),
        ));
    }
    Ok(CharacterSet::new(characters))
}

pub fn load_file(path: &Path) -> Result<Character, ConfigError> {
    let bad = |problem: String| ConfigError::Character {
        path: path.to_owned(),
        problem,
    };
    let id = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .ok_or_else(|| {
            bad("the file name must be <id>.toml with an id of letters, digits, - or _".to_owned())
        })?
        .to_owned();
    let file: CharacterFile = extract_toml(path).map_err(bad)?;
    if file.system_prompt.trim().is_empty() {
        return Err(bad(
            "key `system_prompt`: expected a non-empty persona".to_owned()
        ));
    }
    let model = file.model.into_params(path, "model")?;
    let fast_model = file
        .fast_model
        .map(|m| m.into_params(path, "fast_model"))
        .transpose()?;
    Ok(Character {
        id,
        name: file.name,
        system_prompt: file.system_prompt,
        model,
        fast_model,
    })
}
