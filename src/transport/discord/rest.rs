//! The REST calls a reply makes (typing, create, edit), with Discord's answer read in full.
//!
//! serenity builds the requests (routes, token, proxy). Where its rate limiter is on it also
//! sends them and honours 429s itself. Where it is off (a proxy or an emulator in front of
//! Discord), serenity would drop what a 429 says (its error decoder wants a `code` that
//! Discord's 429 body lacks), so the request goes out on the same HTTP client and the status,
//! body and rate-limit headers are read here: the retry waits exactly as long as Discord asks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest012 as reqwest;
use serde_json::{Value, json};
use serenity::all::{ChannelId, Http, MessageId};
use serenity::http::{LightMethod, Request, Route};
use tokio::time::Instant;

/// What Discord said no with.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// 429: wait at least `after` (for every request of this bot when `global`).
    #[error("rate limited for {after:?} (global: {global})")]
    RateLimited { after: Duration, global: bool },
    /// 403 (or an unknown channel): the bot cannot write here until its permissions change.
    #[error("the bot may not write in this channel (Discord code {code})")]
    Forbidden { code: i64 },
    /// The message to edit is gone (deleted by someone).
    #[error("unknown message")]
    UnknownMessage,
    /// Any other 4xx: the request itself is wrong; retrying will not help.
    #[error("Discord refused the request ({status}, code {code}: {message})")]
    Refused {
        status: u16,
        code: i64,
        message: String,
    },
    /// 5xx.
    #[error("Discord answered {status}")]
    Server { status: u16 },
    #[error("could not reach Discord: {0}")]
    Transport(String),
}

impl RestError {
    /// Worth another try (after the wait it implies).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RestError::RateLimited { .. } | RestError::Server { .. } | RestError::Transport(_)
        )
    }
}

/// One bot's REST writer.
pub struct Rest {
    http: Arc<Http>,
    client: reqwest::Client,
    /// A global 429 stops every request of this bot until then.
    global_until: Mutex<Option<Instant>>,
}

/// The HTTP client serenity and the writer share (serenity's own default, built here so the
/// writer can use it too).
pub fn http_client() -> reqwest::Client {
    crate::tls::install_provider();
    reqwest::Client::builder()
        .use_rustls_tls()
        .build()
        .expect("the TLS backend is compiled in")
}

impl Rest {
    pub fn new(http: Arc<Http>, client: reqwest::Client) -> Self {
        Self {
            http,
            client,
            global_until: Mutex::new(None),
        }
    }

    /// Shows "typing..." for about 10 s.
    pub async fn typing(&self, channel: ChannelId) -> Result<(), RestError> {
        let request = Request::new(
            Route::ChannelTyping {
                channel_id: channel,
            },
            LightMethod::Post,
        );
        self.execute(request).await.map(|_| ())
    }

    /// Posts `content`, as a reply to `reply_to` when given, pinging nobody. A reply to a
    /// message deleted meanwhile is posted anyway (`fail_if_not_exists: false`).
    ///
    /// `nonce` with `enforce_nonce` makes the create idempotent on Discord's side: the same
    /// nonce from the same bot within a few minutes returns the message already created (a turn
    /// re-run after a worker crashed writes into its first reply, not a second one). The answer
    /// is the message as Discord holds it, whose content may be an earlier run's.
    pub async fn create(
        &self,
        channel: ChannelId,
        content: &str,
        reply_to: Option<MessageId>,
        nonce: Option<&str>,
    ) -> Result<Created, RestError> {
        let mut body = json!({
            "content": content,
            "allowed_mentions": {"parse": [], "replied_user": false},
        });
        if let Some(nonce) = nonce {
            body["nonce"] = json!(nonce);
            body["enforce_nonce"] = json!(true);
        }
        if let Some(message) = reply_to {
            body["message_reference"] = json!({
                "message_id": message.to_string(),
                "channel_id": channel.to_string(),
                "fail_if_not_exists": false,
            });
        }
        let request = Request::new(
            Route::ChannelMessages {
                channel_id: channel,
            },
            LightMethod::Post,
        )
        .body(Some(body.to_string().into_bytes()));
        let answer = self.execute(request).await?;
        created(&answer)
    }

    /// Replaces the content of message `id`.
    pub async fn edit(
        &self,
        channel: ChannelId,
        id: MessageId,
        content: &str,
    ) -> Result<(), RestError> {
        let body = json!({"content": content, "allowed_mentions": {"parse": []}});
        let request = Request::new(
            Route::ChannelMessage {
                channel_id: channel,
                message_id: id,
            },
            LightMethod::Patch,
        )
        .body(Some(body.to_string().into_bytes()));
        self.execute(request).await.map(|_| ())
    }

