//! Wall-clock time as the stores keep it: milliseconds since the Unix epoch.
//!
//! One function so every timestamp (turns, memories, facts, jobs) is on the same scale, and a
//! clock set before 1970 reads as 0 instead of panicking.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
