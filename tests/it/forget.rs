use std::path::Path;

use crate::support::app::{Client, drain, extras, is_done, run_actix, settings, start};
use crate::support::openai_server::ScriptedLlm;

fn rows(db: &Path, user: &str) -> Vec<(&'static str, i64)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    ["turns", "profiles", "memories", "facts", "jobs"]
        .into_iter()
        .map(|table| {
            let n: i64 = conn
                .query_row(
                    &format!("SELECT COUNT(*) FROM {table} WHERE user_id = ?1"),
                    [user],
                    |r| r.get(0),
                )
                .unwrap();
            (table, n)
        })
        .collect()
}

/// "Forget me" empties every store of the user, drops their warm conversations, and leaves
/// other users alone; the next conversation starts from nothing.
#[test]
fn forget_deletes_everything_about_the_user() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let app = start(settings(dir.path(), &llm.base_url()), extras(vec![])).await;
        let db = dir.path().join("whisperengine.db");
        let mut lea = Client::new("aria", "test:lea");
        let mut lea_marlowe = Client::new("marlowe", "test:lea");
        let mut max = Client::new("aria", "test:max");
        for text in ["my cat is called Pixel", "I work as a pilot"] {
            assert!(is_done(&lea.ask(&app, text).await));
            assert!(is_done(&lea_marlowe.ask(&app, text).await));
            assert!(is_done(&max.ask(&app, text).await));
        }
        drain(&app).await;
        let before = rows(&db, "test:lea");
        assert!(before.iter().take(3).all(|(_, n)| *n > 0), "{before:?}");

        let report = app.forget("test:lea").await.unwrap();
        assert_eq!(
            (report.turns, report.profiles, report.memories),
            (4, 1, 8),
            "{report}"
        );
        assert_eq!(report.live_conversations, 2);
        assert!(
            rows(&db, "test:lea").iter().all(|(_, n)| *n == 0),
            "{:?}",
            rows(&db, "test:lea")
        );
        let max = rows(&db, "test:max");
        assert!(
            max.iter().take(3).all(|(_, n)| *n > 0),
            "other users untouched: {max:?}"
        );

        assert!(is_done(&lea.ask(&app, "what's my cat called?").await));
        let prompt = llm.requests().pop().unwrap().contents().join("\n");
        assert!(
            !prompt.contains("Pixel") && !prompt.contains("pilot"),
            "{prompt}"
        );
        app.shutdown().await;
    });
}

/// The CLI does the same on a stopped bot's data directory.
#[tokio::test(flavor = "multi_thread")]
async fn the_forget_command_reports_counts_per_store() {
    let llm = ScriptedLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_whisperengine");
    let mut chat = tokio::process::Command::new(bin);
    chat.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["chat", "--user", "nia"])
        .env("WHISPER__LLM__BASE_URL", llm.base_url())
        .env("WHISPER__LLM__MODEL", "scripted")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = chat.spawn().unwrap();
    use tokio::io::AsyncWriteExt;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"my favourite tea is sencha\n")
        .await
        .unwrap();
    assert!(child.wait_with_output().await.unwrap().status.success());
    let db = dir.path().join("whisperengine.db");
    assert!(
        rows(&db, "console:nia").iter().take(3).all(|(_, n)| *n > 0),
        "{:?}",
        rows(&db, "console:nia")
    );

    let out = tokio::process::Command::new(bin)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["forget", "--user", "console:nia"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 conversation turns, 1 profile, 2 memories"),
        "{stdout}"
    );
    assert!(rows(&db, "console:nia").iter().all(|(_, n)| *n == 0));
}
