use std::path::Path;
use std::time::Duration;

use crate::support::app::{Client, drain, extras, is_done, run_actix, settings, start};
use crate::support::openai_server::{Behavior, ScriptedLlm};

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

/// A reply still streaming when "forget me" arrives finishes, but nothing of it survives: the
/// forget waits for the turn (which stores it and enqueues its memory and fact jobs), drops
/// the jobs, waits for running ones, and only then deletes.
#[test]
fn forget_during_a_reply_leaves_nothing_behind() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        llm.script([Behavior::tokens(
            &["I ", "will ", "remember ", "that ", "forever."],
            Duration::from_millis(150),
        )]);
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &llm.base_url());
        s.classifier.enabled = false;
        let app = start(s, extras(vec![])).await;
        let db = dir.path().join("whisperengine.db");
        let mut kim = Client::new("aria", "test:kim");
        let id = kim.send(&app, "my passport number is X1234567");
        // The reply has started streaming.
        let first = kim.updates.recv().await.unwrap();
        assert_eq!(first.message_id, id);
        assert!(!first.is_final());
        let report = app.forget("test:kim").await.unwrap();
        assert_eq!(report.live_conversations, 1);
        drain(&app).await;
        assert!(
            rows(&db, "test:kim").iter().all(|(_, n)| *n == 0),
            "{:?}",
            rows(&db, "test:kim")
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

/// Every file of the embedded database: the database, its write-ahead log and index.
fn database_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("whisperengine.db")
        })
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn holds(files: &[(String, Vec<u8>)], needle: &str) -> Vec<String> {
    files
        .iter()
        .filter(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|(name, _)| name.clone())
        .collect()
}

/// After "forget me" not a byte of the user's words is left in the database files: deleted
/// rows are zeroed (secure_delete) and the write-ahead log, which holds older page versions,
/// is checkpointed and truncated. Another user's words are still there (the scan finds text).
#[test]
fn forget_leaves_no_bytes_behind() {
    run_actix(|| async {
        let llm = ScriptedLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let app = start(settings(dir.path(), &llm.base_url()), extras(vec![])).await;
        let planted = [
            "my grandmother's maiden name is Quillfeather",
            "the safe combination is zebra-orchid-4471",
            "I secretly collect antique barometers",
        ];
        let mut ines = Client::new("aria", "test:ines");
        let mut ines_dm = Client::new("marlowe", "test:ines");
        let mut oskar = Client::new("aria", "test:oskar");
        for (i, text) in planted.iter().enumerate() {
            assert!(is_done(&ines.ask(&app, text).await));
            assert!(is_done(&ines_dm.ask(&app, text).await));
            assert!(is_done(
                &oskar
                    .ask(&app, &format!("oskar keeps marmalade jar {i}"))
                    .await
            ));
            // Filler from the other user moves pages around between the plants.
            for n in 0..5 {
                assert!(is_done(
                    &oskar
                        .ask(&app, &format!("filler message {i}-{n} about weather"))
                        .await
                ));
            }
        }
        drain(&app).await;
        let files = database_bytes(dir.path());
        assert!(
            !holds(&files, "Quillfeather").is_empty(),
            "planted text is on disk"
        );
        assert!(
            !holds(&files, "quillfe").is_empty(),
            "the keyword index holds it too"
        );

        app.forget("test:ines").await.unwrap();
        let files = database_bytes(dir.path());
        for text in planted {
            for word in text.split_whitespace().filter(|w| w.len() > 8) {
                let found = holds(&files, word);
                assert!(found.is_empty(), "{word:?} is still in {found:?}");
                // The keyword index keeps words lowercased and stemmed ("quillfeath").
                let stem = &word.to_lowercase()[..7];
                let found = holds(&files, stem);
                assert!(found.is_empty(), "{stem:?} is still in {found:?}");
            }
        }
        assert!(
            !holds(&files, "marmalade").is_empty(),
            "the other user's words are still stored"
        );
        app.shutdown().await;
    });
}
