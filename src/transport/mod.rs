//! Transports: where messages come from and replies go. Each hands `UserMessage`s to the
//! `ShardRouter` and consumes `ReplyUpdate`s.

pub mod console;
pub mod discord;

/// Ctrl-C or SIGTERM: both end a transport gracefully (replies in flight finish and are stored).
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Waits for Ctrl-C or SIGTERM (long-running transports such as Discord).
pub async fn wait_for_shutdown() {
    shutdown_signal().await
}
