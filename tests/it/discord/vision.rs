//! Images on Discord and a vision model: the bytes the emulator serves reach the model as data
//! URLs with the right MIME type (the scripted server records the request's content parts), a
//! character without vision gets the notice instead, images that cannot be sent are skipped
//! with a note and never fail the reply, and the model's description of an image becomes a
//! memory that is recalled in its scope and forgotten by `/forget`.

use std::io::Cursor;
use std::path::Path;

use base64::Engine;
use image::{ImageFormat, Rgb, RgbImage};

use super::*;

/// A small picture in `format`; `seed` makes pictures differ.
fn picture(format: ImageFormat, seed: u8, side: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(side, side, |x, y| {
        Rgb([
            (x as u8).wrapping_mul(seed),
            (y as u8).wrapping_add(seed),
            ((x ^ y) as u8).wrapping_mul(7),
        ])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut out), format)
        .unwrap();
    out
}

fn data_url(mime: &str, bytes: &[u8]) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Characters for the rig: aria reads images (`[model] vision = true`), marlowe does not
/// (`llm.vision` stays false).
fn characters(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("characters");
    std::fs::create_dir_all(&out).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/characters");
    let aria = std::fs::read_to_string(root.join("aria.toml")).unwrap();
    std::fs::write(
        out.join("aria.toml"),
        aria.replacen("[model]\n", "[model]\nvision = true\n", 1),
    )
    .unwrap();
    std::fs::copy(root.join("marlowe.toml"), out.join("marlowe.toml")).unwrap();
    out
}

async fn wait_shown(rig: &Rig, message: u64, part: &str) -> String {
    let mut reply = String::new();
    for _ in 0..400 {
        reply = shown(&rig.reply_writes(message));
        if reply.contains(part) {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("reply to {message} never showed {part:?}: {reply:?}");
}

/// The chat request that answered `text` (the last one whose user message contains it).
fn request_for(rig: &Rig, text: &str) -> crate::support::openai_server::Recorded {
    rig.llm
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.last_user_message().contains(text))
        .unwrap_or_else(|| panic!("no model request for {text:?}"))
}

#[test]
fn images_reach_a_vision_model_and_only_a_vision_model() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let chars = characters(dir.path());
        let rig = Rig::start(&["aria", "marlowe"], |s| {
            s.characters.dir = chars;
            s.discord.max_images = 3;
            s.discord.max_image_bytes = 40_000;
        })
        .await;
        let png = picture(ImageFormat::Png, 3, 16);
        let jpeg = picture(ImageFormat::Jpeg, 5, 16);
        let gif = picture(ImageFormat::Gif, 9, 16);

        // A vision character: text parts as before, then one data URL per image in order; a
        // GIF arrives as its first frame in PNG; beyond max_images, a note.
        let id = rig.emu.post(Incoming {
            attachments: vec![
                ("notes.txt".into(), "text/plain".into(), "buy milk".into()),
                ("photo.png".into(), "image/png".into(), png.clone()),
                ("snap.jpg".into(), "image/jpeg".into(), jpeg.clone()),
                ("wave.gif".into(), "image/gif".into(), gif.clone()),
                ("extra.png".into(), "image/png".into(), png.clone()),
            ],
            ..rig.mention("aria", "what do you see?")
        });
        let reply = wait_shown(&rig, id, "skipped extra.png").await;
        assert!(
            reply.contains("I look at up to 3 images per message"),
            "{reply}"
        );
        let asked = request_for(&rig, "what do you see?");
        assert!(asked.last_user_message().contains("buy milk"));
        let urls = asked.last_message_images();
        assert_eq!(urls.len(), 3, "{urls:?}");
        assert_eq!(urls[0], data_url("image/png", &png));
        assert_eq!(urls[1], data_url("image/jpeg", &jpeg));
        let frame = urls[2]
            .strip_prefix("data:image/png;base64,")
            .expect("the GIF is sent as a PNG");
        let frame = base64::engine::general_purpose::STANDARD
            .decode(frame)
            .unwrap();
        let frame = image::load_from_memory_with_format(&frame, ImageFormat::Png).unwrap();
        assert_eq!((frame.width(), frame.height()), (16, 16));
        // Only the new message carries images: history and the system prompt stay text.
        assert_eq!(asked.image_count(), 3, "{}", asked.body);

        // A character without vision: the notice, and no image part.
        let id = rig.emu.post(Incoming {
            attachments: vec![("photo.png".into(), "image/png".into(), png.clone())],
            ..rig.mention("marlowe", "and you?")
        });
        let reply = wait_shown(&rig, id, "couldn't open photo.png").await;
        assert!(
            reply.contains("I can only read text attachments"),
            "{reply}"
        );
        let asked = request_for(&rig, "and you?");
        assert_eq!(asked.image_count(), 0, "{}", asked.body);

        // Too large (not even downloaded), a broken download, bytes that are no image: each is
        // skipped with a note, and the text is still answered.
        rig.emu.break_attachment("broken.png");
        let big = picture(ImageFormat::Png, 11, 200);
        assert!(big.len() > 40_000, "{}", big.len());
        let id = rig.emu.post(Incoming {
            attachments: vec![
                ("big.png".into(), "image/png".into(), big),
                ("broken.png".into(), "image/png".into(), png.clone()),
                ("fake.png".into(), "image/png".into(), "not an image".into()),
            ],
            ..rig.mention("aria", "and these?")
        });
        let reply = wait_shown(&rig, id, "as an image").await;
        assert!(reply.starts_with("echo: and these?"), "{reply}");
        assert!(
            reply.contains("I skipped big.png: images over 39 KB are too large for me."),
            "{reply}"
        );
        assert!(
            reply.contains("I couldn't open broken.png, fake.png as an image."),
            "{reply}"
        );
        assert_eq!(request_for(&rig, "and these?").image_count(), 0);
        assert!(
            !rig.emu
                .attachment_downloads()
                .contains(&"big.png".to_owned())
        );
        rig.stop().await;
    });
}

