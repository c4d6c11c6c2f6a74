//! Model adapters: any OpenAI-compatible endpoint through async-openai, and the supervised
//! local llama.cpp server used when no endpoint is configured.

pub mod local_server;
pub mod openai;
