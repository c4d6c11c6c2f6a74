//! Hybrid recall: the store's vector and keyword candidates fused into one ranking, the same
//! for every backend.
//!
//! Embeddings find what a message means but blur the specific words (a question about "my
//! sister" lands as near "my neighbour's sister" as the user's own); keyword search finds the
//! words but not the paraphrase ("a year older" for "birthday"). Reciprocal rank fusion adds
//! the two rankings without having to calibrate a cosine against a BM25 score. On top of that:
//! recency and importance, a boost for memories about what the question asks about (the
//! user's own "my X", a name it names) and a cut for ones about somebody else, near-duplicate
//! collapse, and a similarity floor that orders weak candidates last instead of dropping them,
//! so the planted fact that happens to embed far from its question still fills a free slot.

use std::collections::HashSet;
use std::time::Duration;

use super::Candidate;
use super::terms::{Aboutness, words};

#[derive(Clone, Debug)]
pub struct RankSettings {
    pub top_k: usize,
    /// Candidates below this cosine (and not keyword hits, nor within [`RELATIVE_FLOOR`] of
    /// the best one) come after all others and only fill what is left of `top_k`: a floor
    /// that orders noise last, never one that empties the list.
    pub min_similarity: f32,
    pub recency_half_life: Duration,
    /// How much recency and importance can lower a score (0: ignored, 1: fully).
    pub recency_weight: f32,
    pub importance_weight: f32,
    /// Reciprocal rank fusion's constant: small values trust the top of each list more.
    pub fusion_k: f32,
}

/// A candidate this close to the best one's similarity (as a fraction) counts as above the
/// floor even below `min_similarity`.
pub const RELATIVE_FLOOR: f32 = 0.75;

/// How much a question the user asked counts against a statement.
pub const QUESTION: f32 = 0.6;

/// Two memories of one kind whose word sets overlap this much (Jaccard) are one memory for
/// the prompt.
pub const NEAR_DUPLICATE: f32 = 0.8;

/// The best `top_k` of the store's candidates for `query`, best first.
pub fn rank(
    candidates: Vec<Candidate>,
    settings: &RankSettings,
    query: &str,
    now_ms: i64,
) -> Vec<(f32, Candidate)> {
    let best = candidates
        .iter()
        .map(|c| c.similarity)
        .fold(f32::MIN, f32::max);
    let floor = settings.min_similarity.min(best * RELATIVE_FLOOR);
    let mut candidates = candidates;

    // Vector ranks by similarity; keyword ranks as the store ordered its hits.
    candidates.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
    let mut by_keyword: Vec<(u32, usize)> = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.keyword_rank.map(|r| (r, i)))
        .collect();
    by_keyword.sort();
    let mut keyword_rank = vec![None; candidates.len()];
    for (rank, (_, i)) in by_keyword.into_iter().enumerate() {
        keyword_rank[i] = Some(rank);
    }

    let half_life_ms = settings.recency_half_life.as_millis().max(1) as f64;
    let asked = Aboutness::of(query);
    let k = settings.fusion_k.max(0.0);
    let mut scored: Vec<(f32, Candidate)> = candidates
        .into_iter()
        .enumerate()
        .map(|(vector_rank, c)| {
            let mut fused = 1.0 / (k + 1.0 + vector_rank as f32);
            if let Some(r) = keyword_rank[vector_rank] {
                fused += 1.0 / (k + 1.0 + r as f32);
            }
            let age = (now_ms - c.created_at_ms).max(0) as f64;
            let decay = 0.5f64.powf(age / half_life_ms) as f32;
            let recency = 1.0 - settings.recency_weight + settings.recency_weight * decay;
            let importance = 1.0 - settings.importance_weight
                + settings.importance_weight * c.importance.clamp(0.0, 1.0);
            let about = Aboutness::of(&c.text).boost_for(&asked);
            // A question the user asked states nothing; recalled, it crowds out what does.
            let asks = c.kind == super::MemoryKind::Message && c.text.trim_end().ends_with('?');
            let question = if asks { QUESTION } else { 1.0 };
            (fused * recency * importance * about * question, c)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    // Above the floor (or matching the words) first; the rest only fill what is left of top_k,
    // so a weak but best-available memory is still recalled.
    let (mut ordered, below): (Vec<_>, Vec<_>) = scored
        .into_iter()
        .partition(|(_, c)| c.similarity >= floor || c.keyword_rank.is_some());
    ordered.extend(below);

    let mut kept: Vec<(f32, Candidate)> = Vec::with_capacity(settings.top_k);
    let mut kept_words: Vec<(super::MemoryKind, HashSet<String>)> =
        Vec::with_capacity(settings.top_k);
    for (score, c) in ordered {
        if kept.len() == settings.top_k {
            break;
        }
        let these: HashSet<String> = words(&c.text).into_iter().map(|w| w.text).collect();
        // Within a kind: a summary restating one message is still the conversation's summary.
        if kept_words
            .iter()
            .any(|(kind, w)| *kind == c.kind && jaccard(w, &these) >= NEAR_DUPLICATE)
        {
            continue;
        }
        kept_words.push((c.kind, these));
        kept.push((score, c));
    }
    kept
}

fn jaccard(a: &HashSet<String>, b: &HashSet<String>) -> f32 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    a.intersection(b).count() as f32 / a.union(b).count() as f32
}