#[test]
fn an_image_is_remembered_by_its_description_in_its_scope_and_forgotten() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let chars = characters(dir.path());
        let rig = Rig::start(&["aria"], |s| s.characters.dir = chars).await;
        let aria = rig.id("aria");
        rig.llm
            .describe_images_as("A red bicycle leaning on a blue wall.");
        let png = picture(ImageFormat::Png, 21, 24);

        // An image alone in a DM: answered, and described in the background.
        let dm = rig.emu.post(Incoming {
            author: USER,
            channel: 701,
            attachments: vec![("bike.png".into(), "image/png".into(), png.clone())],
            ..Default::default()
        });
        wait_shown(&rig, dm, "echo: (sent an image)").await;
        crate::support::app::drain(&rig.app).await;
        let described = rig.llm.describe_requests();
        assert_eq!(described.len(), 1);
        assert_eq!(
            described[0].last_message_images(),
            [data_url("image/png", &png)]
        );
        let db = rig._dir.path().join("whisperengine.db");
        let user = format!("discord:{USER}");
        let texts: Vec<String> = {
            let conn = rusqlite::Connection::open(&db).unwrap();
            let mut q = conn
                .prepare("SELECT text FROM memories WHERE user_id = ?1")
                .unwrap();
            q.query_map([&user], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert!(
            texts
                .iter()
                .any(|t| t == "the user shared an image: A red bicycle leaning on a blue wall."),
            "{texts:?}"
        );

        // DM memories stay in the DM: asked in the guild, the prompt does not show it.
        let guild = rig
            .emu
            .post(rig.mention("aria", "what was in the image I sent you?"));
        wait_shown(&rig, guild, "echo:").await;
        let system = &request_for(&rig, "what was in the image I sent you?").contents()[0];
        assert!(!system.contains("red bicycle"), "{system}");
        // Asked in the DM, it is recalled.
        let again = rig.emu.post(Incoming {
            author: USER,
            channel: 701,
            content: "what was in the photo I sent you?".into(),
            ..Default::default()
        });
        wait_shown(&rig, again, "echo:").await;
        let system = &request_for(&rig, "what was in the photo I sent you?").contents()[0];
        assert!(system.contains("red bicycle"), "{system}");

        // `/forget` removes the description with everything else.
        rig.emu.slash(aria, USER, "forget", &[("scope", "all")]);
        let forgot = answer_after(&rig, 0).await;
        assert!(forgot.content.as_deref().unwrap().contains("forgot"));
        assert!(
            user_rows(&db, &user).iter().all(|(_, n)| *n == 0),
            "{:?}",
            user_rows(&db, &user)
        );
        rig.stop().await;
    });
}

/// `limits.*` count a message with images once, whatever the number of images.
#[test]
fn a_message_with_images_counts_once_toward_the_limit() {
    run_actix(|| async {
        let dir = tempfile::tempdir().unwrap();
        let chars = characters(dir.path());
        let rig = Rig::start(&["aria"], |s| {
            s.characters.dir = chars;
            s.limits.messages_per_window = 2;
        })
        .await;
        let png = picture(ImageFormat::Png, 5, 8);
        let first = rig.emu.post(Incoming {
            attachments: (0..3)
                .map(|i| (format!("p{i}.png"), "image/png".into(), png.clone()))
                .collect(),
            ..rig.mention("aria", "three pictures")
        });
        wait_shown(&rig, first, "echo: three pictures").await;
        assert_eq!(
            request_for(&rig, "three pictures")
                .last_message_images()
                .len(),
            3
        );
        let second = rig.emu.post(rig.mention("aria", "still within the limit"));
        wait_shown(&rig, second, "echo: still within the limit").await;
        let third = rig.emu.post(rig.mention("aria", "one too many"));
        let reply = wait_shown(&rig, third, "faster than I can read them").await;
        assert!(!reply.contains("echo"), "{reply}");
        rig.stop().await;
    });
}
