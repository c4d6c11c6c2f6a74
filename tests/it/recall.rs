//! The memory benchmark's floors on a slice of its planted-fact conversations
//! (`tests/data/recall`): two users, every planted fact, distractor and correction, a quarter of
//! the filler, through the real pipeline with real embeddings and a model that extracts exactly
//! what was planted. `./bot.sh bench memory` runs the whole set.

use crate::support::app::{run_actix, settings};
use crate::support::recall::{Dataset, measure, report};

fn slice() -> Dataset {
    Dataset::load().slice(2, 4)
}

/// Hybrid recall finds the planted fact among near-distractors from memory alone.
#[test]
fn planted_facts_come_back_from_memory_alone() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), "http://127.0.0.1:9/v1");
        s.facts.extract = false;
        let scores = measure(&slice(), s).await;
        report("slice, memory alone", &scores);
        assert!(scores.questions >= 30, "{scores:?}");
        assert!(
            scores.rate(scores.recall_at[2]) >= 0.85,
            "recall@5: {scores:?}"
        );
        assert_eq!(scores.leaks, 0, "{scores:?}");
    });
}

/// With facts, a corrected value reaches the prompt, and every memory still saying the old
/// one is marked out of date.
#[test]
fn corrections_hold_and_stale_memories_are_marked() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), "http://127.0.0.1:9/v1");
        let scores = measure(&slice(), s).await;
        report("slice, with facts", &scores);
        assert!(scores.corrected >= 4, "{scores:?}");
        assert_eq!(scores.corrected_current, scores.corrected, "{scores:?}");
        assert_eq!(scores.stale_unmarked, 0, "{scores:?}");
        assert!(scores.rate(scores.in_prompt) >= 0.95, "{scores:?}");
        assert_eq!(scores.leaks, 0, "{scores:?}");
    });
}
