//! `footprint`: resident memory of the default embedded configuration (real embeddings, the
//! classifier, memory, facts over SQLite; the instant in-process model), and where it goes:
//! after ONNX Runtime and the model are loaded, after the app started (embedding sessions, the
//! classifier's intent vectors, stores), and its peak after 100 users × 5 messages.

use std::time::Instant;

use whisper_actors::sink::ChannelSink;
use whisper_actors::{ConversationKey, Scope, UserMessage};

use crate::support::app::{run_actix, settings, start};

fn rss_mb() -> (f64, f64) {
    (
        super::mb(super::proc_status_kb("VmRSS:")),
        super::mb(super::proc_status_kb("VmHWM:")),
    )
}

pub fn run() {
    // As the binary's `main` does.
    whisperengine::heap::tune();
    run_actix(|| async {
        let (base, _) = rss_mb();
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), "http://127.0.0.1:9/v1");
        s.logging.level = "warn".into();
        s.facts.extract = false;
        let (workers, threads) = (s.pools.embedder, s.embedding.threads);
        let app = start(s, super::instant()).await;
        let (started, _) = rss_mb();
        let (sink, mut updates) = ChannelSink::start();
        let users = 100u64;
        let mut sent = 0;
        for round in 0..5u64 {
            for u in 0..users {
                let key = ConversationKey::new("aria", format!("footprint:{u}"));
                app.router()
                    .route(UserMessage {
                        key,
                        scope: Scope::Direct,
                        channel: None,
                        display_name: format!("user {u}"),
                        text: format!(
                            "my sister moved to a flat in Cork, round {round}; what do you think?"
                        ),
                        message_id: round * users + u,
                        received_at: Instant::now(),
                        reply_to: sink.clone(),
                        settled: None,
                        images: Vec::new(),
                    })
                    .unwrap();
                sent += 1;
            }
            let mut done = 0;
            while done < users {
                if updates.recv().await.unwrap().is_final() {
                    done += 1;
                }
            }
        }
        crate::support::app::drain(&app).await;
        let (after, peak) = rss_mb();
        println!(
            "footprint, default embedded configuration (pools.embedder = {workers}, embedding.threads = {threads}):"
        );
        println!(
            "  before the app: {base:.0} MB; app started: {started:.0} MB; after {sent} messages: {after:.0} MB; peak {peak:.0} MB"
        );
        app.shutdown().await;
    });
}
