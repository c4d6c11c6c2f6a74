//! What a graceful shutdown reports: which part did not drain in time.

/// What a graceful shutdown left behind, by name: the operator reads which part did not drain
/// in time instead of a bare "timed out".
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Shards whose replies were still in flight at the deadline.
    pub undrained_shards: Vec<usize>,
    /// Background jobs still queued or running (kept in the queue for the next start).
    pub jobs_left: u64,
    /// Jobs held in memory while the queue was down: lost with the process.
    pub jobs_lost: usize,
}

impl ShutdownReport {
    pub fn drained(&self) -> bool {
        self.undrained_shards.is_empty() && self.jobs_left == 0 && self.jobs_lost == 0
    }
}

impl std::fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.drained() {
            return f.write_str("everything drained");
        }
        let mut parts = Vec::new();
        if !self.undrained_shards.is_empty() {
            parts.push(format!(
                "replies in flight on shards {:?}",
                self.undrained_shards
            ));
        }
        if self.jobs_left > 0 {
            parts.push(format!(
                "{} background jobs left queued for the next start",
                self.jobs_left
            ));
        }
        if self.jobs_lost > 0 {
            parts.push(format!(
                "{} jobs held in memory lost (queue down)",
                self.jobs_lost
            ));
        }
        write!(f, "did not drain in time: {}", parts.join("; "))
    }
}
