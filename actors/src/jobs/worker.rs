//! A job worker actor: leases and runs jobs one at a time; a pool of them drains the queue.

use std::sync::Arc;

use actix::prelude::*;
use futures::FutureExt;
use tracing::info;

use super::JobSystem;

/// One worker: leases and runs jobs one at a time, forever.
pub struct JobWorker {
    system: Arc<JobSystem>,
    /// Set to retire the worker (`jobs.workers` shrank): it finishes the job it runs, then
    /// stops instead of leasing another.
    retired: Arc<std::sync::atomic::AtomicBool>,
}

impl JobWorker {
    pub fn new(system: Arc<JobSystem>) -> Self {
        Self::retirable(system, Default::default())
    }

    pub fn retirable(system: Arc<JobSystem>, retired: Arc<std::sync::atomic::AtomicBool>) -> Self {
        Self { system, retired }
    }
}

impl Actor for JobWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (system, retired) = (self.system.clone(), self.retired.clone());
        ctx.spawn(
            async move {
                while !retired.load(std::sync::atomic::Ordering::Acquire) {
                    // A panic outside a job's own handler (which `run_one` already catches)
                    // must not end the worker: it is counted and the loop goes on.
                    let ran = std::panic::AssertUnwindSafe(system.run_one())
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|panic| {
                            system.stats.restarts.inc();
                            tracing::error!(cause = %crate::supervision::panic_message(&*panic), "job worker panicked; it carries on");
                            true
                        });
                    if !ran {
                        let _ = tokio::time::timeout(
                            system.settings.poll_interval,
                            system.wake.notified(),
                        )
                        .await;
                    }
                }
            }
            .into_actor(self)
            .map(|(), _, ctx: &mut Context<Self>| {
                info!("job worker retired");
                ctx.stop();
            }),
        );
        info!("job worker started");
    }
}

impl Supervised for JobWorker {}
