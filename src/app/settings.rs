//! From the operator's configuration to the runtime's settings: one place maps every key.

use whisper_actors::RuntimeSettings;
use whisper_actors::llm::LlmPolicy;
use whisper_actors::supervision::RestartPolicy;

use crate::config::Settings;
use whisper_actors::jobs::JobSettings;
use whisper_actors::memory::{MemorySettings, RankSettings};
use whisper_actors::runtime::{FactSettings, ToolSettings};

impl Settings {
    pub fn restart_policy(&self) -> RestartPolicy {
        RestartPolicy {
            max_restarts: self.supervision.max_restarts,
            window: self.supervision.window,
            backoff_initial: self.supervision.backoff_initial,
            backoff_max: self.supervision.backoff_max,
        }
    }

    pub fn runtime_settings(&self) -> RuntimeSettings {
        RuntimeSettings {
            shards: self.runtime.shards,
            virtual_nodes: self.runtime.virtual_nodes,
            idle_timeout: self.runtime.idle_timeout,
            max_conversations_per_shard: self.runtime.max_conversations_per_shard,
            edit_interval: self.streaming.edit_interval,
            token_budget: self.context.token_budget,
            image_tokens: self.context.image_tokens,
            history_turns: self.context.history_turns,
            history_deadline: self.context.history_deadline,
            profile_deadline: self.context.profile_deadline,
            classifier_deadline: self.context.classifier_deadline,
            classifier_pool: self.pools.classifier,
            memory: MemorySettings {
                rank: RankSettings {
                    top_k: self.memory.top_k,
                    min_similarity: self.memory.min_similarity,
                    recency_half_life: self.memory.recency_half_life,
                    recency_weight: self.memory.recency_weight,
                    importance_weight: self.memory.importance_weight,
                    fusion_k: self.memory.fusion_k,
                },
                guild_memories_in_dm: self.memory.guild_memories_in_dm,
                deadline: self.context.memory_deadline,
                chunk_words: self.memory.chunk_words,
                summarise_every: self.memory.summarise_every,
                idle_summary_min_turns: self.memory.idle_summary_min_turns,
            },
            jobs: JobSettings {
                workers: self.jobs.workers,
                lease: self.jobs.lease,
                max_attempts: self.jobs.max_attempts,
                retry_backoff: self.jobs.retry_backoff,
                retry_backoff_max: self.jobs.retry_backoff_max,
                poll_interval: self.jobs.poll_interval,
            },
            jobs_shutdown_grace: self.jobs.shutdown_grace,
            facts: FactSettings {
                extract: self.facts.extract,
                hops: self.facts.hops,
                token_budget: self.facts.token_budget,
                deadline: self.context.facts_deadline,
                single_valued: self.facts.single_valued.clone(),
                min_confidence: self.facts.min_confidence,
                model: (!self.facts.model.is_empty()).then(|| self.facts.model.clone()),
            },
            tools: ToolSettings {
                enabled: self.tools.enabled,
                max_rounds: self.tools.max_rounds,
                timeout: self.tools.timeout,
                summaries: self.tools.summaries,
            },
            restart: self.restart_policy(),
            llm: LlmPolicy {
                max_concurrent: self.llm_concurrency(),
                queue_capacity: self.pools.llm_queue,
                first_token_timeout: self.llm.request_timeout,
                idle_timeout: self.llm.stream_idle_timeout,
                max_retries: self.llm.max_retries,
                retry_backoff: self.llm.retry_backoff,
                retry_backoff_max: self.llm.retry_backoff_max,
            },
        }
    }
}
