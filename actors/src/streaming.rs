//! Turning a token stream into transport updates at a fixed cadence.
//!
//! Transports such as Discord pay per update (each is a message edit against a rate limit), so
//! the relay sends the growing text at most once per interval: immediately on the first token
//! (the user sees the reply start), then whenever the interval has passed and new text arrived.
//! The final text is returned to the caller, which sends the one final update.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::llm::LlmEvent;
use crate::ports::LlmError;

#[derive(Debug)]
pub struct Relayed {
    pub text: String,
    /// Interim updates sent (the final one is the caller's).
    pub updates: u32,
    pub first_token_at: Option<Instant>,
    pub error: Option<LlmError>,
}

pub async fn relay(
    mut events: mpsc::Receiver<LlmEvent>,
    interval: Duration,
    mut emit: impl FnMut(&str),
) -> Relayed {
    let mut out = Relayed {
        text: String::new(),
        updates: 0,
        first_token_at: None,
        error: None,
    };
    let mut last_emit: Option<tokio::time::Instant> = None;
    let mut dirty = false;
    loop {
        let next_emit = last_emit.map(|at| at + interval);
        tokio::select! {
            event = events.recv() => match event {
                Some(LlmEvent::Token(token)) => {
                    out.first_token_at.get_or_insert_with(Instant::now);
                    out.text.push_str(&token);
                    dirty = true;
                    let now = tokio::time::Instant::now();
                    if next_emit.is_none_or(|at| now >= at) {
                        emit(&out.text);
                        out.updates += 1;
                        last_emit = Some(now);
                        dirty = false;
                    }
                }
                Some(LlmEvent::Done) => break,
                Some(LlmEvent::Failed(error)) => {
                    out.error = Some(error);
                    break;
                }
                None => {
                    out.error = Some(LlmError::Unavailable);
                    break;
                }
            },
            _ = tokio::time::sleep_until(next_emit.unwrap_or_else(tokio::time::Instant::now)), if dirty => {
                emit(&out.text);
                out.updates += 1;
                last_emit = Some(tokio::time::Instant::now());
                dirty = false;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn updates_respect_the_interval_and_the_text_is_complete() {
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            for i in 0..50 {
                tokio::time::sleep(Duration::from_millis(60)).await;
                tx.send(LlmEvent::Token(format!("t{i} "))).await.unwrap();
            }
            tx.send(LlmEvent::Done).await.unwrap();
        });
        let mut seen = Vec::new();
        let out = relay(rx, Duration::from_millis(700), |t| seen.push(t.to_owned())).await;
        let expected: String = (0..50).map(|i| format!("t{i} ")).collect();
        assert_eq!(out.text, expected);
        assert!(out.error.is_none());
        // 3 s of tokens at a 700 ms cadence: the first token plus four interval updates.
        assert_eq!(out.updates, 5, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[1].starts_with(&w[0])));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_keeps_the_partial_text() {
        let (tx, rx) = mpsc::channel(8);
        tx.send(LlmEvent::Token("partial".into())).await.unwrap();
        tx.send(LlmEvent::Failed(LlmError::Timeout(Duration::from_secs(1))))
            .await
            .unwrap();
        let out = relay(rx, Duration::from_millis(700), |_| {}).await;
        assert_eq!(out.text, "partial");
        assert_eq!(out.error, Some(LlmError::Timeout(Duration::from_secs(1))));
    }
}
