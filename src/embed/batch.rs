//! Batching in front of the EmbedderActor pool.
//!
//! One ONNX inference over several sentences costs far less per sentence than one inference
//! each, so requests are gathered: those that arrive while every worker is busy go into the next
//! inference together (an idle pool waits at most `embedding.batch_wait` for company), up to
//! `embedding.max_batch` sentences. Live messages go first; background work (memories of
//! replies, summaries) fills the room that is left. Each caller gets its own vectors, in its
//! order; if a batch fails, its requests run one by one, so only a failing one gets the error.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use whisper_actors::ports::{EmbedError, Embedding};

pub(super) type Answer = Result<Vec<Embedding>, EmbedError>;

/// One caller's texts and where its vectors go.
struct Request {
    texts: Vec<String>,
    reply: oneshot::Sender<Answer>,
}

/// How batches are formed.
#[derive(Clone, Copy, Debug)]
pub struct BatchPolicy {
    /// Sentences per inference at most (a single larger request still goes whole).
    pub max_batch: usize,
    /// How long a batch waits for company when a worker is free.
    pub wait: Duration,
}

/// Inferences run and sentences embedded, for metrics and tests.
#[derive(Debug, Default)]
pub struct BatchCounts {
    pub inferences: AtomicU64,
    pub sentences: AtomicU64,
}

/// The way into the batcher: a live line and a background line.
#[derive(Clone)]
pub struct Batcher {
    live: mpsc::UnboundedSender<Request>,
    background: mpsc::UnboundedSender<Request>,
    pub counts: Arc<BatchCounts>,
}

impl Batcher {
    /// Starts the batcher on the current tokio runtime. `free` holds one permit per worker;
    /// `embed` runs one inference.
    pub fn start<F, Fut>(embed: F, free: Arc<Semaphore>, policy: BatchPolicy) -> Batcher
    where
        F: Fn(Vec<String>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        let (live_tx, mut live) = mpsc::unbounded_channel::<Request>();
        let (background_tx, mut background) = mpsc::unbounded_channel::<Request>();
        let counts = Arc::new(BatchCounts::default());
        let counted = counts.clone();
        tokio::spawn(async move {
            loop {
                // While every worker is busy, requests queue here and form the next batch.
                let Ok(permit) = free.clone().acquire_owned().await else {
                    return;
                };
                let first = tokio::select! {
                    biased;
                    Some(r) = live.recv() => r,
                    Some(r) = background.recv() => r,
                    else => return,
                };
                let mut batch = vec![first];
                let size = |batch: &[Request]| batch.iter().map(|r| r.texts.len()).sum::<usize>();
                let deadline = tokio::time::Instant::now() + policy.wait;
                // What is waiting now joins; then, below the limit, what comes within the wait.
                while size(&batch) < policy.max_batch {
                    let next = match live.try_recv().or_else(|_| background.try_recv()) {
                        Ok(r) => Some(r),
                        Err(_) if policy.wait.is_zero() => None,
                        Err(_) => tokio::select! {
                            biased;
                            Some(r) = live.recv() => Some(r),
                            Some(r) = background.recv() => Some(r),
                            () = tokio::time::sleep_until(deadline) => None,
                        },
                    };
                    match next {
                        Some(r) => batch.push(r),
                        None => break,
                    }
                }
                let size = size(&batch);
                counted.inferences.fetch_add(1, Ordering::Relaxed);
                counted.sentences.fetch_add(size as u64, Ordering::Relaxed);
                metrics::histogram!("whisper_embedder_batch_sentences").record(size as f64);
                let embed = embed.clone();
                tokio::spawn(async move {
                    run(&embed, batch, policy.max_batch).await;
                    drop(permit);
                });
            }
        });
        Batcher {
            live: live_tx,
            background: background_tx,
            counts,
        }
    }

    /// Embeds for a live message.
    pub async fn live(&self, texts: Vec<String>) -> Answer {
        Self::ask(&self.live, texts).await
    }

