//! Image attachments for a character whose model reads images: which to fetch, fetching each
//! within its size and time limits (in parallel), and the short note for those skipped.

use std::time::Duration;

use futures::future::join_all;
use reqwest012 as reqwest;
use serenity::all::Attachment;
use tracing::warn;
use whisper_actors::Image;

/// Limits on images sent to a vision model (`discord.max_images`, `max_image_bytes`,
/// `image_timeout`).
#[derive(Clone, Debug)]
pub struct ImageLimits {
    pub max_images: usize,
    pub max_bytes: u64,
    pub timeout: Duration,
}

/// Why an image attachment was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    TooMany,
    TooLarge,
    /// The download failed or timed out, or the bytes are no image the model takes.
    Unreadable,
}

/// The images to send, and the attachments skipped (file name, why).
#[derive(Debug, Default)]
pub struct Fetched {
    pub images: Vec<Image>,
    pub skipped: Vec<(String, Skip)>,
}

impl Fetched {
    /// One short line per reason, for the end of the reply.
    pub fn note(&self, limits: &ImageLimits) -> Option<String> {
        let names = |why: Skip| {
            let names: Vec<&str> = self
                .skipped
                .iter()
                .filter(|(_, w)| *w == why)
                .map(|(n, _)| n.as_str())
                .collect();
            (!names.is_empty()).then(|| names.join(", "))
        };
        let mut lines = Vec::new();
        if let Some(names) = names(Skip::TooMany) {
            lines.push(format!(
                "-# I look at up to {} images per message; I skipped {names}.",
                limits.max_images
            ));
        }
        if let Some(names) = names(Skip::TooLarge) {
            lines.push(format!(
                "-# I skipped {names}: images over {} are too large for me.",
                human_bytes(limits.max_bytes)
            ));
        }
        if let Some(names) = names(Skip::Unreadable) {
            lines.push(format!("-# I couldn't open {names} as an image."));
        }
        (!lines.is_empty()).then(|| lines.join("\n"))
    }
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1024 * 1024 => format!("{:.1} MB", b as f64 / (1024.0 * 1024.0)),
        b => format!("{} KB", b / 1024),
    }
}

/// Fetches the image attachments (in message order) within `limits`, through the bot's HTTP
/// client; every failure becomes a skip, never an error.
pub async fn fetch(
    client: &reqwest::Client,
    attachments: &[&Attachment],
    limits: &ImageLimits,
) -> Fetched {
    let mut fetched = Fetched::default();
    let mut wanted = Vec::new();
    for attachment in attachments {
        if wanted.len() >= limits.max_images {
            fetched
                .skipped
                .push((attachment.filename.clone(), Skip::TooMany));
        } else if u64::from(attachment.size) > limits.max_bytes {
            fetched
                .skipped
                .push((attachment.filename.clone(), Skip::TooLarge));
        } else {
            wanted.push(*attachment);
        }
    }
    let downloads = wanted
        .iter()
        .map(|a| download(client, &a.url, limits.max_bytes, limits.timeout));
    for (attachment, outcome) in wanted.iter().zip(join_all(downloads).await) {
        let prepared = match outcome {
            Ok(bytes) => tokio::task::spawn_blocking(move || crate::vision::prepare(&bytes))
                .await
                .map_err(|e| Failure::Other(e.to_string()))
                .and_then(|r| r.map_err(|e| Failure::Other(e.to_string()))),
            Err(failure) => Err(failure),
        };
        match prepared {
            Ok(image) => fetched.images.push(image),
            Err(Failure::TooLarge) => fetched
                .skipped
                .push((attachment.filename.clone(), Skip::TooLarge)),
            Err(Failure::Other(error)) => {
                // The file name is the user's words too: not logged.
                warn!(%error, bytes = attachment.size, "an image attachment was not sent to the model");
                fetched
                    .skipped
                    .push((attachment.filename.clone(), Skip::Unreadable));
            }
        }
    }
    fetched
}

enum Failure {
    /// Larger than announced, and than the limit.
    TooLarge,
    Other(String),
}

/// Downloads at most `max_bytes` (the announced size is not trusted) within `timeout`.
async fn download(
    client: &reqwest::Client,
    url: &str,
    max_bytes: u64,
    timeout: Duration,
) -> Result<Vec<u8>, Failure> {
    let fetch = async {
        let mut response = client
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| Failure::Other(format!("download failed: {e}")))?;
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Failure::Other(format!("download failed: {e}")))?
        {
            if (bytes.len() + chunk.len()) as u64 > max_bytes {
                return Err(Failure::TooLarge);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .unwrap_or_else(|_| Err(Failure::Other(format!("download took over {timeout:?}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_names_each_skipped_file_under_its_reason() {
        let limits = ImageLimits {
            max_images: 2,
            max_bytes: 5 * 1024 * 1024,
            timeout: Duration::from_secs(10),
        };
        let fetched = Fetched {
            images: Vec::new(),
            skipped: vec![
                ("c.png".into(), Skip::TooMany),
                ("big.jpg".into(), Skip::TooLarge),
                ("d.png".into(), Skip::TooMany),
                ("broken.png".into(), Skip::Unreadable),
            ],
        };
        let note = fetched.note(&limits).unwrap();
        assert_eq!(
            note,
            "-# I look at up to 2 images per message; I skipped c.png, d.png.\n\
             -# I skipped big.jpg: images over 5.0 MB are too large for me.\n\
             -# I couldn't open broken.png as an image."
        );
        assert_eq!(Fetched::default().note(&limits), None);
    }
}
