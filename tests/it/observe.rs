//! The operator endpoint: Prometheus metrics and per-dependency health, over real HTTP.

use crate::support::app::{Client, extras, is_done, run_actix, settings, start};
use crate::support::openai_server::ScriptedLlm;

async fn get(url: String) -> (u16, String) {
    let response = reqwest::get(url).await.expect("endpoint answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[test]
fn metrics_and_health_are_served() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.metrics.address = "127.0.0.1:0".into();
        let app = start(s, extras(vec![])).await;
        let addr = app.metrics_address().expect("endpoint enabled");
        let mut mo = Client::new("aria", "test:mo");
        assert!(is_done(&mo.ask(&app, "hello there!").await));
        assert!(is_done(
            &mo.ask(&app, "what did I tell you about my job last week?")
                .await
        ));

        let (status, body) = get(format!("http://{addr}/metrics")).await;
        assert_eq!(status, 200);
        for expected in [
            "whisper_replies_total 2",
            "whisper_messages_total 2",
            "whisper_step_seconds_bucket{step=\"total\"",
            "whisper_step_seconds_bucket{step=\"first_token\"",
            "whisper_step_seconds_count{step=\"context\"} 2",
            "whisper_replies_by_route_total{route=\"fast\"} 1",
            "whisper_replies_by_route_total{route=\"full\"} 1",
            "whisper_live_conversations{shard=",
            "whisper_pool_queue_depth{pool=\"history\"}",
            "whisper_llm_in_flight",
            "whisper_restarts_total{shard=",
        ] {
            assert!(body.contains(expected), "{expected} missing from:\n{body}");
        }

        // The Grafana dashboard and the docs only name metrics the bot exports.
        let dashboard = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docker/grafana/dashboards/whisperengine.json"
        ))
        .unwrap();
        for name in metric_names(&dashboard) {
            assert!(body.contains(&name), "dashboard uses {name}, not exported");
        }

        let (status, body) = get(format!("http://{addr}/healthz")).await;
        assert_eq!(status, 200, "{body}");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["status"], "ok");
        for check in ["history", "memory", "facts", "jobs", "llm"] {
            assert_eq!(health["checks"][check]["ok"], true, "{body}");
        }
        app.shutdown().await;
    });
}

/// A model endpoint that is down shows in /healthz (503, naming it) while the bot runs on.
#[test]
fn health_names_what_is_down() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), "http://127.0.0.1:1/v1");
        s.metrics.address = "127.0.0.1:0".into();
        let app = start(s, extras(vec![])).await;
        let addr = app.metrics_address().unwrap();
        let (status, body) = get(format!("http://{addr}/healthz")).await;
        assert_eq!(status, 503, "{body}");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["status"], "degraded");
        assert_eq!(health["checks"]["llm"]["ok"], false);
        assert!(health["checks"]["llm"]["error"].is_string());
        assert_eq!(health["checks"]["history"]["ok"], true);
        app.shutdown().await;
    });
}

/// Every `whisper_*` metric name in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .match_indices("whisper_")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() > 10, "{names:?}");
    names
}
