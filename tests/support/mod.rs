//! Shared test support: a scripted OpenAI-compatible server and helpers that start the real
//! application around it.

#![allow(dead_code)]

pub mod app;
pub mod arcadedb;
pub mod cluster;
pub mod discord;
pub mod openai_server;
pub mod pgvector;
pub mod proxy;
pub mod qdrant;
pub mod recall;
pub mod servers;
