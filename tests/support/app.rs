//! Starting the real application in-process, against the scripted model server and a real
//! SQLite database in a temporary directory.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use whisper_actors::conversation::context::ContextProvider;
use whisper_actors::messages::{ReplyStatus, ReplyUpdate};
use whisper_actors::sink::ChannelSink;
use whisper_actors::{ConversationKey, Scope, UserMessage};
use whisperengine::app::{App, Extras};
use whisperengine::config::{self, Overrides, Settings};

/// Runs `f` inside an actix System on a multi-threaded tokio runtime, like the binary does.
pub fn run_actix<F, Fut>(f: F) -> Fut::Output
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    });
    system.block_on(f())
}

/// Settings for tests: defaults, data in `dir`, model at `base_url`, quick timings.
pub fn settings(dir: &Path, base_url: &str) -> Settings {
    let mut s = config::load(&Overrides {
        config_file: None,
        data_dir: Some(dir.to_owned()),
        // The developer's own WHISPER__* settings must not change what a test runs against.
        ignore_environment: true,
    })
    .expect("default configuration loads")
    .settings;
    s.llm.base_url = base_url.into();
    s.llm.model = "scripted".to_owned();
    s.llm.retry_backoff = Duration::from_millis(20);
    s.streaming.edit_interval = Duration::from_millis(50);
    s.runtime.status_interval = Duration::from_secs(3600);
    s.runtime.shutdown_timeout = Duration::from_secs(10);
    s.jobs.poll_interval = Duration::from_millis(50);
    s.jobs.retry_backoff = Duration::from_millis(20);
    // Tests and benchmarks send many messages per user; the limits have their own tests.
    s.limits.messages_per_window = 0;
    s
}

pub async fn start(settings: Settings, extras: Extras) -> App {
    let characters = config::characters::load_dir(&settings.characters.dir).expect("characters");
    App::start_with(settings, characters, extras)
        .await
        .expect("app starts")
}

pub fn extras(providers: Vec<Arc<dyn ContextProvider>>) -> Extras {
    Extras {
        providers,
        model: None,
        tools: Vec::new(),
        clock: None,
    }
}

/// A console-like user: sends messages and collects the updates for each.
pub struct Client {
    pub key: ConversationKey,
    pub scope: Scope,
    sink: actix::Recipient<ReplyUpdate>,
    pub updates: mpsc::UnboundedReceiver<ReplyUpdate>,
    next_id: u64,
}

impl Client {
    pub fn new(character: &str, user: &str) -> Self {
        let (sink, updates) = ChannelSink::start();
        Client {
            key: ConversationKey::new(character, user),
            scope: Scope::Console,
            sink,
            updates,
            next_id: 0,
        }
    }

    /// The same user, speaking in another scope (a DM, a guild).
    pub fn in_scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    pub fn send(&mut self, app: &App, text: &str) -> u64 {
        self.next_id += 1;
        app.router()
            .route(UserMessage {
                key: self.key.clone(),
                scope: self.scope.clone(),
                channel: None,
                display_name: self.key.user.to_string(),
                text: text.to_owned(),
                message_id: self.next_id,
                received_at: Instant::now(),
                reply_to: self.sink.clone(),
                settled: None,
                images: Vec::new(),
            })
            .expect("routed");
        self.next_id
    }

    /// Updates for `id` until (and including) its final one.
    pub async fn updates_for(&mut self, id: u64) -> Vec<ReplyUpdate> {
        let mut seen = Vec::new();
        let deadline = Duration::from_secs(30);
        loop {
            let update = tokio::time::timeout(deadline, self.updates.recv())
                .await
                .expect("reply within 30 s")
                .expect("sink open");
            if update.message_id != id {
                continue;
            }
            let done = update.is_final();
            seen.push(update);
            if done {
                return seen;
            }
        }
    }

    pub async fn final_for(&mut self, id: u64) -> ReplyUpdate {
        self.updates_for(id).await.pop().unwrap()
    }

    pub async fn ask(&mut self, app: &App, text: &str) -> ReplyUpdate {
        let id = self.send(app, text);
        self.final_for(id).await
    }
}

pub fn is_done(update: &ReplyUpdate) -> bool {
    matches!(update.status, ReplyStatus::Done(_))
}

/// Polls the runtime's status until `cond` holds (up to 3 s).
pub async fn wait_for(
    app: &App,
    what: &str,
    cond: impl Fn(&whisper_actors::stats::StatusSnapshot) -> bool,
) {
    for _ in 0..100 {
        if cond(&app.runtime().status()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    panic!("timed out waiting for {what}: {:?}", app.runtime().status());
}

/// Conversation actors started so far, over all shards.
pub fn started(app: &App) -> u64 {
    app.runtime()
        .status()
        .shards
        .iter()
        .map(|s| s.started)
        .sum()
}

/// Waits until no turn is in flight (a turn enqueues its background jobs after the final update)
/// and the job queue is empty.
pub async fn drain(app: &App) {
    drain_within(app, Duration::from_secs(5)).await
}

/// [`drain`], waiting up to `limit`.
pub async fn drain_within(app: &App, limit: Duration) {
    let started = Instant::now();
    while started.elapsed() < limit {
        let turns_in_flight: u64 = app
            .runtime()
            .status()
            .shards
            .iter()
            .map(|s| s.pending_messages)
            .sum();
        if turns_in_flight == 0 && app.user_data().pending_jobs().await.unwrap() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("background jobs did not finish");
}
