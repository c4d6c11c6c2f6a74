use std::path::PathBuf;

use whisper_actors::ports::Embedder;
use whisperengine::config::EmbeddingSection;
use whisperengine::embed::LocalEmbedder;

use crate::support::app::run_actix;

fn section() -> EmbeddingSection {
    EmbeddingSection {
        enabled: true,
        onnxruntime: PathBuf::new(),
        model_dir: PathBuf::new(),
        max_length: 256,
        threads: 1,
        max_batch: 32,
        batch_wait: std::time::Duration::ZERO,
        arena: true,
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// The provisioned all-MiniLM-L6-v2 with mean pooling reproduces the reference similarities.
#[test]
fn local_embeddings_match_the_reference_model() {
    run_actix(|| async {
        let embedder = LocalEmbedder::start(&section(), 1).expect("provisioned model loads");
        assert_eq!(embedder.dimensions(), 384);
        let v = embedder
            .embed(vec![
                "hello there".into(),
                "hi!".into(),
                "explain quantum physics".into(),
            ])
            .await
            .unwrap();
        let greeting = cosine(&v[0], &v[1]);
        let unrelated = cosine(&v[0], &v[2]);
        assert!(
            (greeting - 0.61).abs() < 0.03,
            "cos(hello there, hi!) = {greeting}"
        );
        assert!(
            (unrelated - 0.06).abs() < 0.03,
            "cos(hello there, quantum) = {unrelated}"
        );
    });
}

/// Concurrent requests share inferences (fewer inferences than requests), and each caller's
/// vectors equal the ones it gets alone, to 1e-6 (padding to the batch's longest sentence is
/// masked out of the mean pooling).
#[test]
fn batched_vectors_equal_one_by_one_vectors() {
    run_actix(|| async {
        let embedder = LocalEmbedder::start(&section(), 1).expect("provisioned model loads");
        let requests: Vec<Vec<String>> = (0..24)
            .map(|i| match i % 3 {
                0 => vec![format!("hi {i}")],
                1 => vec![
                    format!("my sister {i} moved to a flat in Cork last spring and loves it"),
                    "ok".to_owned(),
                ],
                _ => vec![format!(
                    "what did I tell you about the recipe with {i} eggs, the long one from my grandmother's notebook?"
                )],
            })
            .collect();
        let mut alone = Vec::new();
        for texts in &requests {
            alone.push(embedder.embed(texts.clone()).await.unwrap());
        }
        let counts = embedder.batch_counts();
        let before = counts.inferences.load(std::sync::atomic::Ordering::Relaxed);
        let together = futures::future::join_all(requests.iter().enumerate().map(|(i, texts)| {
            let (embedder, texts) = (&embedder, texts.clone());
            async move {
                if i % 2 == 0 {
                    embedder.embed(texts).await
                } else {
                    embedder.embed_background(texts).await
                }
            }
        }))
        .await;
        let inferences = counts.inferences.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert!(inferences < 24, "{inferences} inferences for 24 requests");
        for (i, (batched, single)) in together.into_iter().zip(&alone).enumerate() {
            let batched = batched.unwrap();
            assert_eq!(batched.len(), single.len(), "request {i}");
            for (b, s) in batched.iter().zip(single) {
                let worst = b
                    .iter()
                    .zip(s.iter())
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst < 1e-6, "request {i}: differs by {worst}");
            }
        }
    });
}

#[test]
fn a_missing_model_file_is_a_clear_error() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = section();
        cfg.model_dir = dir.path().to_owned();
        let error = LocalEmbedder::start(&cfg, 1)
            .err()
            .expect("no model there")
            .to_string();
        assert!(
            error.contains("model.onnx") && error.contains("bot.sh provision"),
            "{error}"
        );
        let mut cfg = section();
        cfg.onnxruntime = dir.path().join("libonnxruntime.so");
        let error = LocalEmbedder::start(&cfg, 1)
            .err()
            .expect("no runtime there")
            .to_string();
        assert!(error.contains("ONNX Runtime library not found"), "{error}");
    });
}
