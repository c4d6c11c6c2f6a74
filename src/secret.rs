//! Secrets that cannot be printed by accident.
//!
//! Tokens, API keys and passwords live in [`Secret`]; connection strings that may carry a
//! password (URLs like `postgres://bot:pw@db/x`, key-value strings like `host=db password=pw`)
//! live in [`SecretUrl`]. Both redact themselves in `Display`, `Debug` and `Serialize`, so a log
//! line, an error, `config check` or a serialised config never shows the secret; the value is
//! reached only through `expose()`, at the one place that hands it to a client library.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret shows instead of itself.
pub const REDACTED: &str = "<redacted>";

/// A token, API key or password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the client that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An unset secret shows as empty (so "not configured" stays visible), a set one never.
    fn shown(&self) -> &'static str {
        if self.0.is_empty() { "" } else { REDACTED }
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({:?})", self.shown())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.shown())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// A connection string or URL that may hold a password: shown with the password masked.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The whole string, password included, for the client that connects with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The string with every credential masked (safe for logs and errors).
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl From<String> for SecretUrl {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for SecretUrl {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({:?})", self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// Query or key-value parameters whose values are credentials.
const SENSITIVE_KEYS: [&str; 9] = [
    "password", "passwd", "pwd", "pass", "token", "api_key", "apikey", "key", "secret",
];

fn sensitive(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    SENSITIVE_KEYS.contains(&key.as_str())
}

/// `value` with credentials masked: the password of a URL's user info, credential query
/// parameters, and credential pairs of a key-value connection string.
pub fn redact(value: &str) -> String {
    match value.split_once("://") {
        Some((scheme, rest)) if !scheme.contains(char::is_whitespace) => {
            format!("{scheme}://{}", redact_url_rest(rest))
        }
        _ if value.contains('=') => redact_key_values(value),
        _ => value.to_owned(),
    }
}

fn redact_url_rest(rest: &str) -> String {
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            // A lone user info may itself be a token (`redis://TOKEN@host`).
            None if userinfo.len() >= 16 => format!("***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let Some((before, query)) = path.split_once('?') else {
        return format!("{authority}{path}");
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if sensitive(k) => format!("{k}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    let mut out = format!("{authority}{before}?{}", query.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// libpq-style `key=value key='quoted value'` strings.
fn redact_key_values(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while !rest.is_empty() {
        let ws = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..ws]);
        rest = &rest[ws..];
        if rest.is_empty() {
            break;
        }
        let Some(eq) = rest.find('=') else {
            out.push_str(rest);
            break;
        };
        let key = &rest[..eq];
        if key.contains(char::is_whitespace) {
            // Not a key: copy the word and go on.
            let word = rest.find(char::is_whitespace).unwrap_or(rest.len());
            out.push_str(&rest[..word]);
            rest = &rest[word..];
            continue;
        }
        let after = &rest[eq + 1..];
        let end = if let Some(quoted) = after.strip_prefix('\'') {
            // Up to the closing quote (backslash escapes skipped).
            let mut chars = quoted.char_indices();
            let mut close = quoted.len();
            while let Some((i, c)) = chars.next() {
                if c == '\\' {
                    chars.next();
                } else if c == '\'' {
                    close = i + 1;
                    break;
                }
            }
            1 + close.min(quoted.len())
        } else {
            after.find(char::is_whitespace).unwrap_or(after.len())
        };
        out.push_str(key);
        out.push('=');
        if sensitive(key) {
            out.push_str("***");
        } else {
            out.push_str(&after[..end]);
        }
        rest = &after[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_shows_itself() {
        let token = Secret::from("MTIz.discord-bot-token");
        assert_eq!(token.to_string(), REDACTED);
        assert!(!format!("{token:?}").contains("MTIz"));
        assert_eq!(
            serde_json::to_string(&token).unwrap(),
            format!("\"{REDACTED}\"")
        );
        assert_eq!(
            toml::to_string(
                &[("k", &token)]
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>()
            )
            .unwrap()
            .trim(),
            format!("k = \"{REDACTED}\"")
        );
        assert_eq!(token.expose(), "MTIz.discord-bot-token");
        assert_eq!(
            Secret::default().to_string(),
            "",
            "unset stays visible as unset"
        );
        let back: Secret = serde_json::from_str("\"sk-1\"").unwrap();
        assert_eq!(back.expose(), "sk-1");
    }

    #[test]
    fn urls_show_everything_but_the_password() {
        let cases = [
            (
                "postgres://bot:s3cret@db:5432/whisper",
                "postgres://bot:***@db:5432/whisper",
            ),
            (
                "redis://:s3cret@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "http://user:p@ss:word@host/v1?x=1",
                "http://user:***@host/v1?x=1",
            ),
            (
                "https://qdrant.example:6334?api_key=s3cret&timeout=5",
                "https://qdrant.example:6334?api_key=***&timeout=5",
            ),
            (
                "postgres://db/whisper?user=bot&password=s3cret",
                "postgres://db/whisper?user=bot&password=***",
            ),
            (
                "host=db user=bot password=s3cret dbname=whisper",
                "host=db user=bot password=*** dbname=whisper",
            ),
            (
                "host=db password='s3 cret \\' x' dbname=whisper",
                "host=db password=*** dbname=whisper",
            ),
            ("", ""),
        ];
        for (input, shown) in cases {
            let url = SecretUrl::from(input);
            assert_eq!(url.to_string(), shown, "{input}");
            assert!(!format!("{url:?}").contains("s3cret"), "{input}");
            assert!(!serde_json::to_string(&url).unwrap().contains("s3cret"));
            assert_eq!(url.expose(), input);
        }
    }
}
