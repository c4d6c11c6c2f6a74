//! The operator's HTTP endpoint: `/metrics` (Prometheus text) and `/healthz` (each store and
//! the model endpoint, with status).
//!
//! Histograms and counters recorded where events happen (the pipeline's per-step latencies)
//! go through the `metrics` facade; the runtime's own counters and gauges (live conversations
//! per shard, queue depths, restarts, store errors) are plain atomics, copied into gauges at
//! each scrape so that reading them costs the actors nothing.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use whisper_actors::ConversationKey;
use whisper_actors::stats::{RuntimeStats, StatusSnapshot};

use crate::app::UserData;

/// Histogram buckets for step latencies, in seconds (1 ms to 30 s).
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process-wide Prometheus recorder (installed once; every App in the process shares it).
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            warn!("a metrics recorder was already installed; /metrics shows runtime gauges only");
        }
        handle
    })
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {address} (metrics.address): {source}")]
pub struct BindError {
    address: String,
    source: std::io::Error,
}

/// What the endpoint reads.
#[derive(Clone)]
struct Observed {
    stats: Arc<RuntimeStats>,
    data: UserData,
    /// The model endpoint's base URL (`None`: an in-process model, always up).
    llm: Option<String>,
    http: reqwest::Client,
    metrics: &'static PrometheusHandle,
}

pub struct Endpoint {
    pub address: SocketAddr,
    task: JoinHandle<()>,
}

impl Endpoint {
    /// Binds `address` and serves until [`Endpoint::stop`].
    pub async fn start(
        address: &str,
        stats: Arc<RuntimeStats>,
        data: UserData,
        llm: Option<String>,
    ) -> Result<Endpoint, BindError> {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| BindError {
                address: address.to_owned(),
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| BindError {
            address: address.to_owned(),
            source,
        })?;
        crate::tls::install_provider();
        let observed = Observed {
            stats,
            data,
            llm,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
            metrics: recorder(),
        };
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .with_state(observed);
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                warn!(%error, "metrics endpoint stopped");
            }
        });
        info!(address = %bound, "metrics on /metrics, health on /healthz");
        Ok(Endpoint {
            address: bound,
            task,
        })
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

async fn metrics(State(o): State<Observed>) -> Response {
    export(&o.stats.snapshot());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        o.metrics.render(),
    )
        .into_response()
}

/// Copies the runtime's counters into Prometheus gauges (counters that only grow are exported
/// as `_total` counters set to their absolute value).
fn export(s: &StatusSnapshot) {
    for shard in &s.shards {
        let id = shard.id.to_string();
        gauge!("whisper_live_conversations", "shard" => id.clone())
            .set(shard.live_conversations as f64);
        gauge!("whisper_pending_messages", "shard" => id.clone())
            .set(shard.pending_messages as f64);
        counter!("whisper_restarts_total", "shard" => id.clone()).absolute(shard.restarts);
        counter!("whisper_escalations_total", "shard" => id.clone()).absolute(shard.escalations);
        counter!("whisper_passivated_total", "shard" => id).absolute(shard.passivated);
    }
    counter!("whisper_messages_total").absolute(s.messages);
    counter!("whisper_replies_total").absolute(s.replies);
    counter!("whisper_failed_replies_total").absolute(s.failed_replies);
    counter!("whisper_degraded_replies_total").absolute(s.degraded_context);
    counter!("whisper_store_write_failures_total").absolute(s.store_write_failures);
    counter!("whisper_tool_calls_total").absolute(s.tool_calls);
    counter!("whisper_tool_failures_total").absolute(s.tool_failures);
    counter!("whisper_rate_limited_total").absolute(s.rate_limited);
    counter!("whisper_actor_restarts_total", "kind" => "LlmActor").absolute(s.llm.restarts);
    counter!("whisper_actor_restarts_total", "kind" => "ClassifierActor")
        .absolute(s.classifier_restarts);
    counter!("whisper_actor_restarts_total", "kind" => "Shard").absolute(s.shard_restarts);
    gauge!("whisper_llm_in_flight").set(s.llm.in_flight as f64);
    gauge!("whisper_llm_queued").set(s.llm.queued as f64);
    gauge!("whisper_llm_max_concurrent").set(s.llm.max_concurrent as f64);
    counter!("whisper_llm_retries_total").absolute(s.llm.retries);
    counter!("whisper_llm_timeouts_total").absolute(s.llm.timeouts);
    counter!("whisper_llm_failures_total").absolute(s.llm.failures);
    counter!("whisper_llm_refused_total").absolute(s.llm.rejected_overloaded);
    for pool in &s.pools {
        let name = pool.name.clone();
        gauge!("whisper_pool_size", "pool" => name.clone()).set(pool.size as f64);
        gauge!("whisper_pool_queue_depth", "pool" => name.clone()).set(pool.queue_depth as f64);
        counter!("whisper_store_errors_total", "pool" => name.clone()).absolute(pool.errors);
        counter!("whisper_pool_restarts_total", "pool" => name.clone()).absolute(pool.restarts);
        counter!("whisper_pool_escalations_total", "pool" => name).absolute(pool.escalations);
    }
}

#[derive(Serialize)]
struct Check {
    ok: bool,
    ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    checks: std::collections::BTreeMap<&'static str, Check>,
}

async fn timed<E: std::fmt::Display>(
    probe: impl std::future::Future<Output = Result<(), E>>,
) -> Check {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(3), probe).await;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    match result {
        Ok(Ok(())) => Check {
            ok: true,
            ms,
            error: None,
        },
        Ok(Err(e)) => Check {
            ok: false,
            ms,
            error: Some(e.to_string()),
        },
        Err(_) => Check {
            ok: false,
            ms,
            error: Some("no answer within 3 s".into()),
        },
    }
}

/// Each store answers a cheap read for a user that does not exist; the model endpoint answers
/// `GET /models` (any HTTP answer means it is up).
async fn healthz(State(o): State<Observed>) -> Response {
    const PROBE: &str = "healthz:probe";
    let key = ConversationKey::new("healthz", PROBE);
    let (history, memory, facts, jobs, llm) = tokio::join!(
        timed(async { o.data.profile(PROBE).await.map(|_| ()) }),
        timed(async { o.data.memories(&key, 1).await.map(|_| ()) }),
        timed(async { o.data.facts(PROBE).await.map(|_| ()) }),
        timed(async { o.data.pending_jobs().await.map(|_| ()) }),
        timed(async {
            match &o.llm {
                None => Ok(()),
                Some(base) => o
                    .http
                    .get(format!("{}/models", base.trim_end_matches('/')))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| anyhow::anyhow!("{e}")),
            }
        }),
    );
    let checks: std::collections::BTreeMap<&'static str, Check> = [
        ("history", history),
        ("memory", memory),
        ("facts", facts),
        ("jobs", jobs),
        ("llm", llm),
    ]
    .into_iter()
    .collect();
    let healthy = checks.values().all(|c| c.ok);
    let health = Health {
        status: if healthy { "ok" } else { "degraded" },
        checks,
    };
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(health)).into_response()
}
