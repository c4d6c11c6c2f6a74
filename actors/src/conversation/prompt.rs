//! Prompt assembly: persona, context sections, then as much recent history as the token budget
//! allows (oldest turns dropped first), then the new message.

use std::time::Duration;

use crate::character::{Character, ModelParams};
use crate::conversation::context::Section;
use crate::ports::{ChatMessage, ChatRequest, Profile, Role, Turn};

/// Rough token count: about four characters a token for English text, plus a per-message
/// overhead for role markers. Exactness is not needed; the budget only has to keep prompts
/// comfortably inside the model's context window, whatever tokenizer the endpoint uses.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4) + 4
}

/// Collapses runs of spaces and tabs, trims every line, and keeps at most one blank line in a
/// row: persona files and stored turns are written for humans, the model pays for every token.
pub fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace().peekable();
        if words.peek().is_none() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        let mut first = true;
        for word in words {
            if !first {
                out.push(' ');
            }
            out.push_str(word);
            first = false;
        }
    }
    out
}

/// Inputs to one prompt.
pub struct PromptInput<'a> {
    pub character: &'a Character,
    pub params: &'a ModelParams,
    pub profile: Option<&'a Profile>,
    pub sections: &'a [Section],
    pub history: &'a [Turn],
    pub message: &'a str,
    /// Images sent with the message (vision models only).
    pub images: &'a [crate::messages::Image],
    /// What one image costs in the budget: endpoints bill an image as a fixed number of tokens
    /// that the text estimate cannot see.
    pub image_tokens: usize,
    /// Token budget for the whole prompt, excluding the reply's `max_tokens`.
    pub token_budget: usize,
    /// Unix ms now, to describe the profile in relative terms.
    pub now_ms: i64,
}

/// The request and how much history made it in.
pub struct BuiltPrompt {
    pub request: ChatRequest,
    pub history_turns_used: usize,
    pub estimated_tokens: usize,
}

pub fn build(input: PromptInput<'_>) -> BuiltPrompt {
    let mut system = minify(&input.character.system_prompt);
    if let Some(profile) = input.profile {
        system.push_str("\n\n## About the user\n");
        system.push_str(&describe_profile(profile, input.now_ms));
    }
    for section in input.sections.iter().filter(|s| !s.body.trim().is_empty()) {
        system.push_str("\n\n## ");
        system.push_str(&minify(&section.title));
        system.push('\n');
        system.push_str(&minify(&section.body));
    }
    let message = minify(input.message);

    let fixed = estimate_tokens(&system)
        + estimate_tokens(&message)
        + input.images.len() * input.image_tokens;
    let mut remaining = input.token_budget.saturating_sub(fixed);
    // Walk back from the newest turn and keep turns while they fit.
    let mut kept = Vec::new();
    for turn in input.history.iter().rev() {
        let user = minify(&turn.user_message);
        let reply = minify(&turn.reply);
        let cost = estimate_tokens(&user) + estimate_tokens(&reply);
        if cost > remaining {
            break;
        }
        remaining -= cost;
        kept.push((user, reply));
    }
    let history_turns_used = kept.len();

    let mut messages = Vec::with_capacity(2 + kept.len() * 2);
    messages.push(ChatMessage::new(Role::System, system));
    for (user, reply) in kept.into_iter().rev() {
        messages.push(ChatMessage::new(Role::User, user));
        messages.push(ChatMessage::new(Role::Assistant, reply));
    }
    messages.push(ChatMessage::user_with_images(
        message,
        input.images.to_vec(),
    ));

    BuiltPrompt {
        request: ChatRequest {
            model: input.params.model.clone(),
            messages,
            temperature: input.params.temperature,
            top_p: input.params.top_p,
            frequency_penalty: input.params.frequency_penalty,
            presence_penalty: input.params.presence_penalty,
            max_tokens: input.params.max_tokens,
            tools: Vec::new(),
            tool_choice: Default::default(),
            response_schema: None,
        },
        history_turns_used,
        estimated_tokens: input.token_budget.saturating_sub(remaining),
    }
}

/// Trust that rises with interaction: many messages over many days make a friend.
pub fn trust(message_count: u64, days_known: u64) -> f32 {
    let by_messages = 1.0 - (-(message_count as f32) / 40.0).exp();
    let by_time = 1.0 - (-(days_known as f32) / 30.0).exp();
    0.7 * by_messages + 0.3 * by_time
}

fn familiarity(message_count: u64, days_known: u64) -> &'static str {
    match trust(message_count, days_known) {
        t if t < 0.1 => "new acquaintance, be welcoming",
        t if t < 0.4 => "acquaintance",
        t if t < 0.7 => "friend",
        _ => "close friend, speak warmly and casually",
    }
}

