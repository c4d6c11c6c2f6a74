use std::time::Duration;

use crate::support::app::{Client, extras, is_done, run_actix, settings, start};

/// The embedded default's llama-server is a supervised child: killed, it is restarted on the
/// same port and the conversation carries on.
#[test]
fn the_local_model_server_is_restarted_when_it_dies() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), "");
        s.llm.model = String::new();
        s.llm.retry_backoff = Duration::from_millis(500);
        let app = start(s, extras(vec![])).await;
        let first = app.local_llm_pid().expect("local server running");

        let mut ivy = Client::new("aria", "test:ivy");
        let reply = ivy.ask(&app, "Hello!").await;
        assert!(
            is_done(&reply) && !reply.text.trim().is_empty(),
            "{reply:?}"
        );

        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);
        let mut restarted = None;
        for _ in 0..200 {
            match app.local_llm_pid() {
                Some(pid) if pid != first => {
                    restarted = Some(pid);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        assert!(restarted.is_some(), "llama-server was not restarted");

        let reply = ivy.ask(&app, "Are you back?").await;
        assert!(
            is_done(&reply) && !reply.text.trim().is_empty(),
            "{reply:?}"
        );
        app.shutdown().await;
    });
}
