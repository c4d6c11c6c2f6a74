//! Logging setup: `tracing` spans per pipeline step, to stderr (or a file while the interactive
//! chat owns the terminal).

use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogFormat, LoggingSection};

pub enum LogTarget<'a> {
    Stderr,
    File(&'a Path),
}

/// The filter for `logging.level`. Message content never reaches a log above trace level: our
/// own code logs lengths and ids, and the Discord libraries are held to what is safe, because
/// serenity prints a whole gateway payload when one fails to parse (at warn) and records request
/// bodies in its HTTP spans (at info). Naming `serenity` in `logging.level` overrides this.
pub fn filter_directives(level: &str) -> String {
    let level = if level.trim().is_empty() {
        "info"
    } else {
        level.trim()
    };
    if level.contains("serenity") {
        level.to_owned()
    } else {
        format!("{level},serenity=warn,serenity::gateway::ws=error")
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `logging.level`.
pub fn init(logging: &LoggingSection, target: LogTarget<'_>) -> std::io::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(filter_directives(&logging.level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match (target, logging.format) {
        (LogTarget::Stderr, LogFormat::Pretty) => builder.with_writer(std::io::stderr).try_init(),
        (LogTarget::Stderr, LogFormat::Json) => {
            builder.json().with_writer(std::io::stderr).try_init()
        }
        (LogTarget::File(path), format) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            let builder = builder.with_ansi(false).with_writer(Mutex::new(file));
            match format {
                LogFormat::Pretty => builder.try_init(),
                LogFormat::Json => builder.json().try_init(),
            }
        }
    };
    // A subscriber already installed (tests) is fine.
    let _ = result;
    Ok(())
}
