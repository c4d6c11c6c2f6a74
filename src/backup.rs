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
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rusqlite::types::{Value as SqlValue, ValueRef};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{FactsBackend, HistoryBackend, MemoryBackend, Settings};
use crate::store::neo4j_facts::Neo4jFacts;
use crate::store::postgres::PgHistory;
use crate::store::qdrant_memory::QdrantMemory;
use crate::store::sqlite;

pub const FORMAT_VERSION: u32 = 1;

/// A table in the portable format: its name and columns (the same in every backend).
struct Table {
    name: &'static str,
    columns: &'static [&'static str],
}

const TURNS: Table = Table {
    name: "turns",
    columns: &[
        "character",
        "user_id",
        "scope",
        "user_message",
        "reply",
        "created_at_ms",
        "replied_at_ms",
    ],
};
const PROFILES: Table = Table {
    name: "profiles",
    columns: &[
        "user_id",
        "display_name",
        "first_seen_ms",
        "last_seen_ms",
        "message_count",
    ],
};
const MEMORIES: Table = Table {
    name: "memories",
    columns: &[
        "character",
        "user_id",
        "scope",
        "kind",
        "grp",
        "chunk",
        "text",
        "importance",
        "created_at_ms",
        "vector",
    ],
};
const FACTS: Table = Table {
    name: "facts",
    columns: &[
        "user_id",
        "subject",
        "predicate",
        "object",
        "confidence",
        "source",
        "valid_from_ms",
        "valid_to_ms",
    ],
};

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

fn sqlite_row(row: &rusqlite::Row<'_>, table: &Table) -> rusqlite::Result<Row> {
    let mut out = Map::new();
    out.insert("table".into(), Value::from(table.name));
    for (i, column) in table.columns.iter().enumerate() {
        let value = match row.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(n) => Value::from(n),
            ValueRef::Real(x) => Value::from(x),
            ValueRef::Text(t) => Value::from(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::from(B64.encode(b)),
        };
        out.insert((*column).into(), value);
    }
    Ok(out)
}

fn sqlite_value(table: &Table, column: &str, value: &Value) -> anyhow::Result<SqlValue> {
    Ok(match value {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(*b as i64),
        Value::Number(n) if n.is_i64() => SqlValue::Integer(n.as_i64().unwrap_or_default()),
        Value::Number(n) => SqlValue::Real(n.as_f64().unwrap_or_default()),
        Value::String(s) if table.name == "memories" && column == "vector" => SqlValue::Blob(
            B64.decode(s)
                .with_context(|| format!("{}.{column} is not base64", table.name))?,
        ),
        Value::String(s) => SqlValue::Text(s.clone()),
        other => bail!("{}.{column}: unexpected value {other}", table.name),
    })
}

/// Memory rows in the order every store exports them: character, user, creation time, group,
/// chunk. A restore inserts them in this order, so a store that breaks ties by insertion
/// agrees with one that breaks them by group.
pub fn sort_memory_rows(rows: &mut [Map<String, Value>]) {
    let key = |r: &Map<String, Value>| {
        let text = |k: &str| {
            r.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let int = |k: &str| r.get(k).and_then(|v| v.as_i64()).unwrap_or_default();
        (
            text("character"),
            text("user_id"),
            int("created_at_ms"),
            text("grp"),
            int("chunk"),
        )
    };
    rows.sort_by_cached_key(key);
}

fn export_sqlite(db: &Path, table: &Table, out: &mut Vec<Row>) -> anyhow::Result<()> {
    let conn = sqlite::open_connection(db).with_context(|| format!("opening {}", db.display()))?;
    let sql = format!(
        "SELECT {} FROM {} ORDER BY id",
        table.columns.join(", "),
        table.name
    );
    let sql = match table.name {
        "profiles" => sql.replace("ORDER BY id", "ORDER BY user_id"),
        // The one order every memory store exports in (see `sort_memory_rows`).
        "memories" => sql.replace(
            "ORDER BY id",
            "ORDER BY character, user_id, created_at_ms, grp, chunk",
        ),
        _ => sql,
    };
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([], |r| sqlite_row(r, table))?;
    for row in rows {
        out.push(row?);
    }
    Ok(())
}

/// Replaces every row of `tables` in one transaction.
fn import_sqlite(db: &Path, tables: &[Table], rows: &[Row]) -> anyhow::Result<()> {
    let mut conn =
        sqlite::open_connection(db).with_context(|| format!("opening {}", db.display()))?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for table in tables {
        tx.execute(&format!("DELETE FROM {}", table.name), [])?;
        let placeholders: Vec<String> =
            (1..=table.columns.len()).map(|i| format!("?{i}")).collect();
        let mut insert = tx.prepare(&format!(
            "INSERT INTO {} ({}) VALUES ({})",
            table.name,
            table.columns.join(", "),
            placeholders.join(", ")
        ))?;
        for row in rows.iter().filter(|r| r["table"] == table.name) {
            let values = table
                .columns
                .iter()
                .map(|c| sqlite_value(table, c, row.get(*c).unwrap_or(&Value::Null)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            insert.execute(rusqlite::params_from_iter(values))?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Qdrant, when vector memories live there.
async fn qdrant_target(settings: &Settings) -> anyhow::Result<Option<QdrantMemory>> {
    let s = &settings.storage;
    Ok(match s.memory {
        MemoryBackend::Sqlite => None,
        MemoryBackend::Qdrant => {
            Some(QdrantMemory::from_storage(s, settings.character_ids()?).await?)
        }
    })
}

/// Where history lives, as configured: the embedded database or a PostgreSQL connection.
enum HistoryTarget {
    Sqlite,
    Postgres(PgHistory),
}

/// Where facts live, as configured.
enum FactsTarget {
    Sqlite,
    Neo4j(Neo4jFacts),
}

async fn facts_target(settings: &Settings) -> anyhow::Result<FactsTarget> {
    let s = &settings.storage;
    Ok(match s.facts {
        FactsBackend::Sqlite => FactsTarget::Sqlite,
        FactsBackend::Neo4j => FactsTarget::Neo4j(Neo4jFacts::from_storage(s).await?),
    })
}

async fn history_target(settings: &Settings) -> anyhow::Result<HistoryTarget> {
    Ok(match settings.storage.history {
        HistoryBackend::Sqlite => HistoryTarget::Sqlite,
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
    let qdrant = qdrant_target(settings).await?;
    let mut files = Vec::new();
    for section in &SECTIONS {
        let mut rows = Vec::new();
        for table in section.tables {
            match (&history, &facts, table.name) {
                (HistoryTarget::Postgres(pg), _, "turns" | "profiles") => {
                    rows.extend(pg.export_rows(table.name, table.columns).await?)
                }
                (_, FactsTarget::Neo4j(graph), "facts") => rows.extend(graph.export_rows().await?),
                (_, _, "memories") if qdrant.is_some() => {
                    if let Some(q) = &qdrant {
                        rows.extend(q.export_rows().await?)
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
    let qdrant = qdrant_target(settings).await?;
    for (section, rows) in &parsed {
        match (&history, &facts, section.file) {
            (_, _, "memories.jsonl") if qdrant.is_some() => {
                if let Some(q) = &qdrant {
                    q.import_rows(rows).await?
                }
            }
            (_, FactsTarget::Neo4j(graph), "facts.jsonl") => graph.import_rows(rows).await?,
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
