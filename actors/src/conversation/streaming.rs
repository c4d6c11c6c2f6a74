//! Turning a token stream into transport updates at a fixed cadence.
//!
//! Transports such as Discord pay per update (each is a message edit against a rate limit), so
//! the relay sends the growing text at most once per interval: immediately on the first token
//! (the user sees the reply start), then whenever the interval has passed and new text arrived.
//! The final text is left to the caller, which sends the one final update.
//!
//! A reply may take several model rounds (the model calls tools, then answers): one [`Relay`]
//! spans them all, so the text only grows and the cadence holds across rounds.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::llm::LlmEvent;
use crate::ports::{LlmError, ToolCall};

/// How one model round ended.
#[derive(Debug, PartialEq)]
pub enum RoundEnd {
    Done,
    /// The model wants these tools run before it goes on.
    ToolCalls(Vec<ToolCall>),
    Failed(LlmError),
}

#[derive(Debug)]
pub struct Relay {
    interval: Duration,
    /// Everything streamed so far, over all rounds.
    pub text: String,
    /// Interim updates sent (the final one is the caller's).
    pub updates: u32,
    pub first_token_at: Option<Instant>,
    last_emit: Option<tokio::time::Instant>,
}

impl Relay {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            text: String::new(),
            updates: 0,
            first_token_at: None,
            last_emit: None,
        }
    }

    /// Relays one round's events until the model finishes, asks for tools, or fails.
    pub async fn round(
        &mut self,
        events: &mut mpsc::Receiver<LlmEvent>,
        emit: &mut impl FnMut(&str),
    ) -> RoundEnd {
        let mut dirty = false;
        loop {
            let next_emit = self.last_emit.map(|at| at + self.interval);
            tokio::select! {
                event = events.recv() => match event {
                    Some(LlmEvent::Token(token)) => {
                        self.first_token_at.get_or_insert_with(Instant::now);
                        self.text.push_str(&token);
                        dirty = true;
                        let now = tokio::time::Instant::now();
                        if next_emit.is_none_or(|at| now >= at) {
                            self.emit(emit, now);
                            dirty = false;
                        }
                    }
                    Some(LlmEvent::ToolCalls(calls)) => {
                        self.first_token_at.get_or_insert_with(Instant::now);
                        return RoundEnd::ToolCalls(calls);
                    }
                    Some(LlmEvent::Done) => return RoundEnd::Done,
                    Some(LlmEvent::Failed(error)) => return RoundEnd::Failed(error),
                    None => return RoundEnd::Failed(LlmError::Unavailable),
                },
                _ = tokio::time::sleep_until(next_emit.unwrap_or_else(tokio::time::Instant::now)), if dirty => {
                    self.emit(emit, tokio::time::Instant::now());
                    dirty = false;
                }
            }
        }
    }

    fn emit(&mut self, emit: &mut impl FnMut(&str), now: tokio::time::Instant) {
        emit(&self.text);
        self.updates += 1;
        self.last_emit = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn updates_respect_the_interval_and_the_text_is_complete() {
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(async move {
            for i in 0..50 {
                tokio::time::sleep(Duration::from_millis(60)).await;
                tx.send(LlmEvent::Token(format!("t{i} "))).await.unwrap();
            }
            tx.send(LlmEvent::Done).await.unwrap();
        });
        let mut seen = Vec::new();
        let mut relay = Relay::new(Duration::from_millis(700));
        let end = relay.round(&mut rx, &mut |t| seen.push(t.to_owned())).await;
        let expected: String = (0..50).map(|i| format!("t{i} ")).collect();
        assert_eq!(relay.text, expected);
        assert_eq!(end, RoundEnd::Done);
        // 3 s of tokens at a 700 ms cadence: the first token plus four interval updates.
        assert_eq!(relay.updates, 5, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[1].starts_with(&w[0])));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_keeps_the_partial_text() {
        let (tx, mut rx) = mpsc::channel(8);
        tx.send(LlmEvent::Token("partial".into())).await.unwrap();
        tx.send(LlmEvent::Failed(LlmError::Timeout(Duration::from_secs(1))))
            .await
            .unwrap();
        let mut relay = Relay::new(Duration::from_millis(700));
        let end = relay.round(&mut rx, &mut |_| {}).await;
        assert_eq!(relay.text, "partial");
        assert_eq!(
            end,
            RoundEnd::Failed(LlmError::Timeout(Duration::from_secs(1)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn text_keeps_growing_across_tool_rounds() {
        let mut relay = Relay::new(Duration::from_millis(700));
        let mut seen = Vec::new();
        let (tx, mut rx) = mpsc::channel(8);
        tx.send(LlmEvent::Token("Let me look. ".into()))
            .await
            .unwrap();
        let call = ToolCall {
            id: "c1".into(),
            name: "search_memories".into(),
            arguments: "{}".into(),
        };
        tx.send(LlmEvent::ToolCalls(vec![call.clone()]))
            .await
            .unwrap();
        let end = relay.round(&mut rx, &mut |t| seen.push(t.to_owned())).await;
        assert_eq!(end, RoundEnd::ToolCalls(vec![call]));
        let (tx, mut rx) = mpsc::channel(8);
        tx.send(LlmEvent::Token("Found it.".into())).await.unwrap();
        tx.send(LlmEvent::Done).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let end = relay.round(&mut rx, &mut |t| seen.push(t.to_owned())).await;
        assert_eq!(end, RoundEnd::Done);
        assert_eq!(relay.text, "Let me look. Found it.");
        assert_eq!(seen, vec!["Let me look. ", "Let me look. Found it."]);
    }
}
