//! What every server backend shares: waiting for the server at startup, and naming it in
//! errors without leaking credentials.

use std::future::Future;
use std::time::Duration;
use whisper_actors::backoff::Backoff;

use tracing::{info, warn};

/// A configured server could not be reached in time.
#[derive(Debug, thiserror::Error)]
#[error("{service} at {url} did not answer within {waited:?}: {last_error}")]
pub struct Unreachable {
    pub service: &'static str,
    /// With any password replaced by `***`.
    pub url: String,
    pub waited: Duration,
    pub last_error: String,
}

/// `url` with the password (if any) masked, for logs and errors.
pub use crate::secret::redact;

/// Calls `attempt` until it succeeds, backing off from 100 ms to 2 s, for at most `timeout`.
pub async fn wait_for<T, E, F, Fut>(
    service: &'static str,
    url: &str,
    timeout: Duration,
    mut attempt: F,
) -> Result<T, Unreachable>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = tokio::time::Instant::now();
    let waits = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut tries = 0u32;
    loop {
        tries += 1;
        let backoff = waits.delay(tries);
        match attempt().await {
            Ok(value) => {
                if tries > 1 {
                    info!(service, url = %redact(url), tries, "server is up");
                }
                return Ok(value);
            }
            Err(error) => {
                let waited = started.elapsed();
                if waited + backoff > timeout {
                    return Err(Unreachable {
                        service,
                        url: redact(url),
                        waited,
                        last_error: error.to_string(),
                    });
                }
                if tries == 1 {
                    warn!(service, url = %redact(url), %error, "waiting for the server");
                }
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("postgres://bot:s3cret@db:5432/whisper"),
            "postgres://bot:***@db:5432/whisper"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_server_is_named_after_the_timeout() {
        let error = wait_for(
            "postgres",
            "postgres://u:p@nowhere/db",
            Duration::from_secs(3),
            || async { Err::<(), _>("connection refused") },
        )
        .await
        .unwrap_err();
        assert_eq!(error.service, "postgres");
        assert_eq!(error.url, "postgres://u:***@nowhere/db");
        assert!(error.to_string().contains("connection refused"));
    }
}
