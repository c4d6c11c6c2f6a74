//! In-memory doubles of the stores, for the core crate's own tests: the real actors (pools,
//! job workers) run over them, so supervision and routing are tested without any database.

// Shared by several test crates; each uses some of the doubles.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use whisper_actors::ConversationKey;
use whisper_actors::jobs::{Fate, Job, JobQueue, NewJob, QueueCounts};
use whisper_actors::memory::{Candidate, MemoryChunk, MemoryQuery, MemoryStore};
use whisper_actors::ports::StoreError;

/// A job queue in a Vec: leases in order, remembers every failure's fate.
#[derive(Default)]
pub struct MemoryQueue {
    pub ready: Mutex<VecDeque<Job>>,
    pub leased: Mutex<Vec<Job>>,
    pub acked: Mutex<Vec<String>>,
    pub failed: Mutex<Vec<(String, String, Fate)>>,
}

#[async_trait]
impl JobQueue for MemoryQueue {
    async fn enqueue(&self, job: NewJob) -> Result<bool, StoreError> {
        self.ready.lock().unwrap().push_back(Job {
            id: job.id,
            kind: job.kind.as_str().to_owned(),
            user: job.user,
            payload: job.payload,
            attempt: 0,
        });
        Ok(true)
    }
    async fn lease(&self, _: Duration) -> Result<Option<Job>, StoreError> {
        let job = self.ready.lock().unwrap().pop_front().map(|mut job| {
            job.attempt += 1;
            job
        });
        if let Some(job) = &job {
            self.leased.lock().unwrap().push(job.clone());
        }
        Ok(job)
    }
    async fn ack(&self, id: &str) -> Result<(), StoreError> {
        self.leased.lock().unwrap().retain(|j| j.id != id);
        self.acked.lock().unwrap().push(id.to_owned());
        Ok(())
    }
    async fn fail(&self, job: &Job, error: &str, fate: Fate) -> Result<(), StoreError> {
        self.leased.lock().unwrap().retain(|j| j.id != job.id);
        self.failed
            .lock()
            .unwrap()
            .push((job.id.clone(), error.to_owned(), fate));
        if let Fate::RetryIn(_) = fate {
            self.ready.lock().unwrap().push_back(job.clone());
        }
        Ok(())
    }
    async fn counts(&self) -> Result<QueueCounts, StoreError> {
        Ok(QueueCounts {
            ready: self.ready.lock().unwrap().len() as u64,
            leased: self.leased.lock().unwrap().len() as u64,
            dead: 0,
        })
    }
    async fn forget_user(&self, user: &str) -> Result<u64, StoreError> {
        let mut ready = self.ready.lock().unwrap();
        let before = ready.len();
        ready.retain(|j| j.user != user);
        Ok((before - ready.len()) as u64)
    }
}

/// Memories in a Vec, searched by exact cosine over the key's own chunks.
#[derive(Default)]
pub struct MemoryVec(pub Mutex<Vec<MemoryChunk>>);

fn candidate(c: &MemoryChunk, similarity: f32) -> Candidate {
    Candidate {
        group: c.group.clone(),
        kind: c.kind,
        scope: c.scope.clone(),
        text: c.text.clone(),
        similarity,
        importance: c.importance,
        created_at_ms: c.created_at_ms,
        keyword_rank: None,
        corrected_by: None,
    }
}

#[async_trait]
impl MemoryStore for MemoryVec {
    async fn add(&self, chunks: Vec<MemoryChunk>) -> Result<(), StoreError> {
        self.0.lock().unwrap().extend(chunks);
        Ok(())
    }
    async fn search(&self, query: MemoryQuery) -> Result<Vec<Candidate>, StoreError> {
        let all = self.0.lock().unwrap();
        let mut found: Vec<_> = all
            .iter()
            .filter(|c| c.key == query.key)
            .map(|c| candidate(c, whisper_actors::vector::dot(&c.vector, &query.vector)))
            .collect();
        found.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        found.truncate(query.limit);
        whisper_actors::memory::keyword_ranks(&mut found, &query.text);
        Ok(found)
    }
    async fn list(
        &self,
        key: &ConversationKey,
        limit: usize,
    ) -> Result<Vec<Candidate>, StoreError> {
        let all = self.0.lock().unwrap();
        Ok(all
            .iter()
            .rev()
            .filter(|c| &c.key == key)
            .take(limit)
            .map(|c| candidate(c, 1.0))
            .collect())
    }
    async fn forget_user(&self, user: &str) -> Result<u64, StoreError> {
        let mut all = self.0.lock().unwrap();
        let before = all.len();
        all.retain(|c| c.key.user.as_ref() != user);
        Ok((before - all.len()) as u64)
    }
}

/// History in a Vec, with profiles counted from it.
#[derive(Default)]
pub struct HistoryVec(pub Mutex<Vec<(whisper_actors::ports::Turn, String)>>);

#[async_trait]
impl whisper_actors::ports::HistoryStore for HistoryVec {
    async fn recent_turns(
        &self,
        key: &ConversationKey,
        scope: &whisper_actors::Scope,
        limit: usize,
    ) -> Result<Vec<whisper_actors::ports::Turn>, StoreError> {
        let all = self.0.lock().unwrap();
        let mine: Vec<_> = all
            .iter()
            .filter(|(t, _)| &t.key == key && &t.scope == scope)
            .map(|(t, _)| t.clone())
            .collect();
        Ok(mine[mine.len().saturating_sub(limit)..].to_vec())
    }
    async fn profile(
        &self,
        user: &str,
    ) -> Result<Option<whisper_actors::ports::Profile>, StoreError> {
        let all = self.0.lock().unwrap();
        let mine: Vec<_> = all
            .iter()
            .filter(|(t, _)| t.key.user.as_ref() == user)
            .collect();
        Ok(mine.last().map(|(t, name)| whisper_actors::ports::Profile {
            user: user.to_owned(),
            display_name: name.clone(),
            first_seen_ms: mine[0].0.created_at_ms,
            last_seen_ms: t.replied_at_ms,
            message_count: mine.len() as u64,
        }))
    }
    async fn record_turn(
        &self,
        turn: &whisper_actors::ports::Turn,
        display_name: &str,
    ) -> Result<(), StoreError> {
        self.0
            .lock()
            .unwrap()
            .push((turn.clone(), display_name.to_owned()));
        Ok(())
    }
    async fn forget_user(&self, user: &str) -> Result<(u64, u64), StoreError> {
        let mut all = self.0.lock().unwrap();
        let before = all.len();
        all.retain(|(t, _)| t.key.user.as_ref() != user);
        Ok(((before - all.len()) as u64, 1))
    }
}

/// A model that answers with the last user message and how many messages its prompt held, so
/// a test can see what context reached it.
pub struct EchoModel;

#[async_trait]
impl whisper_actors::ports::ChatModel for EchoModel {
    async fn stream(
        &self,
        request: whisper_actors::ports::ChatRequest,
    ) -> Result<whisper_actors::ports::TokenStream, whisper_actors::ports::LlmError> {
        let last = request
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let prompt: Vec<String> = request.messages.iter().map(|m| m.content.clone()).collect();
        let answer = format!("echo: {last} | prompt: {}", prompt.join(" / "));
        Ok(Box::pin(futures::stream::iter([Ok(
            whisper_actors::ports::ModelDelta::Text(answer),
        )])))
    }
}
