//! Facts about the user: a small per-user graph of (subject) -[predicate]-> (object) edges with
//! confidence, source message and a validity interval. A correction closes the old edge rather
//! than deleting it; single-valued predicates keep one current value.
//!
//! Selection for the prompt (current facts about the user, facts about entities named in the
//! message, and their neighbours up to two hops) is done here over the user's current edges, so
//! every store recalls the same way. Extraction is a background job that asks the LLM for JSON.

mod actor;
mod extract;
mod provider;
mod select;

pub use actor::{CorrectedFacts, CurrentFacts, ForgetFacts, GraphActor, GraphPool, UpsertFacts};
pub use extract::{ExtractFacts, FactExtraction, facts_schema, grounded, parse_facts};
pub use provider::{FactProvider, FactTuning};
pub use select::{about, select};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::ports::StoreError;

/// The user themself, as a subject.
pub const USER: &str = "user";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    pub subject: String,
    pub predicate: String,
    pub object: String,
    pub confidence: f32,
    pub source: String,
    pub valid_from_ms: i64,
    pub valid_to_ms: Option<i64>,
}

/// A fact as extracted, before it meets the graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewFact {
    pub subject: String,
    pub predicate: String,
    pub object: String,
    pub confidence: f32,
    /// The earlier value this one corrects ("forget bibimbap, these days it's ramen"): its
    /// edge is closed, whatever the predicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// Predicates that hold one value at a time without being configured: a new value closes the
/// old one. `facts.single_valued` adds to these.
const SINGLE_VALUED: [&str; 14] = [
    "name",
    "age",
    "birthday",
    "lives_in",
    "works_at",
    "job",
    "occupation",
    "employer",
    "hometown",
    "nationality",
    "height",
    "pronouns",
    "relationship_status",
    "timezone",
];

/// Whether a predicate holds one value at a time: the built-in ones, any `favourite_*` /
/// `favorite_*` / `current_*`, and what the operator configured.
pub fn is_single_valued(predicate: &str, configured: &[String]) -> bool {
    SINGLE_VALUED.contains(&predicate)
        || ["favourite_", "favorite_", "current_"]
            .iter()
            .any(|prefix| predicate.starts_with(prefix))
        || configured.iter().any(|p| p == predicate)
}

/// The single-valued predicates among `facts`, for the store's upsert.
pub fn single_valued_in(facts: &[NewFact], configured: &[String]) -> Vec<String> {
    let mut found: Vec<String> = facts
        .iter()
        .map(|f| f.predicate.clone())
        .filter(|p| is_single_valued(p, configured))
        .collect();
    found.sort();
    found.dedup();
    found
}

impl NewFact {
    /// The graph's one spelling of a fact, whatever the backend: the user is always `user`
    /// (however the model capitalised it), and names and values carry no stray whitespace.
    /// Entities still compare case-insensitively in the stores ("Rex" and "rex" are one dog).
    pub fn normalised(self) -> Self {
        let subject = self.subject.trim();
        Self {
            subject: if subject.eq_ignore_ascii_case(USER) {
                USER.to_owned()
            } else {
                subject.to_owned()
            },
            predicate: self.predicate.trim().to_owned(),
            object: self.object.trim().to_owned(),
            confidence: self.confidence,
            // Replacing a value with itself is no correction.
            replaces: self
                .replaces
                .map(|old| old.trim().to_owned())
                .filter(|old| !old.is_empty() && !old.eq_ignore_ascii_case(self.object.trim())),
        }
    }
}

#[async_trait]
pub trait FactStore: Send + Sync + 'static {
    /// Adds facts; for single-valued predicates a different current value is closed (its
    /// `valid_to_ms` set), the same value is kept; a fact that `replaces` a value closes that
    /// value's current edge.
    async fn upsert(
        &self,
        user: &str,
        facts: Vec<NewFact>,
        source: &str,
        single_valued: &[String],
        now_ms: i64,
    ) -> Result<usize, StoreError>;
    /// All current (not closed) facts of the user.
    async fn current(&self, user: &str) -> Result<Vec<Fact>, StoreError>;
    /// The user's closed facts (corrected or replaced values), oldest first: what recall marks
    /// as out of date in the memories that still say them.
    async fn corrected(&self, user: &str) -> Result<Vec<Fact>, StoreError>;
    async fn forget_user(&self, user: &str) -> Result<u64, StoreError>;
}

