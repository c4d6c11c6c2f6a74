use std::path::Path;

use whisper_actors::classifier::Route;
use whisper_actors::ports::Embedder;
use whisperengine::config::EmbeddingSection;
use whisperengine::embed::LocalEmbedder;

use crate::support::app::run_actix;

/// The shipped intents against the labelled set in tests/data: fast-track precision >= 0.95
/// (a message that needs memory is almost never fast-tracked) and recall >= 0.6.
#[test]
fn the_fast_track_is_precise_on_the_labelled_set() {
    run_actix(|| async {
        let cfg = EmbeddingSection {
            enabled: true,
            onnxruntime: "".into(),
            model_dir: "".into(),
            max_length: 256,
            threads: 1,
            max_batch: 32,
            batch_wait: std::time::Duration::ZERO,
            arena: true,
        };
        let embedder = LocalEmbedder::start(&cfg, 1).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let intents = whisperengine::classifier::load(
            &root.join("config/intents.toml"),
            cache.path(),
            &embedder,
        )
        .await
        .unwrap();
        let data = std::fs::read_to_string(root.join("tests/data/classifier.tsv")).unwrap();
        let rows: Vec<(Route, &str)> = data
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (label, text) = l.split_once('\t').unwrap();
                (
                    if label == "fast" {
                        Route::Fast
                    } else {
                        Route::Full
                    },
                    text,
                )
            })
            .collect();
        assert!(rows.len() >= 150, "{} labelled messages", rows.len());
        let vectors = embedder
            .embed(rows.iter().map(|(_, t)| t.to_string()).collect())
            .await
            .unwrap();
        let (mut tp, mut fp, mut fn_) = (0, 0, 0);
        let mut mistakes = Vec::new();
        for ((label, text), vector) in rows.iter().zip(&vectors) {
            let verdict = intents.classify(text, vector);
            match (label, verdict.route) {
                (Route::Fast, Route::Fast) => tp += 1,
                (Route::Full, Route::Fast) => {
                    fp += 1;
                    mistakes.push(format!(
                        "FAST but needs context: {text:?} ({:?} {:.2})",
                        verdict.intent, verdict.score
                    ));
                }
                (Route::Fast, Route::Full) => {
                    fn_ += 1;
                    mistakes.push(format!(
                        "missed: {text:?} ({:?} {:.2} {})",
                        verdict.intent, verdict.score, verdict.reason
                    ));
                }
                _ => {}
            }
        }
        let precision = tp as f64 / (tp + fp).max(1) as f64;
        let recall = tp as f64 / (tp + fn_) as f64;
        eprintln!(
            "precision {precision:.3} recall {recall:.3}\n{}",
            mistakes.join("\n")
        );
        assert!(precision >= 0.95, "precision {precision:.3}");
        assert!(recall >= 0.6, "recall {recall:.3}");

        // A second load reads the cached vectors and classifies identically.
        let again = whisperengine::classifier::load(
            &root.join("config/intents.toml"),
            cache.path(),
            &embedder,
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1);
        assert_eq!(
            again.classify("hello!!", &vectors[0]),
            intents.classify("hello!!", &vectors[0])
        );
    });
}
