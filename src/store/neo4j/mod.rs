//! The fact graph in Neo4j (neo4rs, Bolt), behind the same `FactStore` trait and contract tests
//! as the embedded SQLite tables. Standard Cypher only, so any Bolt server that speaks it works
//! (the tests use ArcadeDB).
//!
//! ```text
//! (:Entity {uid, user_id, key, name}) -[:REL {predicate, confidence, source,
//!                                             valid_from_ms, valid_to_ms}]-> (:Entity)
//! ```
//!
//! Every node belongs to one user (`uid` = user id + lower-cased name, unique): one user's graph
//! never touches another's. The user themself is the node named "user". A correction closes the
//! old edge (`valid_to_ms`) instead of deleting it.

use std::time::Duration;

use async_trait::async_trait;
use neo4rs::{ConfigBuilder, Graph, Query, query};
use tracing::warn;
use whisper_actors::graph::{Fact, FactStore, NewFact};
use whisper_actors::ports::StoreError;

use crate::store::server::{Unreachable, wait_for};

const STORE: &str = "neo4j facts";

#[derive(Debug, thiserror::Error)]
pub enum Neo4jOpenError {
    #[error("invalid Neo4j settings (storage.neo4j_*): {0}")]
    Config(String),
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
}

pub struct Neo4jFacts {
    graph: Graph,
}

fn failed(operation: &'static str) -> impl Fn(neo4rs::Error) -> StoreError {
    move |e| StoreError::Failed {
        store: STORE,
        operation,
        reason: e.to_string(),
    }
}

fn uid(user: &str, key: &str) -> String {
    format!("{user}\u{1f}{key}")
}

/// An edge's properties, whether it comes from extraction or from a backup.
struct Edge {
    predicate: String,
    confidence: f64,
    source: String,
    valid_from_ms: i64,
    valid_to_ms: Option<i64>,
}

/// The queries that put `subject -[edge]-> object` in `user`'s graph: both entities merged on
/// their uid (user + lower-cased name), then the edge created between them.
fn link(user: &str, (subject, object): (&str, &str), edge: Edge) -> [Query; 3] {
    let entity = |name: &str| {
        let key = name.to_lowercase();
        query(
            "MERGE (e:Entity {uid: $uid})
             SET e.user_id = $user, e.key = $key, e.name = $name",
        )
        .param("uid", uid(user, &key))
        .param("user", user.to_owned())
        .param("key", key)
        .param("name", name.to_owned())
    };
    let rel = query(
        "MATCH (s:Entity {uid: $suid}), (o:Entity {uid: $ouid})
         CREATE (s)-[:REL {predicate: $p, confidence: $c, source: $src,
                           valid_from_ms: $from, valid_to_ms: $to, user_id: $user}]->(o)",
    )
    .param("suid", uid(user, &subject.to_lowercase()))
    .param("ouid", uid(user, &object.to_lowercase()))
    .param("p", edge.predicate)
    .param("c", edge.confidence)
    .param("src", edge.source)
    .param("from", edge.valid_from_ms)
    .param("to", edge.valid_to_ms)
    .param("user", user.to_owned());
    [entity(subject), entity(object), rel]
}

impl Neo4jFacts {
    /// Connects (waiting up to `wait`) and creates the uniqueness constraint if needed.
    pub async fn connect(
        uri: &str,
        user: &str,
        password: &str,
        database: &str,
        connections: usize,
        wait: Duration,
    ) -> Result<Self, Neo4jOpenError> {
        let mut config = ConfigBuilder::default()
            .uri(uri)
            .user(user)
            .password(password)
            .max_connections(connections.max(1));
        if !database.is_empty() {
            config = config.db(database);
        }
        let config = config
            .build()
            .map_err(|e| Neo4jOpenError::Config(e.to_string()))?;
        let graph = wait_for("neo4j", uri, wait, || {
            let config = config.clone();
            async move {
                let graph = Graph::connect(config).await?;
                graph.run(query("RETURN 1")).await?;
                Ok::<_, neo4rs::Error>(graph)
            }
        })
        .await?;
        let constraint =
            "CREATE CONSTRAINT entity_uid IF NOT EXISTS FOR (e:Entity) REQUIRE e.uid IS UNIQUE";
        if let Err(error) = graph.run(query(constraint)).await {
            // Not every Bolt server accepts Neo4j's constraint syntax; MERGE on uid keeps nodes
            // unique either way, the constraint only guards against other writers.
            warn!(%error, "could not create the Entity.uid uniqueness constraint");
        }
        Ok(Self { graph })
    }

