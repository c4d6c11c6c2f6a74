//! Text helpers shared by the classifier, fact selection and memory chunking.

/// Whether `phrase` occurs in `text` as whole words: "ago" must not match "Chicago". Both are
/// compared as given; callers lower-case when they want case-insensitive matching.
pub fn contains_words(text: &str, phrase: &str) -> bool {
    !phrase.is_empty()
        && text.match_indices(phrase).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + phrase.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
}

/// Splits text into chunks of at most `max_words` words (the embedder truncates long input).
pub fn chunk(text: &str, max_words: usize) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return Vec::new();
    }
    words
        .chunks(max_words.max(1))
        .map(|w| w.join(" "))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_words_only() {
        assert!(contains_words("two days ago", "ago"));
        assert!(!contains_words("i live in chicago", "ago"));
        assert!(contains_words("ago.", "ago"));
        assert!(!contains_words("anything", ""));
    }
}
