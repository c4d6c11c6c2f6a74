//! The words of a message as keyword search and the relevance boosts see them.
//!
//! Deliberately small and English-first: the keyword half of hybrid recall only has to find
//! the rare, specific words ("Salzburg", "cello", "sister") that sentence embeddings blur, and
//! the boosts only have to tell "my birthday" from "my dad's birthday".

/// Words too common to say what a message is about.
const STOPWORDS: &[&str] = &[
    "a", "about", "again", "all", "am", "an", "and", "any", "are", "as", "at", "be", "been", "but",
    "by", "can", "could", "did", "do", "does", "for", "from", "get", "got", "had", "has", "have",
    "he", "her", "him", "his", "how", "i", "if", "in", "is", "it", "its", "just", "me", "my",
    "now", "of", "on", "or", "our", "she", "so", "that", "the", "their", "them", "then", "there",
    "these", "they", "this", "to", "us", "was", "we", "were", "what", "whats", "when", "where",
    "wheres", "which", "who", "whos", "why", "will", "with", "would", "you", "your", "im", "ive",
    "dont", "tell", "remember", "know", "think", "ever", "still", "day", "days", "today", "week",
    "weeks", "time", "thing", "things", "lot", "really", "much", "very", "some", "one", "way",
    "back", "going", "make", "want", "like", "good", "new", "old",
];

/// People a message can be about instead of the user.
const RELATIONS: &[&str] = &[
    "sister",
    "brother",
    "sibling",
    "dad",
    "father",
    "mum",
    "mom",
    "mother",
    "parents",
    "wife",
    "husband",
    "partner",
    "son",
    "daughter",
    "kid",
    "kids",
    "child",
    "children",
    "friend",
    "friends",
    "colleague",
    "coworker",
    "neighbour",
    "neighbor",
    "neighbours",
    "neighbors",
    "cousin",
    "boss",
    "aunt",
    "uncle",
    "grandma",
    "grandpa",
    "girlfriend",
    "boyfriend",
    "roommate",
    "flatmate",
    "niece",
    "nephew",
];

/// One word: lowercased, apostrophes dropped, and whether it was a possessive ("dad's").
#[derive(Clone, Debug, PartialEq)]
pub struct Word {
    pub text: String,
    pub possessive: bool,
}

/// The words of `text`, in order.
pub fn words(text: &str) -> Vec<Word> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’'))
        .filter(|w| !w.is_empty())
        .map(|w| {
            let lower = w.to_lowercase().replace('’', "'");
            let (base, possessive) = match lower.strip_suffix("'s") {
                Some(base) => (base.to_owned(), true),
                None => (lower, false),
            };
            Word {
                text: base.replace('\'', ""),
                possessive,
            }
        })
        .filter(|w| !w.text.is_empty())
        .collect()
}

/// The distinct words worth searching for, at most 16, in order of appearance.
pub fn query_terms(text: &str) -> Vec<String> {
    let mut terms: Vec<String> = Vec::new();
    for w in words(text) {
        if w.text.chars().count() < 2 || STOPWORDS.contains(&w.text.as_str()) {
            continue;
        }
        if !terms.contains(&w.text) {
            terms.push(w.text);
        }
        if terms.len() == 16 {
            break;
        }
    }
    terms
}

/// What a text says about whom: the nouns it puts after "my" ("my flat", "my dog's"), the
/// relations it names, and whether some relation owns something in it ("my dad's birthday").
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Aboutness {
    pub mine: Vec<String>,
    pub relations: Vec<String>,
    pub names: Vec<String>,
}

impl Aboutness {
    pub fn of(text: &str) -> Self {
        let ws = words(text);
        let mut about = Aboutness::default();
        for (i, w) in ws.iter().enumerate() {
            if w.text == "my"
                && let Some(next) = ws.get(i + 1)
            {
                about.mine.push(next.text.clone());
            }
            if RELATIONS.contains(&w.text.as_str()) && !about.relations.contains(&w.text) {
                about.relations.push(w.text.clone());
            }
        }
        // Capitalised words are names ("Maren", "Porto"), whatever case the rest is in; a
        // capitalised first word that is a common word ("When", "My") is not.
        for raw in text.split_whitespace() {
            let clean: String = raw.chars().filter(|c| c.is_alphanumeric()).collect();
            if clean.chars().next().is_some_and(char::is_uppercase) && clean.len() > 1 {
                let lower = clean.to_lowercase();
                if !STOPWORDS.contains(&lower.as_str()) && !about.names.contains(&lower) {
                    about.names.push(lower);
                }
            }
        }
        about
    }

    /// How much more (above 1) or less (below 1) a memory with this aboutness answers `query`:
    /// it names what the user asked about as theirs, or a name the question names; or it is
    /// about a relation the question does not ask about.
    pub fn boost_for(&self, query: &Aboutness) -> f32 {
        let mut factor = 1.0;
        if query.mine.iter().any(|m| self.mine.contains(m)) {
            factor *= 1.25;
        }
        if query.names.iter().any(|n| self.names.contains(n)) {
            factor *= 1.25;
        }
        let asked = |r: &String| query.relations.contains(r) || query.mine.contains(r);
        if self.relations.iter().any(|r| !asked(r)) {
            factor *= 0.8;
        }
        factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_skip_common_words_and_keep_the_specific_ones() {
        assert_eq!(
            query_terms("Where's my sister based again?"),
            ["sister", "based"]
        );
        assert_eq!(query_terms("what's my dog's name?"), ["dog", "name"]);
    }

    #[test]
    fn possessives_and_relations_tell_whose_fact_it_is() {
        let question = Aboutness::of("When do I get a year older?");
        let mine = Aboutness::of("my birthday is on 14 March");
        let dads = Aboutness::of("my dad's birthday is on 29 August");
        assert!(mine.boost_for(&question) > dads.boost_for(&question));

        let question = Aboutness::of("what's the date of my birthday again?");
        assert!(mine.boost_for(&question) > 1.0);
        assert!(dads.boost_for(&question) < 1.0);

        let question = Aboutness::of("where's my sister based again?");
        let hers = Aboutness::of("my sister Maren lives in Salzburg");
        let neighbours = Aboutness::of("my neighbour's sister is visiting from Dundee");
        assert!(hers.boost_for(&question) > neighbours.boost_for(&question));
    }

    #[test]
    fn names_are_found_in_lowercase_text_too() {
        assert_eq!(
            Aboutness::of("i visited Maren in Salzburg").names,
            ["maren", "salzburg"]
        );
    }
}