    /// The Bolt server `storage.neo4j_*` names.
    pub async fn from_storage(
        s: &crate::config::StorageSection,
        connections: usize,
    ) -> Result<Self, Neo4jOpenError> {
        Self::connect(
            s.neo4j_uri.expose(),
            &s.neo4j_user,
            s.neo4j_password.expose(),
            &s.neo4j_database,
            connections,
            s.connect_timeout,
        )
        .await
    }

    async fn count(&self, q: Query) -> Result<i64, StoreError> {
        let mut rows = self.graph.execute(q).await.map_err(failed("count"))?;
        let mut n = 0;
        while let Some(row) = rows.next().await.map_err(failed("count"))? {
            n += row.get::<i64>("n").unwrap_or(0);
        }
        Ok(n)
    }
}

/// Backup and restore in the portable format (`crate::backup`): every fact, closed ones
/// included, as the embedded `facts` table's columns.
impl Neo4jFacts {
    pub async fn export_rows(
        &self,
    ) -> anyhow::Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        let mut rows = self
            .graph
            .execute(query(
                "MATCH (s:Entity)-[r:REL]->(o:Entity)
                 RETURN s.user_id AS user_id, s.name AS subject, r.predicate AS predicate,
                        o.name AS object, r.confidence AS confidence, r.source AS source,
                        r.valid_from_ms AS valid_from_ms, r.valid_to_ms AS valid_to_ms
                 ORDER BY r.valid_from_ms, s.user_id, r.predicate",
            ))
            .await?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await? {
            let mut object = serde_json::Map::new();
            object.insert("table".into(), "facts".into());
            for text in ["user_id", "subject", "predicate", "object", "source"] {
                object.insert(text.into(), row.get::<String>(text)?.into());
            }
            object.insert("confidence".into(), row.get::<f64>("confidence")?.into());
            object.insert(
                "valid_from_ms".into(),
                row.get::<i64>("valid_from_ms")?.into(),
            );
            object.insert(
                "valid_to_ms".into(),
                row.get::<Option<i64>>("valid_to_ms")?.into(),
            );
            out.push(object);
        }
        Ok(out)
    }

    /// Replaces the whole graph in one transaction.
    pub async fn import_rows(
        &self,
        rows: &[serde_json::Map<String, serde_json::Value>],
    ) -> anyhow::Result<()> {
        let text = |row: &serde_json::Map<String, serde_json::Value>, k: &str| {
            row.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let mut txn = self.graph.start_txn().await?;
        txn.run(query("MATCH (e:Entity) DETACH DELETE e")).await?;
        for row in rows.iter().filter(|r| r["table"] == "facts") {
            let user = text(row, "user_id");
            let (subject, object) = (text(row, "subject"), text(row, "object"));
            let edge = Edge {
                predicate: text(row, "predicate"),
                confidence: row
                    .get("confidence")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(0.0),
                source: text(row, "source"),
                valid_from_ms: row
                    .get("valid_from_ms")
                    .and_then(|v| v.as_i64())
                    .unwrap_or(0),
                valid_to_ms: row.get("valid_to_ms").and_then(|v| v.as_i64()),
            };
            for q in link(&user, (&subject, &object), edge) {
                txn.run(q).await?;
            }
        }
        txn.commit().await?;
        Ok(())
    }
}

impl Neo4jFacts {
    /// The user's current facts, or (`closed`) the ones a correction closed.
    async fn read(&self, user: &str, closed: bool) -> Result<Vec<Fact>, StoreError> {
        let cypher = if closed {
            "MATCH (s:Entity)-[r:REL]->(o:Entity)
             WHERE s.user_id = $user AND r.valid_to_ms IS NOT NULL
             RETURN s.name AS subject, r.predicate AS predicate, o.name AS object,
                    r.confidence AS confidence, r.source AS source,
                    r.valid_from_ms AS valid_from_ms, r.valid_to_ms AS valid_to_ms
             ORDER BY r.valid_from_ms"
        } else {
            "MATCH (s:Entity)-[r:REL]->(o:Entity)
             WHERE s.user_id = $user AND r.valid_to_ms IS NULL
             RETURN s.name AS subject, r.predicate AS predicate, o.name AS object,
                    r.confidence AS confidence, r.source AS source,
                    r.valid_from_ms AS valid_from_ms
             ORDER BY r.valid_from_ms"
        };
        let mut rows = self
            .graph
            .execute(query(cypher).param("user", user.to_owned()))
            .await
            .map_err(failed("read facts"))?;
        let mut facts = Vec::new();
        while let Some(row) = rows.next().await.map_err(failed("read facts"))? {
            let field = |e: neo4rs::DeError| StoreError::Failed {
                store: STORE,
                operation: "read facts",
                reason: e.to_string(),
            };
            facts.push(Fact {
                subject: row.get("subject").map_err(field)?,
                predicate: row.get("predicate").map_err(field)?,
                object: row.get("object").map_err(field)?,
                confidence: row.get::<f64>("confidence").map_err(field)? as f32,
                source: row.get("source").map_err(field)?,
                valid_from_ms: row.get("valid_from_ms").map_err(field)?,
                valid_to_ms: if closed {
                    Some(row.get("valid_to_ms").map_err(field)?)
                } else {
                    None
                },
            });
        }
        Ok(facts)
    }
}

