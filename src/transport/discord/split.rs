//! Splitting a reply into Discord messages of at most 2,000 characters.
//!
//! Splitting never changes the model's text: every part is a slice of it, cut after a paragraph
//! break, else a line break, else a space, and only then in the middle of a word, and the slices
//! concatenated are the reply byte for byte (indentation, list markers and spacing included).
//! The only additions are fence lines: a code block cut in two is closed at the end of one
//! message and reopened (with its language) at the start of the next, so every message renders
//! on its own.

use std::ops::Range;

/// Discord's limit, in characters (not bytes).
pub const MAX_CHARS: usize = 2000;

/// The closing fence added to a part that ends inside a code block (after a line break).
const CLOSE: &str = "```";

/// One message of a split reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// The fence line reopened before the slice (e.g. "```py"), without its line break.
    pub reopen: Option<String>,
    /// The bytes of the reply this message shows.
    pub source: Range<usize>,
    /// Whether the message closes a code block the slice leaves open.
    pub close: bool,
}

impl Part {
    /// The message as sent: the reopened fence, the slice, the closing fence.
    pub fn render(&self, text: &str) -> String {
        let body = &text[self.source.clone()];
        let mut out = String::with_capacity(body.len() + 16);
        if let Some(fence) = &self.reopen {
            out.push_str(fence);
            out.push('\n');
        }
        out.push_str(body);
        if self.close {
            if !body.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(CLOSE);
        }
        out
    }
}

/// Splits `text` into messages of at most `max` characters each.
pub fn split(text: &str, max: usize) -> Vec<String> {
    split_parts(text, max)
        .iter()
        .map(|p| p.render(text))
        .collect()
}

/// Splits `text` into parts of at most `max` characters each once rendered.
pub fn split_parts(text: &str, max: usize) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut at = 0;
    // The fence opened in an earlier part and still open (e.g. "```rust").
    let mut open: Option<String> = None;
    while at < text.len() {
        let rest = &text[at..];
        let reopen_chars = open.as_ref().map_or(0, |f| f.chars().count() + 1);
        if reopen_chars + rest.chars().count() <= max {
            parts.push(Part {
                reopen: open.take(),
                source: at..text.len(),
                close: false,
            });
            break;
        }
        // Room for the reopened fence and for a closing one ("\n```") should the part end in
        // a block.
        let budget = max.saturating_sub(reopen_chars + CLOSE.len() + 1).max(1);
        let cut = cut_point(rest, budget);
        let still_open = fence_after(open.as_deref(), &rest[..cut]);
        parts.push(Part {
            reopen: open.take(),
            source: at..at + cut,
            close: still_open.is_some(),
        });
        open = still_open;
        at += cut;
    }
    parts
}

/// Byte index where to cut `text` so the head has at most `budget` characters (at least one).
/// The separator stays with the head, so nothing is dropped.
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

/// The fence still open after `text`, given the one open before it.
fn fence_after(open: Option<&str>, text: &str) -> Option<String> {
    let mut open = open.map(str::to_owned);
    for line in text.lines() {
        if let Some(after) = line.trim_start().strip_prefix("```") {
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
    use proptest::prelude::*;

    fn fences_balanced(part: &str) -> bool {
        part.lines()
            .filter(|l| l.trim_start().starts_with("```"))
            .count()
            % 2
            == 0
    }

    /// Every invariant a split must keep, for any text and limit.
    fn check(text: &str, max: usize) {
        let parts = split_parts(text, max);
        let joined: String = parts.iter().map(|p| &text[p.source.clone()]).collect();
        assert_eq!(joined, text, "the slices are the text, byte for byte");
        let mut expect_at = 0;
        for part in &parts {
            assert_eq!(part.source.start, expect_at, "contiguous");
            assert!(!part.source.is_empty(), "no empty part");
            expect_at = part.source.end;
            let rendered = part.render(text);
            assert!(
                rendered.chars().count() <= max,
                "{} > {max}",
                rendered.chars().count()
            );
            // Removing the added fence lines gives the slice back.
            let mut body = rendered.as_str();
            if let Some(fence) = &part.reopen {
                body = body.strip_prefix(&format!("{fence}\n")).unwrap();
            }
            if part.close {
                body = body.strip_suffix(CLOSE).unwrap();
                let slice = &text[part.source.clone()];
                if !slice.ends_with('\n') {
                    body = body.strip_suffix('\n').unwrap();
                }
            }
            assert_eq!(body, &text[part.source.clone()]);
        }
        assert_eq!(expect_at, text.len());
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
        assert!(parts.iter().all(|p| !p.starts_with(' ')));
        assert_eq!(parts.concat(), text);
        check(&text, 2000);
    }

    #[test]
    fn a_code_block_cut_in_two_is_closed_and_reopened_with_its_indentation() {
        let code: String = (0..120)
            .map(|i| format!("    return compute_{i}(value)\n"))
            .collect();
        let text = format!("Here you go:\n\n```python\ndef f():\n{code}```\n\nThat's all.");
        let parts = split(&text, 2000);
        assert!(parts.len() >= 2);
        for p in &parts {
            assert!(p.chars().count() <= 2000, "{}", p.chars().count());
            assert!(fences_balanced(p), "{p}");
        }
        assert!(
            parts[1].starts_with("```python\n    return"),
            "{}",
            &parts[1][..40]
        );
        let lines: usize = parts
            .iter()
            .map(|p| p.lines().filter(|l| l.starts_with("    return ")).count())
            .sum();
        assert_eq!(lines, 120);
        check(&text, 2000);
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

    /// Pieces texts are built from: prose, code fences with indented lines, lists, quotes,
    /// CJK and emoji, odd spacing.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{1,12}( [a-z]{1,12}){0,20}\\. ",
            Just("\n".to_owned()),
            Just("\n\n".to_owned()),
            Just("\n```python\n".to_owned()),
            Just("\n```\n".to_owned()),
            "    [a-z_]{1,10} = [0-9]{1,5}\n",
            "\t[a-z]{1,8}\\(\\)\n",
            "- [a-z ]{1,30}\n",
            "  \\* [a-z ]{1,30}\n",
            "> [a-z ]{1,40}\n",
            "[\u{4e00}-\u{4e80}]{1,30}",
            "[😀-🙏]{1,10}",
            "  [a-z]{1,5}   ",
            "[a-z]{40,120}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn splitting_never_changes_the_text(
            pieces in prop::collection::vec(piece(), 1..80),
            max in 30usize..400,
        ) {
            let text: String = pieces.concat();
            check(&text, max);
        }

        #[test]
        fn discord_sized_splits_keep_the_text(
            pieces in prop::collection::vec(piece(), 50..400),
        ) {
            let text: String = pieces.concat();
            check(&text, MAX_CHARS);
            let parts = split(&text, MAX_CHARS);
            // Every message but the last renders on its own; the last is as balanced as the
            // model left its reply.
            for part in &parts[..parts.len() - 1] {
                prop_assert!(fences_balanced(part), "{}", part);
            }
        }
    }
}
