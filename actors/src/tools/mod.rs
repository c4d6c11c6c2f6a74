//! Tools the model may call on the full path: search the user's memories, look up facts about
//! an entity, recall past conversations' summaries.
//!
//! Privacy does not depend on the model: every tool runs for the conversation's own user,
//! character and scope ([`ToolScope`], set by the pipeline). Arguments only say *what* to look
//! for, never *whose*, so no argument can reach another user's data or carry a DM into a guild.
//!
//! Several calls in one round run at once, each under its own deadline; a failing or slow tool
//! answers with an error text the model can read, and the reply goes on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::join_all;
use serde::Deserialize;
use serde_json::json;
use tracing::{Instrument, info_span, warn};

use crate::graph::{FactStore, about, describe_facts};
use crate::key::{ConversationKey, Scope};
use crate::memory::{
    AllowedScopes, MemoryKind, MemoryQuery, MemoryStore, RankSettings, describe_age,
    describe_memories, rank,
};
use crate::ports::{ChatMessage, Embedder, Embedding, ToolCall, ToolSpec};

/// Whose data a tool may read: fixed by the pipeline, never by the model.
#[derive(Clone, Debug)]
pub struct ToolScope {
    pub key: ConversationKey,
    pub scope: Scope,
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("invalid arguments: {0}")]
    Arguments(String),
    #[error("{0}")]
    Failed(String),
}

impl From<crate::ports::StoreError> for ToolError {
    fn from(e: crate::ports::StoreError) -> Self {
        ToolError::Failed(e.to_string())
    }
}

#[async_trait]
pub trait Tool: Send + Sync + 'static {
    fn spec(&self) -> ToolSpec;
    /// Runs the call for `scope`'s user; the result is text for the model.
    async fn call(&self, scope: &ToolScope, arguments: &str) -> Result<String, ToolError>;
}

fn parse<T: for<'de> Deserialize<'de>>(arguments: &str) -> Result<T, ToolError> {
    let arguments = if arguments.trim().is_empty() {
        "{}"
    } else {
        arguments
    };
    serde_json::from_str(arguments).map_err(|e| ToolError::Arguments(e.to_string()))
}

/// The tools on offer and how calls to them run.
pub struct Toolbox {
    tools: Vec<Arc<dyn Tool>>,
    specs: Vec<ToolSpec>,
    /// Model rounds that may call tools in one turn; the round after the last must answer.
    pub max_rounds: u32,
    pub timeout: Duration,
}

/// What a round of tool calls produced: one `Role::Tool` message per call, in call order.
pub struct ToolResults {
    pub messages: Vec<ChatMessage>,
    pub failures: usize,
    pub elapsed: Duration,
}

impl Toolbox {
    pub fn new(tools: Vec<Arc<dyn Tool>>, max_rounds: u32, timeout: Duration) -> Self {
        let specs = tools.iter().map(|t| t.spec()).collect();
        Self {
            tools,
            specs,
            max_rounds,
            timeout,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty() || self.max_rounds == 0
    }

    pub fn specs(&self) -> &[ToolSpec] {
        &self.specs
    }

    /// Runs every call at once; the round takes as long as its slowest call (or the deadline).
    pub async fn run(&self, scope: &ToolScope, calls: &[ToolCall]) -> ToolResults {
        let started = Instant::now();
        let outcomes = join_all(calls.iter().map(|call| {
            let span = info_span!("tool", name = %call.name, call_id = %call.id);
            async move {
                let tool = self.tools.iter().find(|t| t.spec().name == call.name);
                let result = match tool {
                    None => Err(ToolError::Arguments(format!(
                        "there is no tool named {:?}",
                        call.name
                    ))),
                    Some(tool) => {
                        match tokio::time::timeout(self.timeout, tool.call(scope, &call.arguments))
                            .await
                        {
                            Ok(result) => result,
                            Err(_) => Err(ToolError::Failed(format!(
                                "no answer within {:?}",
                                self.timeout
                            ))),
                        }
                    }
                };
                if let Err(error) = &result {
                    warn!(%error, "tool call failed; the model is told");
                }
                result
            }
            .instrument(span)
        }))
        .await;
        let mut failures = 0;
        let messages = calls
            .iter()
            .zip(outcomes)
            .map(|(call, outcome)| {
                let text = outcome.unwrap_or_else(|e| {
                    failures += 1;
                    format!("error: {e}")
                });
                ChatMessage::tool_result(&call.id, text)
            })
            .collect();
        ToolResults {
            messages,
            failures,
            elapsed: started.elapsed(),
        }
    }
}

/// Embeds one query (the tools' searches are worded by the model, not the user's message).
async fn embed_query(embedder: &dyn Embedder, query: String) -> Result<Embedding, ToolError> {
    embedder
        .embed(vec![query])
        .await
        .map_err(|e| ToolError::Failed(e.to_string()))?
        .pop()
        .ok_or_else(|| ToolError::Failed("the embedder returned nothing".into()))
}

/// `search_memories(query)`: the user's memories closest to a query the model words itself
/// (the prompt already holds the ones closest to the message).
pub struct SearchMemories {
    pub store: Arc<dyn MemoryStore>,
    pub embedder: Arc<dyn Embedder>,
    pub rank: crate::live::Live<RankSettings>,
    pub guild_memories_in_dm: bool,
    pub clock: Arc<dyn crate::clock::Clock>,
}

#[derive(Deserialize)]
struct QueryArgs {
    query: String,
}

#[async_trait]
impl Tool for SearchMemories {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "search_memories".into(),
            description: "Search what this user said to you before, by meaning.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"query": {"type": "string", "description": "What to look for"}},
                "required": ["query"]
            }),
        }
    }

    async fn call(&self, scope: &ToolScope, arguments: &str) -> Result<String, ToolError> {
        let QueryArgs { query } = parse(arguments)?;
        if query.trim().is_empty() {
            return Err(ToolError::Arguments("query is empty".into()));
        }
        let vector = embed_query(self.embedder.as_ref(), query.clone()).await?;
        let rank_settings = self.rank.get();
        let candidates = self
            .store
            .search(MemoryQuery {
                key: scope.key.clone(),
                scopes: AllowedScopes::for_scope(&scope.scope, self.guild_memories_in_dm),
                vector,
                text: query.clone(),
                limit: rank_settings.top_k * 4,
            })
            .await?;
        let now = self.clock.now_ms();
        let ranked = rank(candidates, &rank_settings, &query, now);
        if ranked.is_empty() {
            return Ok("No matching memories.".into());
        }
        Ok(describe_memories(ranked.iter().map(|(_, c)| c), now))
    }
}

