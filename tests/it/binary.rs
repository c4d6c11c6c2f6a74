//! Tests of the real `whisperengine` binary.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::support::openai_server::ScriptedLlm;

const BIN: &str = env!("CARGO_BIN_EXE_whisperengine");

fn command(data_dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("WHISPER__") {
            cmd.env_remove(key);
        }
    }
    cmd
}

async fn chat(mut cmd: Command, input: &str, timeout: Duration) -> Output {
    let mut child = cmd
        .args(["chat", "--user", "tester"])
        .spawn()
        .expect("binary starts");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .expect("chat finishes in time")
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Two runs of the binary on one data directory: the second run's prompt carries the first
/// run's turn, read back from SQLite.
#[tokio::test(flavor = "multi_thread")]
async fn history_persists_across_runs_of_the_binary() {
    let llm = ScriptedLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let with_llm = || {
        let mut cmd = command(dir.path());
        cmd.env("WHISPER__LLM__BASE_URL", llm.base_url())
            .env("WHISPER__LLM__MODEL", "scripted");
        cmd
    };

    let out = chat(
        with_llm(),
        "My favourite colour is teal\n",
        Duration::from_secs(30),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "echo: My favourite colour is teal\n");

    let out = chat(
        with_llm(),
        "What is my favourite colour?\n",
        Duration::from_secs(30),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "echo: What is my favourite colour?\n");

    let requests = llm.requests();
    assert_eq!(requests.len(), 2);
    let second = requests[1].contents();
    assert!(
        second.contains(&"My favourite colour is teal".to_owned()),
        "{second:?}"
    );
    assert!(
        second.contains(&"echo: My favourite colour is teal".to_owned()),
        "{second:?}"
    );
    assert!(
        requests[1].contents()[0].contains("Messages so far: 1."),
        "profile: {second:?}"
    );
}

/// The embedded default end to end: no endpoint configured, so the binary starts the
/// provisioned llama-server with SmolLM2 and streams a real reply.
#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_default_answers_with_the_local_model() {
    let dir = tempfile::tempdir().unwrap();
    let server = whisperengine::config::cache_dir().join("llama/bin/llama-server");
    assert!(
        server.is_file(),
        "{} is missing: run ./bot.sh provision",
        server.display()
    );
    let mut cmd = command(dir.path());
    cmd.env("WHISPER__CHARACTERS__DEFAULT", "marlowe");
    let out = chat(cmd, "Hello! Who are you?\n", Duration::from_secs(180)).await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one reply line: {stdout:?}");
    assert!(!lines[0].trim().is_empty(), "a non-empty reply");
    assert!(
        !lines[0].starts_with("Sorry"),
        "not an apology: {stdout}\n{stderr}"
    );
    assert!(stderr.contains("local model server is up"), "{stderr}");
    // More than one update means the reply was streamed, not delivered whole.
    let updates: u32 = stderr
        .lines()
        .find_map(|l| l.split("updates=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("the reply log line reports its updates");
    assert!(updates >= 2, "streamed in {updates} updates\n{stderr}");
}

async fn config_check(dir: &Path, file: Option<&Path>, env: &[(&str, &str)]) -> Output {
    let mut cmd = command(dir);
    if let Some(file) = file {
        cmd.arg("--config").arg(file);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(["config", "check"]).output().await.unwrap()
}

#[tokio::test]
async fn config_errors_name_the_key_and_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let ok = config_check(
        dir.path(),
        None,
        &[("WHISPER__LLM__API_KEY", "sk-very-secret")],
    )
    .await;
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let printed = text(&ok.stdout);
    assert!(printed.contains("api_key = \"<redacted>\"") && !printed.contains("sk-very-secret"));

    let wrong_type = dir.path().join("wrong-type.toml");
    std::fs::write(&wrong_type, "[runtime]\nshards = \"four\"\n").unwrap();
    let out = config_check(dir.path(), Some(&wrong_type), &[]).await;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("wrong-type.toml")
            && err.contains("`runtime.shards`")
            && err.contains("expected u32"),
        "{err}"
    );

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[pools]\nhistroy = 4\n").unwrap();
    let out = config_check(dir.path(), Some(&unknown), &[]).await;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("unknown.toml")
            && err.contains("`pools.histroy`")
            && err.contains("unknown key"),
        "{err}"
    );

    let out = config_check(
        dir.path(),
        None,
        &[("WHISPER__STREAMING__EDIT_INTERVAL", "soon")],
    )
    .await;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("WHISPER__STREAMING__EDIT_INTERVAL")
            && err.contains("`streaming.edit_interval`"),
        "{err}"
    );

    let out = config_check(dir.path(), None, &[("WHISPER__RUNTIME__SHARDS", "0")]).await;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("`runtime.shards`") && err.contains("greater than zero"),
        "{err}"
    );
}

