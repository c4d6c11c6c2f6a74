//! The image-description job: the image itself is never stored; for a vision model the model
//! describes it in one line after the reply, and that line becomes a memory of the message, so
//! a later "what was in the photo I sent you?" finds it like anything else the user said.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::key::{ConversationKey, Scope};
use crate::messages::Image;

use super::*;

/// Payload of a `describe_image` job. It holds the image until the job has run (a durable job
/// must survive a restart); the queue drops it with the job, and `/forget` with the user's jobs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DescribeImage {
    pub key: ConversationKey,
    pub scope: Scope,
    /// When the message was sent: the memory's time.
    pub at_ms: i64,
    /// Which image of the message (a message may carry several).
    pub index: u32,
    pub image: Image,
    /// The character's model, the one that read the image (`None`: the endpoint's default).
    pub model: Option<String>,
}

impl crate::jobs::Payload for DescribeImage {
    const KIND: crate::jobs::JobKind = crate::jobs::JobKind::DescribeImage;
}

pub const DESCRIBE_PROMPT: &str = "Describe the image the user shared in one short, factual \
sentence: what it shows, and any text in it. Answer with the sentence only.";

/// How the description is stored: in the user's voice, so recall reads it as what they did.
pub fn image_memory(description: &str) -> String {
    format!("the user shared an image: {description}")
}

/// The description from the model's answer: its first non-empty line, trimmed.
pub fn parse_description(answer: &str) -> Option<String> {
    answer
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.trim_matches('"').trim().to_owned())
        .filter(|l| !l.is_empty())
}

/// Asks the model (background lane) to describe one image and stores the line as a memory.
pub struct DescribeImageHandler {
    pub store: Arc<dyn MemoryStore>,
    pub embedder: Arc<dyn crate::ports::Embedder>,
    pub llm: actix::Addr<crate::llm::LlmActor>,
}

#[async_trait]
impl crate::jobs::JobHandler for DescribeImageHandler {
    fn kind(&self) -> crate::jobs::JobKind {
        <DescribeImage as crate::jobs::Payload>::KIND
    }

    async fn run(&self, job: &crate::jobs::Job) -> Result<(), crate::jobs::JobError> {
        use crate::jobs::JobError;
        use crate::ports::{ChatMessage, ChatRequest, Role};
        let input: DescribeImage = job.payload()?;
        let request = ChatRequest::completion(
            input.model.clone(),
            vec![
                ChatMessage::new(Role::System, DESCRIBE_PROMPT),
                ChatMessage::user_with_images("Describe this image.", vec![input.image.clone()]),
            ],
            0.2,
            80,
        );
        let answer = crate::llm::complete_in_background(&self.llm, request)
            .await
            .map_err(|e| JobError::new(e.to_string()))?;
        let description =
            parse_description(&answer).ok_or_else(|| JobError::new("empty image description"))?;
        let text = image_memory(&description);
        let vector = embed_in_background(self.embedder.as_ref(), &text).await?;
        self.store
            .add(vec![MemoryChunk {
                key: input.key.clone(),
                scope: input.scope.clone(),
                kind: MemoryKind::Message,
                // One memory per image of a message: a re-run after a crash replaces it.
                group: format!("image:{}:{}", input.at_ms, input.index),
                chunk: 0,
                text,
                // Something the user showed is as telling as something they said about themselves.
                importance: 0.8,
                created_at_ms: input.at_ms,
                vector,
            }])
            .await
            .map_err(|e| JobError::new(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_is_the_description() {
        assert_eq!(
            parse_description("\n  \"A red bicycle against a wall.\"  \nMore.").as_deref(),
            Some("A red bicycle against a wall.")
        );
        assert_eq!(parse_description("  \n "), None);
        assert_eq!(
            image_memory("a cat"),
            "the user shared an image: a cat".to_owned()
        );
    }

    #[test]
    fn the_payload_keeps_the_image_out_of_debug_output() {
        let payload = DescribeImage {
            key: ConversationKey::new("aria", "discord:1"),
            scope: Scope::Direct,
            at_ms: 1,
            index: 0,
            image: Image {
                mime: "image/png".into(),
                base64: "c2VjcmV0IHBob3Rv".into(),
            },
            model: None,
        };
        let debug = format!("{payload:?}");
        assert!(!debug.contains("c2VjcmV0IHBob3Rv"), "{debug}");
        let json = serde_json::to_string(&payload).unwrap();
        let back: DescribeImage = serde_json::from_str(&json).unwrap();
        assert_eq!(back.image, payload.image);
    }
}
