//! A real Bolt graph server for the Neo4j fact store's tests: ArcadeDB with its Bolt plugin,
//! provisioned from PyPI into `$WHISPER_CACHE/arcadedb` by `./bot.sh test`, started on free
//! ports with a throwaway root directory, stopped on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "whisper-test";
pub const DATABASE: &str = "facts";

pub struct ArcadeDb {
    child: Child,
    pub bolt_uri: String,
    _root: tempfile::TempDir,
}

impl ArcadeDb {
    /// Points `s`'s fact graph at this server.
    pub fn configure(&self, s: &mut whisperengine::config::Settings) {
        s.storage.facts = whisperengine::config::FactsBackend::Neo4j;
        s.storage.neo4j_uri = self.bolt_uri.clone().into();
        s.storage.neo4j_user = "root".into();
        s.storage.neo4j_password = PASSWORD.into();
        s.storage.neo4j_database = DATABASE.into();
    }

    /// The same, as environment variables for a `whisperengine` process.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("WHISPER__STORAGE__FACTS", "neo4j".to_owned()),
            ("WHISPER__STORAGE__NEO4J_URI", self.bolt_uri.clone()),
            ("WHISPER__STORAGE__NEO4J_USER", "root".to_owned()),
            ("WHISPER__STORAGE__NEO4J_PASSWORD", PASSWORD.to_owned()),
            ("WHISPER__STORAGE__NEO4J_DATABASE", DATABASE.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn home() -> PathBuf {
    let cache = std::env::var_os("WHISPER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/whisperengine")
        });
    cache.join("arcadedb")
}

impl ArcadeDb {
    pub async fn start() -> ArcadeDb {
        let home = home();
        let java = home.join("jre/bin/java");
        assert!(
            java.exists(),
            "ArcadeDB is not provisioned at {}: run ./bot.sh provision arcadedb (./bot.sh test does)",
            home.display()
        );
        let root = tempfile::tempdir().unwrap();
        let (http, bolt) = (free_port(), free_port());
        let child = Command::new(java)
            .arg("-Xmx256m")
            .arg("-cp")
            .arg(format!("{}/jars/*", home.display()))
            .arg(format!(
                "-Darcadedb.server.rootPath={}",
                root.path().display()
            ))
            .arg(format!("-Darcadedb.server.rootPassword={PASSWORD}"))
            .arg("-Darcadedb.server.mode=development")
            .arg("-Darcadedb.server.httpIncomingHost=127.0.0.1")
            .arg(format!("-Darcadedb.server.httpIncomingPort={http}"))
            .arg("-Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin")
            .arg(format!("-Darcadedb.bolt.port={bolt}"))
            .arg("-Darcadedb.bolt.host=127.0.0.1")
            .arg(format!(
                "-Darcadedb.server.defaultDatabases={DATABASE}[root]"
            ))
            .arg("com.arcadedb.server.ArcadeDBServer")
            // Its logs go to ./log: keep them in the server's own temporary root.
            .current_dir(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ArcadeDB starts");
        let server = ArcadeDb {
            child,
            bolt_uri: format!("127.0.0.1:{bolt}"),
            _root: root,
        };
        // The Bolt port opens before the database exists: wait until the HTTP API lists it.
        whisperengine::tls::install_provider();
        let client = reqwest::Client::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let listed = client
                .get(format!("http://127.0.0.1:{http}/api/v1/databases"))
                .basic_auth("root", Some(PASSWORD))
                .send()
                .await;
            if let Ok(response) = listed
                && response.text().await.unwrap_or_default().contains(DATABASE)
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("ArcadeDB did not list database {DATABASE} within 60 s");
    }
}

impl Drop for ArcadeDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