#[tokio::test]
async fn status_reports_when_nothing_is_running() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path()).arg("status").output().await.unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stdout).contains("no running whisperengine"),
        "{}",
        text(&out.stdout)
    );
}

/// `config check` prints every setting but no secret: tokens, API keys, passwords, and the
/// passwords inside connection URLs and key-value connection strings.
#[tokio::test]
async fn config_check_prints_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let out = config_check(
        dir.path(),
        None,
        &[
            ("WHISPER__LLM__API_KEY", "sk-very-secret"),
            (
                "WHISPER__LLM__BASE_URL",
                "https://proxyuser:llm-url-secret@llm.example/v1",
            ),
            ("WHISPER__DISCORD__TOKENS__ARIA", "discord-token-secret"),
            (
                "WHISPER__STORAGE__POSTGRES_URL",
                "postgres://bot:pg-url-secret@db:5432/whisper",
            ),
            (
                "WHISPER__STORAGE__REDIS_URL",
                "redis://:redis-url-secret@cache:6379/0",
            ),
            (
                "WHISPER__STORAGE__QDRANT_URL",
                "https://qdrant.example:6334?api_key=qdrant-secret",
            ),
            ("WHISPER__STORAGE__NEO4J_PASSWORD", "neo4j-secret"),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = format!("{}{}", text(&out.stdout), text(&out.stderr));
    for secret in [
        "sk-very-secret",
        "llm-url-secret",
        "discord-token-secret",
        "pg-url-secret",
        "redis-url-secret",
        "qdrant-secret",
        "neo4j-secret",
    ] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
    // Everything else stays readable.
    assert!(
        printed.contains("postgres://bot:***@db:5432/whisper"),
        "{printed}"
    );
    assert!(printed.contains("redis://:***@cache:6379/0"), "{printed}");
    assert!(printed.contains("aria = \"<redacted>\""), "{printed}");
}

/// The piped chat's standard output is the replies, one per line, and nothing else, whatever
/// the stores print or log (`env` selects them).
async fn piped_output_is_only_replies(env: &[(&str, String)]) {
    let llm = ScriptedLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.env("WHISPER__LLM__BASE_URL", llm.base_url())
        .env("WHISPER__LLM__MODEL", "scripted");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = chat(cmd, "first line\nsecond line\n", Duration::from_secs(60)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "echo: first line\necho: second line\n",
        "stderr: {}",
        text(&out.stderr)
    );
}

/// In server mode (PostgreSQL history, Redis jobs, cache and limits) too.
#[tokio::test(flavor = "multi_thread")]
async fn piped_chat_prints_only_replies_in_server_mode() {
    let schema = crate::stores::PgSchema::create().await;
    let prefix = format!("pipe{}", std::process::id());
    piped_output_is_only_replies(&[
        ("WHISPER__STORAGE__HISTORY", "postgres".into()),
        ("WHISPER__STORAGE__POSTGRES_URL", schema.url()),
        ("WHISPER__STORAGE__JOBS", "redis".into()),
        ("WHISPER__STORAGE__REDIS_CACHE", "true".into()),
        ("WHISPER__STORAGE__REDIS_PREFIX", prefix),
    ])
    .await;
}

/// With memories in Qdrant: its client's version check (which prints to standard output) is
/// off, and nothing else of it reaches the replies.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a Qdrant server: set QDRANT_URL (./bot.sh test then runs it)"]
async fn piped_chat_prints_only_replies_with_qdrant() {
    let url = crate::support::qdrant::url();
    let prefix = format!("pipe_{}", std::process::id());
    piped_output_is_only_replies(&[
        ("WHISPER__STORAGE__MEMORY", "qdrant".into()),
        ("WHISPER__STORAGE__QDRANT_URL", url.clone()),
        ("WHISPER__STORAGE__QDRANT_PREFIX", prefix.clone()),
    ])
    .await;
    crate::support::qdrant::drop_prefix(&url, &prefix).await;
}

/// `whisperengine reload` against a running chat: it signals the process, prints what changed
/// (applied, or needing a restart), exits 0, and `status` shows the new generation; a broken
/// file is refused before the process is signalled, naming the key.
#[tokio::test(flavor = "multi_thread")]
async fn the_reload_command_applies_a_change_to_the_running_bot() {
    let llm = ScriptedLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bot.toml");
    let write = |shards: u32, extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[runtime]\nshards = {shards}\nstatus_interval = \"100ms\"\n[llm]\nbase_url = \"{}\"\nmodel = \"scripted\"\n{extra}",
                llm.base_url()
            ),
        )
        .unwrap();
    };
    write(2, "");
    let data = dir.path().join("data");
    let with_config = |cmd: &mut Command| {
        cmd.arg("--config").arg(&config);
    };
    let mut bot = command(&data);
    with_config(&mut bot);
    let mut child = bot.args(["chat", "--user", "tester"]).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello\n").await.unwrap();
    let status_file = data.join("status.json");
    for _ in 0..300 {
        if status_file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(status_file.exists(), "the bot reports its status");

    write(3, "[metrics]\naddress = \"127.0.0.1:0\"\n");
    let mut reload = command(&data);
    with_config(&mut reload);
    let out = reload.arg("reload").output().await.unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("runtime.shards: 2 -> 3 (applied)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("metrics.address") && stdout.contains("needs a restart"),
        "{stdout}"
    );

    let mut shown = String::new();
    for _ in 0..100 {
        let mut status = command(&data);
        with_config(&mut status);
        shown = text(&status.arg("status").output().await.unwrap().stdout);
        if shown.contains("configuration: generation 2") && shown.contains("shards: 3") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(shown.contains("configuration: generation 2"), "{shown}");
    assert!(shown.contains("shards: 3"), "{shown}");

    std::fs::write(&config, "[runtime]\nshards = \"many\"\n").unwrap();
    let mut reload = command(&data);
    with_config(&mut reload);
    let out = reload.arg("reload").output().await.unwrap();
    let stdout = text(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("runtime.shards") && stdout.contains("nothing changed"),
        "{stdout}"
    );

    drop(stdin);
    let done = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("chat ends with its input")
        .unwrap();
    assert!(done.status.success(), "{}", text(&done.stderr));
}

/// `config features` is what `./bot.sh run` asks to choose its build: nothing for the embedded
/// default, `server` when the environment selects a server store or a cluster role.
#[tokio::test(flavor = "multi_thread")]
async fn config_features_names_what_the_configuration_needs() {
    let dir = tempfile::tempdir().unwrap();
    let features = |env: &[(&str, &str)]| {
        let mut cmd = command(dir.path());
        cmd.args(["config", "features"]);
        for (key, value) in env {
            cmd.env(key, value);
        }
        async move {
            let out = cmd.output().await.unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
            text(&out.stdout)
        }
    };
    assert_eq!(features(&[]).await, "");
    assert_eq!(
        features(&[("WHISPER__STORAGE__HISTORY", "postgres")]).await,
        "server\n"
    );
    assert_eq!(
        features(&[("WHISPER__STORAGE__REDIS_CACHE", "true")]).await,
        "server\n"
    );
    assert_eq!(
        features(&[("WHISPER__STORAGE__JOBS", "redis")]).await,
        "server\n"
    );
}