#[async_trait]
impl FactStore for Neo4jFacts {
    async fn upsert(
        &self,
        user: &str,
        facts: Vec<NewFact>,
        source: &str,
        single_valued: &[String],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let mut stored = 0;
        let mut txn = self.graph.start_txn().await.map_err(failed("upsert"))?;
        for f in &facts {
            // Normalised by the GraphActor (`NewFact::normalised`) before it gets here.
            let (subject, object) = (f.subject.as_str(), f.object.as_str());
            let (skey, okey) = (subject.to_lowercase(), object.to_lowercase());
            let (suid, ouid) = (uid(user, &skey), uid(user, &okey));
            // The same current edge: nothing to do (jobs may run twice).
            let mut existing = txn
                .execute(
                    query(
                        "MATCH (s:Entity {uid: $suid})-[r:REL]->(o:Entity {uid: $ouid})
                         WHERE r.predicate = $p AND r.valid_to_ms IS NULL
                         RETURN count(r) AS n",
                    )
                    .param("suid", suid.clone())
                    .param("ouid", ouid.clone())
                    .param("p", f.predicate.clone()),
                )
                .await
                .map_err(failed("upsert"))?;
            let mut exists = 0i64;
            while let Some(row) = existing
                .next(txn.handle())
                .await
                .map_err(failed("upsert"))?
            {
                exists += row.get::<i64>("n").unwrap_or(0);
            }
            if let Some(old) = &f.replaces {
                // A correction names the value it replaces: that edge is closed.
                txn.run(
                    query(
                        "MATCH (s:Entity {uid: $suid})-[r:REL]->(o:Entity {uid: $olduid})
                         WHERE r.predicate = $p AND r.valid_to_ms IS NULL
                         SET r.valid_to_ms = $now",
                    )
                    .param("suid", suid.clone())
                    .param("olduid", uid(user, &old.to_lowercase()))
                    .param("p", f.predicate.clone())
                    .param("now", now_ms),
                )
                .await
                .map_err(failed("close replaced fact"))?;
            }
            if exists > 0 {
                continue;
            }
            if single_valued.iter().any(|p| p == &f.predicate) {
                txn.run(
                    query(
                        "MATCH (s:Entity {uid: $suid})-[r:REL]->(o:Entity)
                         WHERE r.predicate = $p AND r.valid_to_ms IS NULL AND o.key <> $okey
                         SET r.valid_to_ms = $now",
                    )
                    .param("suid", suid.clone())
                    .param("p", f.predicate.clone())
                    .param("okey", okey.clone())
                    .param("now", now_ms),
                )
                .await
                .map_err(failed("close old fact"))?;
            }
            let edge = Edge {
                predicate: f.predicate.clone(),
                confidence: f.confidence as f64,
                source: source.to_owned(),
                valid_from_ms: now_ms,
                valid_to_ms: None,
            };
            for q in link(user, (subject, object), edge) {
                txn.run(q).await.map_err(failed("upsert fact"))?;
            }
            stored += 1;
        }
        txn.commit().await.map_err(failed("upsert"))?;
        Ok(stored)
    }

    async fn current(&self, user: &str) -> Result<Vec<Fact>, StoreError> {
        self.read(user, false).await
    }

    async fn corrected(&self, user: &str) -> Result<Vec<Fact>, StoreError> {
        self.read(user, true).await
    }

    async fn forget_user(&self, user: &str) -> Result<u64, StoreError> {
        let n = self
            .count(
                query(
                    "MATCH (s:Entity)-[r:REL]->(o:Entity) WHERE s.user_id = $user
                     RETURN count(r) AS n",
                )
                .param("user", user.to_owned()),
            )
            .await?;
        self.graph
            .run(
                query("MATCH (e:Entity) WHERE e.user_id = $user DETACH DELETE e")
                    .param("user", user.to_owned()),
            )
            .await
            .map_err(failed("forget user"))?;
        Ok(n as u64)
    }
}
