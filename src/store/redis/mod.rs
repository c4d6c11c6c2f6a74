//! Redis (server mode): the shared cache (profiles, rate limits) and the durable job queue.

pub mod cache;
pub mod jobs;
