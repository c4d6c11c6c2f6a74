//! Splitting a reply into Discord messages of at most 2,000 characters.
//!
//! A cut prefers a paragraph break, then a line break, then a space, and only then the middle of
//! a word. A code block cut in two is closed at the end of one message and reopened (with its
//! language) at the start of the next, so every message renders on its own.

/// Discord's limit, in characters (not bytes).
pub const MAX_CHARS: usize = 2000;

/// Splits `text` into messages of at most `max` characters each.
pub fn split(text: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest: &str = text;
    // The fence opened in the previous part and still open (e.g. "```rust").
    let mut carry: Option<String> = None;
    while !rest.is_empty() {
        let prefix = carry.as_ref().map(|f| format!("{f}\n")).unwrap_or_default();
        // Room for the prefix and for a closing fence ("\n```") should this part end in a block.
        let budget = max.saturating_sub(prefix.chars().count() + 4).max(1);
        if prefix.chars().count() + rest.chars().count() <= max {
            out.push(format!("{prefix}{rest}"));
            break;
        }
        let cut = cut_point(rest, budget);
        let (head, tail) = rest.split_at(cut);
        let mut part = format!("{prefix}{}", head.trim_end_matches([' ']));
        carry = open_fence(&part);
        if carry.is_some() {
            if !part.ends_with('\n') {
                part.push('\n');
            }
            part.push_str("```");
        }
        out.push(part);
        rest = tail.trim_start_matches([' ', '\n']);
    }
    out
}

/// Byte index where to cut `text` so the head has at most `budget` characters.
fn cut_point(text: &str, budget: usize) -> usize {
    let limit = text
        .char_indices()
        .nth(budget)
        .map_or(text.len(), |(i, _)| i);
    let window = &text[..limit];
    for sep in ["\n\n", "\n", " "] {
        if let Some(at) = window.rfind(sep)
            && at > limit / 3
        {
            return at + sep.len();
        }
    }
    limit
}

/// The fence left open at the end of `text`, if any (its opening line, e.g. "```py").
fn open_fence(text: &str) -> Option<String> {
    let mut open: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(after) = trimmed.strip_prefix("```") {
            open = match open {
                Some(_) => None,
                None => Some(format!("```{}", after.trim())),
            };
        }
    }
    open
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fences_balanced(part: &str) -> bool {
        part.lines()
            .filter(|l| l.trim_start().starts_with("```"))
            .count()
            % 2
            == 0
    }

    #[test]
    fn short_text_is_one_message() {
        assert_eq!(split("hello", 2000), vec!["hello"]);
    }

    #[test]
    fn long_prose_is_cut_at_paragraphs_and_nothing_is_lost() {
        let para = "word ".repeat(150).trim_end().to_owned();
        let text = vec![para.clone(); 8].join("\n\n");
        let parts = split(&text, 2000);
        assert!(parts.len() >= 3, "{}", parts.len());
        assert!(parts.iter().all(|p| p.chars().count() <= 2000));
        assert!(
            parts
                .iter()
                .all(|p| !p.starts_with(' ') && !p.ends_with(' '))
        );
        let words: usize = parts.iter().map(|p| p.split_whitespace().count()).sum();
        assert_eq!(words, 8 * 150);
    }

    #[test]
    fn a_code_block_cut_in_two_is_closed_and_reopened() {
        let code: String = (0..120)
            .map(|i| format!("let value_{i} = compute({i});\n"))
            .collect();
        let text = format!("Here you go:\n\n```rust\n{code}```\n\nThat's all.");
        let parts = split(&text, 2000);
        assert!(parts.len() >= 2);
        for p in &parts {
            assert!(p.chars().count() <= 2000, "{}", p.chars().count());
            assert!(fences_balanced(p), "{p}");
        }
        assert!(parts[1].starts_with("```rust\n"), "{}", &parts[1][..20]);
        let lines: usize = parts
            .iter()
            .map(|p| p.lines().filter(|l| l.starts_with("let value_")).count())
            .sum();
        assert_eq!(lines, 120);
    }

    #[test]
    fn a_word_longer_than_a_message_is_cut_anyway() {
        let text = "x".repeat(4500);
        let parts = split(&text, 2000);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn multibyte_text_is_counted_in_characters() {
        let text = "é".repeat(3000);
        let parts = split(&text, 2000);
        assert!(parts.iter().all(|p| p.chars().count() <= 2000));
        assert_eq!(parts.concat(), text);
    }
}