    async fn execute(&self, request: Request<'_>) -> Result<Vec<u8>, RestError> {
        let until = *self.global_until.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
        if self.http.ratelimiter.is_some() {
            return self.through_serenity(request).await;
        }
        let built = request
            .build(&self.client, self.http.token(), self.http.proxy.as_deref())
            .map_err(|e| RestError::Transport(e.to_string()))?
            .build()
            .map_err(|e| RestError::Transport(e.to_string()))?;
        let response = self
            .client
            .execute(built)
            .await
            .map_err(|e| RestError::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| RestError::Transport(e.to_string()))?;
        if (200..300).contains(&status) {
            return Ok(body.to_vec());
        }
        let error: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let code = error["code"].as_i64().unwrap_or(0);
        if status == 429 {
            let (after, global) = retry_after(&error, &headers);
            if global {
                let mut until = self.global_until.lock().unwrap_or_else(|e| e.into_inner());
                *until = Some(Instant::now() + after);
            }
            return Err(RestError::RateLimited { after, global });
        }
        Err(classify(status, code, error["message"].as_str()))
    }

    /// With serenity's limiter on: it waits out 429s itself; only the outcome is mapped.
    async fn through_serenity(&self, request: Request<'_>) -> Result<Vec<u8>, RestError> {
        match self.http.request(request).await {
            Ok(response) => response
                .bytes()
                .await
                .map(|b| b.to_vec())
                .map_err(|e| RestError::Transport(e.to_string())),
            Err(serenity::Error::Http(serenity::http::HttpError::UnsuccessfulRequest(r))) => {
                let status = r.status_code.as_u16();
                if status == 429 {
                    return Err(RestError::RateLimited {
                        after: Duration::from_secs(1),
                        global: false,
                    });
                }
                Err(classify(
                    status,
                    r.error.code as i64,
                    Some(&r.error.message),
                ))
            }
            Err(other) => Err(RestError::Transport(other.to_string())),
        }
    }
}

fn classify(status: u16, code: i64, message: Option<&str>) -> RestError {
    match (status, code) {
        (403, _) | (404, 10003) => RestError::Forbidden { code },
        (404, 10008) => RestError::UnknownMessage,
        (500.., _) => RestError::Server { status },
        _ => RestError::Refused {
            status,
            code,
            message: message.unwrap_or_default().to_owned(),
        },
    }
}

/// How long a 429 asks to wait: the body's `retry_after` (seconds, fractional), else the
/// `Retry-After` header, else `X-RateLimit-Reset-After`; and whether it is global.
pub fn retry_after(body: &Value, headers: &reqwest::header::HeaderMap) -> (Duration, bool) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let seconds = body["retry_after"]
        .as_f64()
        .or_else(|| header("retry-after").and_then(|v| v.trim().parse().ok()))
        .or_else(|| header("x-ratelimit-reset-after").and_then(|v| v.trim().parse().ok()))
        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
        .unwrap_or(1.0);
    let global = body["global"].as_bool().unwrap_or(false)
        || header("x-ratelimit-global").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || header("x-ratelimit-scope").is_some_and(|v| v.eq_ignore_ascii_case("global"));
    (Duration::from_secs_f64(seconds), global)
}

/// A message Discord created (or returned for a nonce it had seen).
#[derive(Debug)]
pub struct Created {
    pub id: MessageId,
    /// What the message shows now.
    pub content: String,
}

fn created(answer: &[u8]) -> Result<Created, RestError> {
    let value: Value = serde_json::from_slice(answer)
        .map_err(|e| RestError::Transport(format!("unreadable message from Discord: {e}")))?;
    let id = value["id"]
        .as_str()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|id| *id != 0)
        .map(MessageId::new)
        .ok_or_else(|| RestError::Transport("Discord's answer has no message id".into()))?;
    Ok(Created {
        id,
        content: value["content"].as_str().unwrap_or_default().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest012::header::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn the_body_wins_then_the_header_then_reset_after() {
        let both = headers(&[("retry-after", "2")]);
        let (after, global) = retry_after(&json!({"retry_after": 1.5, "global": false}), &both);
        assert_eq!((after, global), (Duration::from_millis(1500), false));
        let (after, _) = retry_after(&json!({"message": "slow down"}), &both);
        assert_eq!(after, Duration::from_secs(2));
        let reset = headers(&[("x-ratelimit-reset-after", "0.75")]);
        assert_eq!(
            retry_after(&Value::Null, &reset).0,
            Duration::from_millis(750)
        );
        let global = headers(&[("x-ratelimit-global", "true"), ("retry-after", "3")]);
        assert_eq!(
            retry_after(&Value::Null, &global),
            (Duration::from_secs(3), true)
        );
        assert!(
            retry_after(
                &json!({"retry_after": 0.2, "global": true}),
                &HeaderMap::new()
            )
            .1
        );
    }
}
