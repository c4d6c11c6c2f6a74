//! `whisperengine backup` / `restore`: every store in use, in one directory, in a portable
//! format, so a backup restores into a different backend than it came from (embedded SQLite to
//! PostgreSQL is the migration path).
//!
//! A backup holds one JSON-lines file per kind of data (`history.jsonl`: turns and profiles;
//! `memories.jsonl`; `facts.jsonl`), each line one row keyed by the portable column names, and
//! `manifest.json` with the format version, the creation time, the backends it came from, and
//! each file's row count and SHA-256. Restore checks all of it before touching anything; each
//! store is then replaced inside one transaction, so a failure leaves it as it was.
//!
//! Run them with the bot stopped: the bot's caches would not see a restore, and a backup taken
//! while it writes may catch a turn without its memories.

use std::collections::BTreeMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{FactsBackend, HistoryBackend, MemoryBackend, Settings};
#[cfg(feature = "server")]
use crate::store::neo4j::Neo4jFacts;
#[cfg(not(feature = "server"))]
use crate::store::not_built;
#[cfg(feature = "server")]
use crate::store::postgres::PgHistory;
#[cfg(feature = "server")]
use crate::store::qdrant::QdrantMemory;
use crate::store::sqlite;

mod sqlite_rows;
mod tables;

pub use sqlite_rows::sort_memory_rows;
use sqlite_rows::{export_sqlite, import_sqlite};
use tables::{FACTS, MEMORIES, PROFILES, TURNS, Table};

pub const FORMAT_VERSION: u32 = 1;

/// A file of the backup and the tables its lines belong to.
struct Section {
    file: &'static str,
    tables: &'static [Table],
}

const SECTIONS: [Section; 3] = [
    Section {
        file: "history.jsonl",
        tables: &[TURNS, PROFILES],
    },
    Section {
        file: "memories.jsonl",
        tables: &[MEMORIES],
    },
    Section {
        file: "facts.jsonl",
        tables: &[FACTS],
    },
];

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub name: String,
    pub rows: u64,
    pub sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub created_at: String,
    /// Where each kind of data came from (informational: restore may target another backend).
    pub backends: BTreeMap<String, String>,
    pub files: Vec<FileEntry>,
}

type Row = Map<String, Value>;

/// Where vector memories live, when not in the embedded database.
/// (None in a build without the server backends: `config::load` refuses them there.)
enum MemoryTarget {
    #[cfg(feature = "server")]
    Qdrant(Box<QdrantMemory>),
    #[cfg(feature = "server")]
    Postgres(crate::store::postgres::memory::PgMemory),
}

impl MemoryTarget {
    async fn export_rows(&self) -> anyhow::Result<Vec<Row>> {
        match *self {
            #[cfg(feature = "server")]
            MemoryTarget::Qdrant(ref q) => q.export_rows().await,
            #[cfg(feature = "server")]
            MemoryTarget::Postgres(ref pg) => pg.export_rows().await,
        }
    }

    async fn import_rows(&self, rows: &[Row]) -> anyhow::Result<()> {
        #[cfg(not(feature = "server"))]
        let _ = rows;
        match *self {
            #[cfg(feature = "server")]
            MemoryTarget::Qdrant(ref q) => q.import_rows(rows).await,
            #[cfg(feature = "server")]
            MemoryTarget::Postgres(ref pg) => pg.import_rows(rows).await,
        }
    }
}

async fn memory_target(settings: &Settings) -> anyhow::Result<Option<MemoryTarget>> {
    let s = &settings.storage;
    Ok(match s.memory {
        MemoryBackend::Sqlite => None,
        #[cfg(not(feature = "server"))]
        MemoryBackend::Qdrant | MemoryBackend::Postgres => return Err(not_built("storage.memory")),
        #[cfg(feature = "server")]
        MemoryBackend::Qdrant => Some(MemoryTarget::Qdrant(Box::new(
            QdrantMemory::from_storage(s, settings.character_ids()?).await?,
        ))),
        #[cfg(feature = "server")]
        MemoryBackend::Postgres => Some(MemoryTarget::Postgres(
            crate::store::postgres::memory::PgMemory::connect(
                s.postgres_url.expose(),
                1,
                s.connect_timeout,
            )
            .await?,
        )),
    })
}