/// Keyword ranks for candidates from a store without a keyword index (Qdrant's payload has no
/// ranked text search): candidates sharing more of the query's terms rank first; none: no rank.
pub fn keyword_ranks(candidates: &mut [Candidate], query: &str) {
    let terms = super::terms::query_terms(query);
    let mut hits: Vec<(usize, usize)> = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let text: HashSet<String> = words(&c.text).into_iter().map(|w| w.text).collect();
            let shared = terms.iter().filter(|t| text.contains(*t)).count();
            (shared > 0).then_some((shared, i))
        })
        .collect();
    hits.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (rank, (_, i)) in hits.into_iter().enumerate() {
        candidates[i].keyword_rank = Some(rank as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Scope;
    use crate::memory::MemoryKind;

    const DAY: i64 = 86_400_000;

    fn candidate(text: &str, similarity: f32, age_days: i64, importance: f32) -> Candidate {
        Candidate {
            group: text.into(),
            kind: MemoryKind::Message,
            scope: Scope::Direct,
            text: text.into(),
            importance,
            created_at_ms: 100 * DAY - age_days * DAY,
            similarity,
            keyword_rank: None,
            corrected_by: None,
        }
    }

    fn settings(top_k: usize) -> RankSettings {
        RankSettings {
            top_k,
            min_similarity: 0.3,
            recency_half_life: Duration::from_secs(30 * 86_400),
            recency_weight: 0.3,
            importance_weight: 0.3,
            fusion_k: 60.0,
        }
    }

    fn texts(ranked: &[(f32, Candidate)]) -> Vec<&str> {
        ranked.iter().map(|(_, c)| c.text.as_str()).collect()
    }

    #[test]
    fn recency_and_importance_still_count() {
        let ranked = rank(
            vec![
                candidate("old but similar", 0.80, 365, 0.5),
                candidate("recent and similar", 0.78, 1, 0.5),
                candidate("unrelated", 0.1, 0, 1.0),
                candidate("important", 0.70, 1, 1.0),
            ],
            &settings(3),
            "similar",
            100 * DAY,
        );
        assert_eq!(
            texts(&ranked),
            ["important", "recent and similar", "old but similar"]
        );
    }

    #[test]
    fn a_keyword_hit_lifts_a_memory_the_vectors_rank_low() {
        let mut planted = candidate("my cello teacher moved away", 0.31, 30, 0.5);
        planted.keyword_rank = Some(0);
        let mut candidates: Vec<Candidate> = (0..6)
            .map(|i| {
                candidate(
                    &format!("small talk number {i}"),
                    0.5 - i as f32 * 0.01,
                    1,
                    0.5,
                )
            })
            .collect();
        candidates.push(planted);
        let ranked = rank(candidates, &settings(3), "my cello", 100 * DAY);
        assert_eq!(texts(&ranked)[0], "my cello teacher moved away");
    }

    #[test]
    fn the_floor_orders_weak_candidates_last_and_never_empties_the_list() {
        let ranked = rank(
            vec![
                candidate("faintly related", 0.22, 1, 0.5),
                candidate("a bit less", 0.20, 1, 0.5),
                candidate("noise", 0.05, 1, 0.5),
            ],
            &settings(5),
            "anything",
            100 * DAY,
        );
        assert_eq!(texts(&ranked), ["faintly related", "a bit less", "noise"]);
    }

    #[test]
    fn near_duplicates_collapse_into_the_best_one() {
        let ranked = rank(
            vec![
                candidate(
                    "I bought new headphones today, they sound great",
                    0.7,
                    1,
                    0.5,
                ),
                candidate(
                    "i bought new headphones today they sound great!",
                    0.69,
                    1,
                    0.5,
                ),
                candidate("my dog is called Rufus", 0.6, 1, 0.5),
            ],
            &settings(2),
            "headphones",
            100 * DAY,
        );
        assert_eq!(
            texts(&ranked),
            [
                "I bought new headphones today, they sound great",
                "my dog is called Rufus"
            ]
        );
    }

    #[test]
    fn the_users_own_fact_beats_a_relations() {
        let ranked = rank(
            vec![
                candidate("my dad's birthday is on 29 August", 0.52, 10, 0.5),
                candidate("my birthday is on 14 March", 0.50, 10, 0.5),
            ],
            &settings(1),
            "When do I get a year older?",
            100 * DAY,
        );
        assert_eq!(texts(&ranked), ["my birthday is on 14 March"]);
    }

    #[test]
    fn keyword_ranks_without_an_index_count_shared_terms() {
        let mut candidates = vec![
            candidate("nothing in common", 0.5, 1, 0.5),
            candidate("my sister lives in Graz", 0.4, 1, 0.5),
            candidate("my sister is based in Graz", 0.4, 1, 0.5),
        ];
        keyword_ranks(&mut candidates, "where is my sister based?");
        let ranks: Vec<Option<u32>> = candidates.iter().map(|c| c.keyword_rank).collect();
        assert_eq!(ranks, [None, Some(1), Some(0)]);
    }
}
