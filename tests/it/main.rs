//! Integration tests: the real application (actors, SQLite, async-openai over a socket) against
//! a scripted OpenAI-compatible server, and the real binary, including against llama-server.

#[path = "../support/mod.rs"]
mod support;

mod backup;
mod binary;
mod cancellation;
mod classifier;
mod cluster;
mod cluster_processes;
mod context;
mod discord;
mod embeddings;
mod facts;
mod fast_track;
mod forget;
mod limits;
mod llm_errors;
mod local_llm;
mod memory;
mod observe;
mod ordering;
mod outages;
mod passivation;
mod recall;
mod reload;
mod stores;
mod streaming;
mod supervision;
mod tools;