/// A `memories.jsonl` row as a memory chunk (vector in base64, f32 little-endian).
#[cfg(feature = "server")]
pub(crate) fn chunk_from_row(row: &Row) -> anyhow::Result<whisper_actors::memory::MemoryChunk> {
    use base64::Engine as _;
    let text = |k: &str| row.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD.decode(text("vector"))?;
    let vector: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(whisper_actors::memory::MemoryChunk {
        key: whisper_actors::ConversationKey::new(text("character"), text("user_id")),
        scope: text("scope").parse().map_err(|e| anyhow::anyhow!("{e}"))?,
        kind: whisper_actors::memory::MemoryKind::parse(text("kind"))
            .ok_or_else(|| anyhow::anyhow!("unknown memory kind {}", text("kind")))?,
        group: text("grp").to_owned(),
        chunk: row.get("chunk").and_then(|v| v.as_u64()).unwrap_or(0) as u32,
        text: text("text").to_owned(),
        importance: row
            .get("importance")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0) as f32,
        created_at_ms: row
            .get("created_at_ms")
            .and_then(|v| v.as_i64())
            .unwrap_or(0),
        vector: vector.into(),
    })
}

/// Where history lives, as configured: the embedded database or a PostgreSQL connection.
enum HistoryTarget {
    Sqlite,
    #[cfg(feature = "server")]
    Postgres(PgHistory),
}

/// Where facts live, as configured.
enum FactsTarget {
    Sqlite,
    #[cfg(feature = "server")]
    Neo4j(Neo4jFacts),
}

async fn facts_target(settings: &Settings) -> anyhow::Result<FactsTarget> {
    let s = &settings.storage;
    Ok(match s.facts {
        FactsBackend::Sqlite => FactsTarget::Sqlite,
        #[cfg(not(feature = "server"))]
        FactsBackend::Neo4j => return Err(not_built("storage.facts")),
        #[cfg(feature = "server")]
        FactsBackend::Neo4j => {
            FactsTarget::Neo4j(Neo4jFacts::from_storage(s, settings.pools.neo4j).await?)
        }
    })
}

async fn history_target(settings: &Settings) -> anyhow::Result<HistoryTarget> {
    Ok(match settings.storage.history {
        HistoryBackend::Sqlite => HistoryTarget::Sqlite,
        #[cfg(not(feature = "server"))]
        HistoryBackend::Postgres => return Err(not_built("storage.history")),
        #[cfg(feature = "server")]
        HistoryBackend::Postgres => HistoryTarget::Postgres(
            PgHistory::connect(
                settings.storage.postgres_url.expose(),
                1,
                settings.storage.connect_timeout,
            )
            .await?,
        ),
    })
}

fn sha256_file(path: &Path) -> anyhow::Result<(String, u64)> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut lines = 0u64;
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line)? > 0 {
        hasher.update(&line);
        lines += 1;
        line.clear();
    }
    Ok((format!("{:x}", hasher.finalize()), lines))
}

