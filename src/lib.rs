//! whisperengine, the application: configuration, adapters for each store, the model and the
//! transports, and the wiring that assembles them around the actor core (`whisper_actors`).

pub mod app;
pub mod backup;
pub mod classifier;
#[cfg(feature = "server")]
pub mod cluster;
pub mod config;
pub mod embed;
pub mod heap;
pub mod llm;
pub mod observe;
pub mod secret;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod vision;