fn describe_profile(profile: &Profile, now_ms: i64) -> String {
    let since = Duration::from_millis(now_ms.saturating_sub(profile.first_seen_ms).max(0) as u64);
    let days = since.as_secs() / 86_400;
    let first = match days {
        0 => "today".to_owned(),
        1 => "yesterday".to_owned(),
        n => format!("{n} days ago"),
    };
    format!(
        "Name: {}. First talked with you {first}. Messages so far: {}. Familiarity: {}.",
        profile.display_name,
        profile.message_count,
        familiarity(profile.message_count, days)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{ConversationKey, Scope};

    fn character() -> Character {
        Character {
            id: "aria".into(),
            name: "Aria".into(),
            system_prompt: "  You are   Aria.\n\n\n\n  Be kind.\t\t ".into(),
            model: ModelParams {
                model: None,
                temperature: 0.7,
                top_p: None,
                frequency_penalty: None,
                presence_penalty: None,
                max_tokens: 64,
                vision: None,
            },
            fast_model: None,
        }
    }

    fn turn(i: usize) -> Turn {
        Turn {
            key: ConversationKey::new("aria", "u"),
            scope: Scope::Console,
            user_message: format!("question number {i} {}", "x".repeat(40)),
            reply: format!("answer number {i} {}", "y".repeat(40)),
            created_at_ms: 0,
            replied_at_ms: 0,
            message_id: None,
        }
    }

    #[test]
    fn minify_collapses_whitespace_but_keeps_paragraphs() {
        assert_eq!(
            minify("  You are   Aria.\n\n\n\n  Be kind.\t\t "),
            "You are Aria.\n\nBe kind."
        );
        assert_eq!(minify("a\nb"), "a\nb");
        assert_eq!(minify("   \n  "), "");
    }

    #[test]
    fn history_is_trimmed_oldest_first_to_the_budget() {
        let c = character();
        let history: Vec<Turn> = (0..50).map(turn).collect();
        let built = build(PromptInput {
            character: &c,
            params: &c.model,
            profile: None,
            sections: &[],
            history: &history,
            message: "hello",
            images: &[],
            image_tokens: 0,
            token_budget: 200,
            now_ms: 0,
        });
        assert!(built.history_turns_used > 0 && built.history_turns_used < 50);
        assert!(built.estimated_tokens <= 200);
        let msgs = &built.request.messages;
        assert_eq!(msgs[0].role, Role::System);
        assert_eq!(msgs[0].content, "You are Aria.\n\nBe kind.");
        // The newest turn is the last one kept, right before the new message.
        assert!(
            msgs[msgs.len() - 3]
                .content
                .starts_with("question number 49")
        );
        assert!(msgs[1].content.starts_with(&format!(
            "question number {}",
            50 - built.history_turns_used
        )));
        assert_eq!(msgs.last().unwrap().content, "hello");
    }

    #[test]
    fn images_ride_on_the_new_message_and_cost_their_tokens() {
        let c = character();
        let history: Vec<Turn> = (0..50).map(turn).collect();
        let image = crate::messages::Image {
            mime: "image/png".into(),
            base64: "iVBORw0KGgo=".into(),
        };
        let build_with = |images: &[crate::messages::Image]| {
            build(PromptInput {
                character: &c,
                params: &c.model,
                profile: None,
                sections: &[],
                history: &history,
                message: "what is this?",
                images,
                image_tokens: 200,
                token_budget: 600,
                now_ms: 0,
            })
        };
        let without = build_with(&[]);
        let with = build_with(std::slice::from_ref(&image));
        // The image's 200 tokens push history out, not the budget up.
        assert!(with.history_turns_used < without.history_turns_used);
        assert!(with.estimated_tokens <= 600);
        let last = with.request.messages.last().unwrap();
        assert_eq!(last.content, "what is this?");
        assert_eq!(last.images, vec![image]);
        assert!(without.request.messages.iter().all(|m| m.images.is_empty()));
    }

    #[test]
    fn profile_and_sections_land_in_the_system_prompt() {
        let c = character();
        let profile = Profile {
            user: "u".into(),
            display_name: "Sam".into(),
            first_seen_ms: 0,
            last_seen_ms: 0,
            message_count: 3,
        };
        let sections = [Section {
            title: "Memories".into(),
            body: "likes  tea".into(),
        }];
        let built = build(PromptInput {
            character: &c,
            params: &c.model,
            profile: Some(&profile),
            sections: &sections,
            history: &[],
            message: "hi",
            images: &[],
            image_tokens: 0,
            token_budget: 1000,
            now_ms: 3 * 86_400_000,
        });
        let system = &built.request.messages[0].content;
        assert!(
            system.contains("Name: Sam. First talked with you 3 days ago. Messages so far: 3.")
        );
        assert!(system.contains("## Memories\nlikes tea"));
    }
}

#[cfg(test)]
mod trust_tests {
    use super::trust;

    #[test]
    fn trust_rises_with_interaction() {
        assert!(trust(0, 0) < 0.01);
        assert!(trust(10, 1) < trust(50, 1));
        assert!(trust(50, 1) < trust(50, 60));
        assert!(trust(500, 365) > 0.95);
    }
}
