//! Which facts reach the prompt (and the `lookup_facts` tool): walks of the user's graph.

use std::collections::{HashSet, VecDeque};

use super::{Fact, USER, describe_facts};

fn mentions(text: &str, name: &str) -> bool {
    crate::text::contains_words(text, &name.to_lowercase())
}

/// Facts for the prompt: the user's own neighbourhood (their facts, and the facts about the
/// people and things those point to, up to `hops` from the user) and the edges around entities
/// the message names, ranked by relevance to the message and cut to `token_budget` (about four
/// characters a token). "Where's my sister based again?" thus finds "Maren lives in Salzburg"
/// through "user has sibling Maren" without the message naming Maren.
pub fn select(facts: &[Fact], message: &str, hops: usize, token_budget: usize) -> Vec<Fact> {
    let text = message.to_lowercase();
    let words = relevant_words(&text);
    let from_user = distances(facts, |entity| entity == USER, hops);
    let named = distances(
        facts,
        |entity| entity != USER && mentions(&text, entity),
        hops,
    );
    let mut scored: Vec<(f32, usize)> = facts
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let hop = |d: &std::collections::HashMap<String, usize>| {
                let (s, o) = (f.subject.to_lowercase(), f.object.to_lowercase());
                match (d.get(&s), d.get(&o)) {
                    (Some(a), Some(b)) => Some(*a.min(b)),
                    (a, b) => a.or(b).copied(),
                }
            };
            let (user_hop, named_hop) = (hop(&from_user), hop(&named));
            if user_hop.is_none() && named_hop.is_none() {
                return None;
            }
            let fact_words = relevant_words(&format!(
                "{} {} {}",
                f.subject.to_lowercase(),
                f.predicate.replace('_', " "),
                f.object.to_lowercase()
            ));
            let overlap = fact_words.iter().filter(|w| words.contains(*w)).count() as f32;
            let near = match user_hop.into_iter().chain(named_hop).min() {
                Some(0) => 1.0,
                _ => 0.5,
            };
            let named_bonus = if named_hop.is_some() { 2.0 } else { 0.0 };
            Some((overlap + named_bonus + near, i))
        })
        .collect();
    // Most relevant first; among equals the user's nearest, then the newest.
    scored.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(facts[b.1].valid_from_ms.cmp(&facts[a.1].valid_from_ms))
    });
    let mut budget = token_budget.saturating_mul(4);
    let mut picked = Vec::new();
    for (_, i) in scored {
        let cost = describe_facts(std::slice::from_ref(&facts[i])).len() + 1;
        if cost > budget {
            break;
        }
        budget -= cost;
        picked.push(i);
    }
    // Shown in the graph's own order (the user's facts first, as stored).
    picked.sort_unstable();
    picked.into_iter().map(|i| facts[i].clone()).collect()
}

/// Words that say what a question is about: lower-case, three letters or more, without the
/// glue words every sentence has. "sister" also stands for "sibling" and the like, so a
/// question in plain words meets the predicate the extractor chose.
fn relevant_words(text: &str) -> HashSet<String> {
    const GLUE: [&str; 24] = [
        "the", "and", "you", "your", "what", "where", "when", "who", "how", "does", "did", "is",
        "are", "was", "again", "about", "that", "this", "with", "have", "has", "for", "from",
        "any",
    ];
    let mut words: HashSet<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() >= 3 && !GLUE.contains(w))
        .map(str::to_owned)
        .collect();
    for (plain, also) in [
        ("sister", "sibling"),
        ("brother", "sibling"),
        ("mum", "mother"),
        ("mom", "mother"),
        ("dad", "father"),
        ("based", "lives"),
        ("live", "lives"),
        ("job", "works"),
        ("work", "works"),
    ] {
        if words.contains(plain) {
            words.insert(also.to_owned());
        }
    }
    words
}

/// Hops from the entities `start` accepts to every entity within `hops` edges (either
/// direction), lower-cased. The start entities are at 0.
fn distances(
    facts: &[Fact],
    start: impl Fn(&str) -> bool,
    hops: usize,
) -> std::collections::HashMap<String, usize> {
    let mut dist = std::collections::HashMap::new();
    let mut frontier = VecDeque::new();
    for f in facts {
        for entity in [&f.subject, &f.object] {
            let key = entity.to_lowercase();
            if start(entity) && !dist.contains_key(&key) {
                dist.insert(key.clone(), 0);
                frontier.push_back(key);
            }
        }
    }
    while let Some(entity) = frontier.pop_front() {
        let d = dist[&entity];
        // An entity at `hops - 1` still shows its edges; the entities those reach stop there.
        if d + 1 >= hops {
            continue;
        }
        for f in facts {
            let (s, o) = (f.subject.to_lowercase(), f.object.to_lowercase());
            let other = if s == entity {
                o
            } else if o == entity {
                s
            } else {
                continue;
            };
            if !dist.contains_key(&other) {
                dist.insert(other.clone(), d + 1);
                frontier.push_back(other);
            }
        }
    }
    dist
}

/// Facts around one entity (the `lookup_facts` tool): the edges that touch it and their
/// neighbours up to `hops` away. "user", "me" or "I" mean the user themself.
pub fn about(facts: &[Fact], entity: &str, hops: usize) -> Vec<Fact> {
    let entity = entity.trim();
    if ["user", "me", "i", "myself"].contains(&entity.to_lowercase().as_str()) {
        return facts
            .iter()
            .filter(|f| f.subject == USER)
            .cloned()
            .collect();
    }
    neighbourhood(facts, entity, hops)
}

/// The edges around the entities `message` names, and their neighbours up to `hops` away.
fn neighbourhood(facts: &[Fact], message: &str, hops: usize) -> Vec<Fact> {
    let text = message.to_lowercase();
    let mut selected: Vec<usize> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut frontier: VecDeque<(String, usize)> = VecDeque::new();
    for f in facts {
        for entity in [&f.subject, &f.object] {
            if entity != USER && mentions(&text, entity) && seen.insert(entity.to_lowercase()) {
                frontier.push_back((entity.to_lowercase(), 0));
            }
        }
    }
    while let Some((entity, depth)) = frontier.pop_front() {
        for (i, f) in facts.iter().enumerate() {
            let (s, o) = (f.subject.to_lowercase(), f.object.to_lowercase());
            if s == entity || o == entity {
                if !selected.contains(&i) {
                    selected.push(i);
                }
                let other = if s == entity { o } else { s };
                if depth + 1 < hops && other != USER && seen.insert(other.clone()) {
                    frontier.push_back((other, depth + 1));
                }
            }
        }
    }
    selected.into_iter().map(|i| facts[i].clone()).collect()
}
