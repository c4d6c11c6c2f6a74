//! User control: what "forget me", `/memories` and the status commands work on, in every store.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tracing::{info, warn};
use whisper_actors::ConversationKey;
use whisper_actors::ShardRouter;
use whisper_actors::memory::{Candidate, MemoryStore};
use whisper_actors::ports::HistoryStore;

use crate::store::sqlite::{self};
use crate::transport::discord::channel::ChannelLog;
use whisper_actors::graph::FactStore;
use whisper_actors::jobs::JobQueue;

/// What "forget me" deleted, per store.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ForgetReport {
    pub live_conversations: usize,
    pub turns: u64,
    pub profiles: u64,
    pub memories: u64,
    pub facts: u64,
    pub jobs: u64,
}

impl std::fmt::Display for ForgetReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "forgotten: {} conversation turns, {} profile, {} memories, {} facts, {} queued jobs; {} live conversations dropped with their caches",
            self.turns,
            self.profiles,
            self.memories,
            self.facts,
            self.jobs,
            self.live_conversations
        )
    }
}

/// The user's data in every store: what "forget me" and `/memories` work on.
#[derive(Clone)]
pub struct UserData {
    /// The embedded database file (always present: it holds whichever stores are embedded).
    pub(super) db: std::path::PathBuf,
    pub(super) history: Arc<dyn HistoryStore>,
    pub(super) memory: Arc<dyn MemoryStore>,
    pub(super) facts: Arc<dyn FactStore>,
    pub(super) jobs: Arc<dyn JobQueue>,
}

/// What "forget me" deletes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForgetScope {
    #[default]
    All,
    Memories,
    Facts,
    History,
}

impl UserData {
    /// Deletes everything stored about `user` (all characters, all scopes).
    pub async fn forget(&self, user: &str) -> anyhow::Result<ForgetReport> {
        self.forget_scoped(user, ForgetScope::All).await
    }

    /// Deletes what `scope` names about `user`. Queued jobs go first in every scope, so none
    /// re-creates what is deleted next.
    pub async fn forget_scoped(
        &self,
        user: &str,
        scope: ForgetScope,
    ) -> anyhow::Result<ForgetReport> {
        let all = scope == ForgetScope::All;
        let mut report = ForgetReport {
            jobs: self
                .jobs
                .forget_user(user)
                .await
                .context("forgetting queued jobs")?,
            ..Default::default()
        };
        if all || scope == ForgetScope::History {
            (report.turns, report.profiles) = self
                .history
                .forget_user(user)
                .await
                .context("forgetting history")?;
        }
        if all || scope == ForgetScope::Memories {
            report.memories = self
                .memory
                .forget_user(user)
                .await
                .context("forgetting memories")?;
        }
        if all || scope == ForgetScope::Facts {
            report.facts = self
                .facts
                .forget_user(user)
                .await
                .context("forgetting facts")?;
        }
        // Deleted rows are zeroed in place (secure_delete); the log's older page versions go too.
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || sqlite::checkpoint(&db)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                warn!(%error, "could not truncate the write-ahead log after a forget")
            }
            Err(error) => warn!(%error, "the write-ahead log checkpoint panicked"),
        }
        Ok(report)
    }

    /// The newest `limit` turns of a conversation in a scope, oldest first.
    pub async fn history(
        &self,
        key: &ConversationKey,
        scope: &whisper_actors::Scope,
        limit: usize,
    ) -> anyhow::Result<Vec<whisper_actors::ports::Turn>> {
        Ok(self.history.recent_turns(key, scope, limit).await?)
    }

    /// What the bot knows about the user across characters (first and last seen, messages).
    pub async fn profile(
        &self,
        user: &str,
    ) -> anyhow::Result<Option<whisper_actors::ports::Profile>> {
        Ok(self.history.profile(user).await?)
    }

    /// The user's current facts.
    pub async fn facts(&self, user: &str) -> anyhow::Result<Vec<whisper_actors::graph::Fact>> {
        Ok(self.facts.current(user).await?)
    }

    /// Background jobs waiting or running.
    pub async fn pending_jobs(&self) -> anyhow::Result<u64> {
        let c = self.jobs.counts().await?;
        Ok(c.ready + c.leased)
    }

    pub async fn memories(
        &self,
        key: &ConversationKey,
        limit: usize,
    ) -> anyhow::Result<Vec<Candidate>> {
        Ok(self.memory.list(key, limit).await?)
    }
}

/// What a transport's user commands need from the running app, cloneable into handlers.
#[derive(Clone)]
pub struct UserControl {
    pub(super) data: UserData,
    pub(super) router: ShardRouter,
    pub(super) jobs: Option<Arc<whisper_actors::jobs::JobSystem>>,
    pub(super) stats: Arc<whisper_actors::stats::RuntimeStats>,
    pub(super) grace: Duration,
    pub(super) channel_log: Option<Arc<ChannelLog>>,
}

impl UserControl {
    /// "Forget me": stops the user's conversations, lets a turn already in flight finish (it
    /// would otherwise store its turn, memories and facts behind the delete), drops queued jobs,
    /// waits out the user's running ones, then deletes what `scope` names.
    pub async fn forget(&self, user: &str, scope: ForgetScope) -> anyhow::Result<ForgetReport> {
        let forgotten = self.router.forget_user(user).await;
        if let Some(log) = &self.channel_log {
            log.forget(user);
        }
        if !forgotten.finished(self.grace).await {
            warn!(user, grace = ?self.grace, "a turn of the forgotten user is still running; deleting anyway");
        }
        let mut queued_jobs = 0;
        if let Some(jobs) = &self.jobs {
            queued_jobs = self
                .data
                .jobs
                .forget_user(user)
                .await
                .context("forgetting queued jobs")?;
            queued_jobs += jobs.forget_backlog(user);
            let deadline = tokio::time::Instant::now() + self.grace;
            while jobs.running_for(user) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let mut report = self.data.forget_scoped(user, scope).await?;
        report.jobs += queued_jobs;
        report.live_conversations = forgotten.count();
        info!(user, ?scope, %report, "user forgotten");
        Ok(report)
    }

    pub fn data(&self) -> &UserData {
        &self.data
    }

    /// Drops what this process keeps of the user's guild messages (channel context).
    pub fn forget_channel_context(&self, user: &str) {
        if let Some(log) = &self.channel_log {
            log.forget(user);
        }
    }

    pub fn status(&self) -> whisper_actors::stats::StatusSnapshot {
        self.stats.snapshot()
    }

    pub fn router(&self) -> &ShardRouter {
        &self.router
    }
}