    /// Embeds for background work, behind live messages.
    pub async fn background(&self, texts: Vec<String>) -> Answer {
        Self::ask(&self.background, texts).await
    }

    async fn ask(line: &mpsc::UnboundedSender<Request>, texts: Vec<String>) -> Answer {
        let (reply, answer) = oneshot::channel();
        line.send(Request { texts, reply })
            .map_err(|_| EmbedError("the embedding batcher stopped".into()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(EmbedError("the embedding batcher stopped".into())))
    }
}

/// Embeds `texts` in inferences of at most `max_batch` sentences: ONNX Runtime keeps the
/// memory its largest inference needed, so one request of 135 sentences (the classifier's
/// examples at startup) must not set the process's footprint.
async fn chunked<F, Fut>(embed: &F, texts: Vec<String>, max_batch: usize) -> Answer
where
    F: Fn(Vec<String>) -> Fut,
    Fut: Future<Output = Answer>,
{
    if texts.len() <= max_batch {
        return embed(texts).await;
    }
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(max_batch.max(1)) {
        out.extend(embed(chunk.to_vec()).await?);
    }
    Ok(out)
}

/// One inference for the whole batch, split back per caller; on failure, one per caller.
async fn run<F, Fut>(embed: &F, batch: Vec<Request>, max_batch: usize)
where
    F: Fn(Vec<String>) -> Fut,
    Fut: Future<Output = Answer>,
{
    if batch.len() == 1 {
        let request = batch.into_iter().next().expect("one");
        let _ = request
            .reply
            .send(chunked(embed, request.texts, max_batch).await);
        return;
    }
    let all: Vec<String> = batch.iter().flat_map(|r| r.texts.iter().cloned()).collect();
    let expected = all.len();
    match chunked(embed, all, max_batch).await {
        Ok(mut vectors) if vectors.len() == expected => {
            for request in batch {
                let rest = vectors.split_off(request.texts.len());
                let _ = request
                    .reply
                    .send(Ok(std::mem::replace(&mut vectors, rest)));
            }
        }
        _ => {
            for request in batch {
                let _ = request
                    .reply
                    .send(chunked(embed, request.texts, max_batch).await);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in inference: each text's vector is its length; "bad" fails the whole call.
    async fn lengths(texts: Vec<String>) -> Answer {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if texts.iter().any(|t| t == "bad") {
            return Err(EmbedError("bad input".into()));
        }
        Ok(texts
            .iter()
            .map(|t| Embedding::from(vec![t.len() as f32]))
            .collect())
    }

    #[tokio::test]
    async fn callers_get_their_own_vectors_and_only_a_failing_one_fails() {
        let batcher = Batcher::start(
            lengths,
            Arc::new(Semaphore::new(1)),
            BatchPolicy {
                max_batch: 64,
                wait: Duration::from_millis(1),
            },
        );
        let inputs: Vec<Vec<String>> = (0..20)
            .map(|i| match i {
                7 => vec!["bad".to_owned()],
                _ => vec!["x".repeat(i), "y".repeat(i + 100)],
            })
            .collect();
        let answers = futures::future::join_all(inputs.iter().enumerate().map(|(i, texts)| {
            let batcher = batcher.clone();
            let texts = texts.clone();
            async move {
                if i % 2 == 0 {
                    batcher.live(texts).await
                } else {
                    batcher.background(texts).await
                }
            }
        }))
        .await;
        for (i, answer) in answers.into_iter().enumerate() {
            if i == 7 {
                assert!(answer.is_err(), "the bad input fails its caller");
                continue;
            }
            let vectors: Vec<f32> = answer.unwrap().iter().map(|v| v[0]).collect();
            assert_eq!(vectors, [i as f32, (i + 100) as f32], "caller {i}");
        }
        let counts = &batcher.counts;
        assert!(
            counts.inferences.load(Ordering::Relaxed) < 20,
            "requests were batched: {counts:?}"
        );
    }
}
