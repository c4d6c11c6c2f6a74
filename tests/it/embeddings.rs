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
