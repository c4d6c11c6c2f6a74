//! Rows between the embedded SQLite database and the portable format.

use std::path::Path;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rusqlite::types::{Value as SqlValue, ValueRef};
use serde_json::{Map, Value};

use super::Row;
use super::tables::Table;
use crate::store::sqlite;

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

pub(super) fn export_sqlite(db: &Path, table: &Table, out: &mut Vec<Row>) -> anyhow::Result<()> {
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
pub(super) fn import_sqlite(db: &Path, tables: &[Table], rows: &[Row]) -> anyhow::Result<()> {
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