/// `lookup_facts(entity)`: what the user's graph says about a person, place or thing, up to
/// `hops` edges away.
pub struct LookupFacts {
    pub store: Arc<dyn FactStore>,
    pub hops: usize,
}

#[derive(Deserialize)]
struct EntityArgs {
    entity: String,
}

#[async_trait]
impl Tool for LookupFacts {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "lookup_facts".into(),
            description: "Look up known facts about a person, place or thing in this user's life \
                          (use \"user\" for the user themself)."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {"entity": {"type": "string", "description": "A name, e.g. Ana"}},
                "required": ["entity"]
            }),
        }
    }

    async fn call(&self, scope: &ToolScope, arguments: &str) -> Result<String, ToolError> {
        let EntityArgs { entity } = parse(arguments)?;
        let facts = self.store.current(&scope.key.user).await?;
        let found = about(&facts, &entity, self.hops);
        if found.is_empty() {
            return Ok(format!("Nothing known about {entity}."));
        }
        Ok(describe_facts(&found))
    }
}

/// `recall_summaries(query?)`: summaries of past conversations with this character, the closest
/// to `query` or else the newest.
pub struct RecallSummaries {
    pub store: Arc<dyn MemoryStore>,
    pub embedder: Arc<dyn Embedder>,
    pub guild_memories_in_dm: bool,
    pub limit: usize,
    pub clock: Arc<dyn crate::clock::Clock>,
}

#[derive(Deserialize)]
struct OptionalQuery {
    #[serde(default)]
    query: Option<String>,
}

#[async_trait]
impl Tool for RecallSummaries {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "recall_summaries".into(),
            description: "Recall summaries of your past conversations with this user, optionally \
                          about a topic."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {"query": {"type": "string", "description": "Optional topic"}}
            }),
        }
    }

    async fn call(&self, scope: &ToolScope, arguments: &str) -> Result<String, ToolError> {
        let OptionalQuery { query } = parse(arguments)?;
        let allowed = AllowedScopes::for_scope(&scope.scope, self.guild_memories_in_dm);
        let mut summaries = match query.filter(|q| !q.trim().is_empty()) {
            Some(query) => {
                let vector = embed_query(self.embedder.as_ref(), query.clone()).await?;
                let mut found = self
                    .store
                    .search(MemoryQuery {
                        key: scope.key.clone(),
                        scopes: allowed.clone(),
                        vector,
                        text: query,
                        limit: self.limit * 20,
                    })
                    .await?;
                found.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
                found
            }
            None => self.store.list(&scope.key, self.limit * 20).await?,
        };
        // `list` covers every scope of the conversation: the scope rule applies here too.
        summaries.retain(|c| c.kind == MemoryKind::Summary && allowed.allows(&c.scope));
        summaries.truncate(self.limit);
        if summaries.is_empty() {
            return Ok("No summaries of past conversations yet.".into());
        }
        let now = self.clock.now_ms();
        Ok(summaries
            .iter()
            .map(|c| format!("- ({}) {}", describe_age(now, c.created_at_ms), c.text))
            .collect::<Vec<_>>()
            .join("\n"))
    }
}