/// Facts as the model (and the user) reads them: "- Ana lives in Porto", one per line.
pub fn describe_facts(facts: &[Fact]) -> String {
    facts
        .iter()
        .map(|f| {
            format!(
                "- {} {} {}",
                f.subject,
                f.predicate.replace('_', " "),
                f.object
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_has_one_spelling_and_names_no_padding() {
        let fact = NewFact {
            subject: " User ".into(),
            predicate: " lives_in".into(),
            object: " Lisbon ".into(),
            confidence: 0.9,
            replaces: Some(" lisbon".into()),
        }
        .normalised();
        assert_eq!(fact.replaces, None, "a value does not replace itself");
        assert_eq!(
            (
                fact.subject.as_str(),
                fact.predicate.as_str(),
                fact.object.as_str()
            ),
            (USER, "lives_in", "Lisbon")
        );
        let dog = NewFact {
            subject: "Rex ".into(),
            ..fact
        }
        .normalised();
        assert_eq!(dog.subject, "Rex");
    }

    #[test]
    fn only_what_the_message_says_is_stored() {
        let f = |s: &str, o: &str| NewFact {
            subject: s.into(),
            predicate: "lives_in".into(),
            object: o.into(),
            confidence: 0.9,
            replaces: None,
        };
        let message = "My sister Maren moved to Salzburg last year";
        assert!(grounded(&f("user", "Salzburg"), message));
        assert!(grounded(&f("Maren", "Salzburg"), message));
        assert!(!grounded(&f("user", "Vienna"), message), "invented object");
        assert!(
            !grounded(&f("Ingrid", "Salzburg"), message),
            "invented subject"
        );
        assert!(!grounded(&f("user", "burg"), message), "whole words only");
    }

    #[test]
    fn obvious_single_valued_predicates_need_no_configuration() {
        for p in [
            "favourite_food",
            "favorite_band",
            "age",
            "lives_in",
            "works_at",
            "birthday",
        ] {
            assert!(is_single_valued(p, &[]), "{p}");
        }
        for p in ["likes", "has_sibling", "has_pet", "speaks"] {
            assert!(!is_single_valued(p, &[]), "{p}");
        }
        assert!(is_single_valued("drives", &["drives".into()]));
    }

    fn fact(s: &str, p: &str, o: &str) -> Fact {
        Fact {
            subject: s.into(),
            predicate: p.into(),
            object: o.into(),
            confidence: 1.0,
            source: String::new(),
            valid_from_ms: 0,
            valid_to_ms: None,
        }
    }

    #[test]
    fn selection_follows_named_entities_two_hops() {
        let facts = vec![
            fact(USER, "lives_in", "Lisbon"),
            fact(USER, "has_sibling", "Ana"),
            fact("Ana", "lives_in", "Porto"),
            fact("Porto", "is_in", "Portugal"),
            fact("Portugal", "uses", "Euro"),
            fact("Bob", "likes", "Chess"),
        ];
        let picked = select(&facts, "How is Ana doing?", 2, 500);
        let objects: Vec<&str> = picked.iter().map(|f| f.object.as_str()).collect();
        assert_eq!(objects, vec!["Lisbon", "Ana", "Porto", "Portugal"]);
        assert!(!objects.contains(&"Euro"), "three hops away");
        assert!(!objects.contains(&"Chess"), "not mentioned");
        let unnamed = select(&facts, "Anathema", 2, 500);
        let objects: Vec<&str> = unnamed.iter().map(|f| f.object.as_str()).collect();
        assert_eq!(
            objects,
            vec!["Lisbon", "Ana", "Porto"],
            "whole words only: the user's neighbourhood, not Ana's"
        );
    }

    /// The user's own neighbourhood is followed without the message naming anyone, and a tight
    /// budget keeps what the question is about.
    #[test]
    fn the_users_neighbourhood_is_ranked_by_the_question() {
        let mut facts = vec![
            fact(USER, "has_sibling", "Maren"),
            fact("Maren", "lives_in", "Salzburg"),
            fact(USER, "lives_in", "Graz"),
        ];
        for i in 0..30 {
            facts.push(fact(USER, "likes", &format!("band number {i}")));
        }
        let all = select(&facts, "where's my sister based again?", 2, 2000);
        assert!(
            all.iter().any(|f| f.object == "Salzburg"),
            "two hops from the user"
        );
        let tight = select(&facts, "where's my sister based again?", 2, 30);
        let objects: Vec<&str> = tight.iter().map(|f| f.object.as_str()).collect();
        assert!(
            objects.contains(&"Maren") && objects.contains(&"Salzburg"),
            "the budget keeps what the question is about: {objects:?}"
        );
        assert!(tight.len() < 10, "and cuts the rest: {objects:?}");
    }

    #[test]
    fn extraction_output_is_validated() {
        let fact =
            r#"{"subject":"user","predicate":"lives_in","object":"Lisbon","confidence":0.9}"#;
        let (ok, dropped) = parse_facts(&format!("Sure! [{fact}]")).unwrap();
        assert_eq!((ok[0].object.as_str(), dropped), ("Lisbon", 0));
        let (ok, _) = parse_facts(&format!(r#"{{"facts": [{fact}]}}"#)).unwrap();
        assert_eq!(ok.len(), 1, "the structured-output shape");
        assert!(parse_facts("I think you live in Lisbon").is_err());
        assert!(
            parse_facts(r#"{"facts": [{"subject": "us"#).is_err(),
            "cut off"
        );
        let bad = [
            r#"{"subject":"user","predicate":"Lives In","object":"x","confidence":0.9}"#,
            r#"{"subject":"user","predicate":"x","object":"y","confidence":3}"#,
            r#"{"subject":"user","predicate":"x"}"#,
            r#"{"subject":" ","predicate":"x","object":"y","confidence":0.5}"#,
        ];
        let (ok, dropped) = parse_facts(&format!("[{}, {fact}]", bad.join(", "))).unwrap();
        assert_eq!((ok.len(), dropped), (1, 4), "bad items go, good ones stay");
    }
}