/// Writes a backup of every store in use into `dir` (created; must not hold a backup yet).
/// `progress` hears about each file as it is written.
pub async fn backup(
    settings: &Settings,
    dir: &Path,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Manifest> {
    if dir.join("manifest.json").exists() {
        bail!("{} already holds a backup", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let db = sqlite::prepare(&settings.storage.data_dir)?;
    let history = history_target(settings).await?;
    let facts = facts_target(settings).await?;
    let memory = memory_target(settings).await?;
    let mut files = Vec::new();
    for section in &SECTIONS {
        let mut rows = Vec::new();
        for table in section.tables {
            match (&history, &facts, table.name) {
                #[cfg(feature = "server")]
                (HistoryTarget::Postgres(pg), _, "turns" | "profiles") => {
                    rows.extend(pg.export_rows(table.name, table.columns).await?)
                }
                #[cfg(feature = "server")]
                (_, FactsTarget::Neo4j(graph), "facts") => rows.extend(graph.export_rows().await?),
                (_, _, "memories") if memory.is_some() => {
                    if let Some(m) = &memory {
                        rows.extend(m.export_rows().await?)
                    }
                }
                _ => export_sqlite(&db, table, &mut rows)?,
            }
        }
        let path = dir.join(section.file);
        let mut out = BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?,
        );
        for row in &rows {
            serde_json::to_writer(&mut out, row)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        drop(out);
        let (sha256, lines) = sha256_file(&path)?;
        progress(&format!("{}: {lines} rows", section.file));
        files.push(FileEntry {
            name: section.file.to_owned(),
            rows: lines,
            sha256,
        });
    }
    let backends = BTreeMap::from([
        (
            "history".to_owned(),
            match settings.storage.history {
                HistoryBackend::Sqlite => "sqlite",
                HistoryBackend::Postgres => "postgres",
            }
            .to_owned(),
        ),
        (
            "memories".to_owned(),
            match settings.storage.memory {
                MemoryBackend::Sqlite => "sqlite",
                MemoryBackend::Qdrant => "qdrant",
                MemoryBackend::Postgres => "postgres",
            }
            .to_owned(),
        ),
        (
            "facts".to_owned(),
            match settings.storage.facts {
                FactsBackend::Sqlite => "sqlite",
                FactsBackend::Neo4j => "neo4j",
            }
            .to_owned(),
        ),
    ]);
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        backends,
        files,
    };
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    Ok(manifest)
}

/// Checks a backup completely: manifest, every file present, row counts and checksums.
pub fn verify(dir: &Path) -> anyhow::Result<Manifest> {
    let manifest_path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).with_context(|| {
        format!(
            "{} is not a backup (no readable manifest.json)",
            dir.display()
        )
    })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{} is corrupt", manifest_path.display()))?;
    if manifest.format_version != FORMAT_VERSION {
        bail!(
            "backup format version {} is not supported (this build reads {FORMAT_VERSION})",
            manifest.format_version
        );
    }
    for section in &SECTIONS {
        let Some(entry) = manifest.files.iter().find(|f| f.name == section.file) else {
            bail!("backup is partial: manifest lists no {}", section.file);
        };
        let path = dir.join(&entry.name);
        if !path.exists() {
            bail!("backup is partial: {} is missing", entry.name);
        }
        let (sha256, rows) = sha256_file(&path)?;
        if sha256 != entry.sha256 || rows != entry.rows {
            bail!(
                "backup is corrupt: {} does not match its checksum in the manifest",
                entry.name
            );
        }
    }
    Ok(manifest)
}

fn read_rows(path: &Path) -> anyhow::Result<Vec<Row>> {
    let file = std::fs::File::open(path)?;
    std::io::BufReader::new(file)
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let line = line?;
            serde_json::from_str::<Row>(&line)
                .with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}

/// Restores a verified backup into the stores configured now. Nothing is touched unless the
/// whole backup checks out and parses.
pub async fn restore(
    settings: &Settings,
    dir: &Path,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Manifest> {
    let manifest = verify(dir)?;
    let mut parsed = Vec::new();
    for section in &SECTIONS {
        parsed.push((section, read_rows(&dir.join(section.file))?));
    }
    let db = sqlite::prepare(&settings.storage.data_dir)?;
    let history = history_target(settings).await?;
    let facts = facts_target(settings).await?;
    let memory = memory_target(settings).await?;
    for (section, rows) in &parsed {
        match (&history, &facts, section.file) {
            (_, _, "memories.jsonl") if memory.is_some() => {
                if let Some(m) = &memory {
                    m.import_rows(rows).await?
                }
            }
            #[cfg(feature = "server")]
            (_, FactsTarget::Neo4j(graph), "facts.jsonl") => graph.import_rows(rows).await?,
            #[cfg(feature = "server")]
            (HistoryTarget::Postgres(pg), _, "history.jsonl") => {
                pg.import_rows(
                    &[
                        (TURNS.name, TURNS.columns),
                        (PROFILES.name, PROFILES.columns),
                    ],
                    rows,
                )
                .await?
            }
            _ => import_sqlite(&db, section.tables, rows)?,
        }
        progress(&format!("{}: {} rows restored", section.file, rows.len()));
    }
    Ok(manifest)
}
