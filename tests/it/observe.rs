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
            "whisper_pool_queue_depth{pool=\"history (sqlite)\"}",
            "whisper_pool_size{pool=\"MemoryActor (sqlite)\"}",
            "whisper_pool_restarts_total{pool=\"GraphActor (sqlite)\"}",
            "whisper_actor_restarts_total{kind=\"LlmActor\"}",
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

/// The deployment files name only configuration keys the bot knows: every `WHISPER__*` line of
/// docker/example.env loads (an unknown key or a wrong type would be an error naming it).
#[test]
fn the_example_env_file_matches_the_configuration() {
    let env = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/example.env"))
        .unwrap();
    let mut seen = 0;
    for line in env.lines() {
        let line = line.trim();
        if let Some((key, value)) = line.split_once('=')
            && key.starts_with("WHISPER__")
        {
            // This test runs in its own process (nextest), so setting variables is safe.
            unsafe { std::env::set_var(key, value) };
            seen += 1;
        }
    }
    assert!(seen >= 10, "{seen}");
    let loaded = whisperengine::config::load(&whisperengine::config::Overrides {
        config_file: None,
        data_dir: None,
        ignore_environment: false,
    })
    .expect("example.env is valid configuration");
    let s = loaded.settings;
    assert_eq!(
        s.storage.history,
        whisperengine::config::HistoryBackend::Postgres
    );
    assert_eq!(s.storage.facts, whisperengine::config::FactsBackend::Neo4j);
    assert_eq!(s.storage.jobs, whisperengine::config::JobsBackend::Redis);
    assert!(s.discord.tokens.contains_key("aria"));
}
