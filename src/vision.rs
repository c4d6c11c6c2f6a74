//! Images for a vision model: each is checked by decoding it before it is sent, because one
//! broken image makes an endpoint refuse the whole request (and the user would get an apology
//! instead of a reply).

use std::io::Cursor;

use base64::Engine;
use image::{ImageFormat, ImageReader, Limits};
use whisper_actors::Image;

/// Decoding allocates the whole bitmap: a hostile "image" (a tiny file claiming 100k × 100k
/// pixels) is refused here instead of exhausting memory.
const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not a PNG, JPEG, WebP or GIF image")]
    Unsupported,
    #[error("the image does not decode: {0}")]
    Undecodable(String),
}

/// Whether an attachment claims to be an image a vision model takes, by its content type or,
/// without one, its file extension (the bytes are checked later, by [`prepare`]).
pub fn looks_like_image(content_type: Option<&str>, filename: &str) -> bool {
    match content_type {
        Some(t) => matches!(
            t.split(';').next().unwrap_or_default().trim(),
            "image/png" | "image/jpeg" | "image/jpg" | "image/webp" | "image/gif"
        ),
        None => filename.rsplit_once('.').is_some_and(|(_, ext)| {
            matches!(
                ext.to_ascii_lowercase().as_str(),
                "png" | "jpg" | "jpeg" | "webp" | "gif"
            )
        }),
    }
}

/// The image as the model receives it: PNG, JPEG and WebP unchanged once they decode; a GIF as
/// its first frame, re-encoded as PNG (OpenAI-style APIs take still images; an animation's
/// first frame is what a reader sees first). The format comes from the bytes, never from the
/// file name.
pub fn prepare(bytes: &[u8]) -> Result<Image, ImageError> {
    let format = image::guess_format(bytes).map_err(|_| ImageError::Unsupported)?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif
    ) {
        return Err(ImageError::Unsupported);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let decoded = reader
        .decode()
        .map_err(|e| ImageError::Undecodable(e.to_string()))?;
    let engine = base64::engine::general_purpose::STANDARD;
    if format == ImageFormat::Gif {
        let mut png = Vec::new();
        decoded
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .map_err(|e| ImageError::Undecodable(e.to_string()))?;
        return Ok(Image {
            mime: "image/png".into(),
            base64: engine.encode(&png).into(),
        });
    }
    Ok(Image {
        mime: format.to_mime_type().into(),
        base64: engine.encode(bytes).into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    fn encoded(format: ImageFormat) -> Vec<u8> {
        let img = RgbImage::from_fn(8, 6, |x, y| Rgb([x as u8 * 30, y as u8 * 40, 200]));
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut out), format)
            .unwrap();
        out
    }

    #[test]
    fn png_jpeg_and_webp_pass_unchanged_with_their_mime_type() {
        for (format, mime) in [
            (ImageFormat::Png, "image/png"),
            (ImageFormat::Jpeg, "image/jpeg"),
            (ImageFormat::WebP, "image/webp"),
        ] {
            let bytes = encoded(format);
            let image = prepare(&bytes).unwrap();
            assert_eq!(image.mime, mime);
            let back = base64::engine::general_purpose::STANDARD
                .decode(image.base64.as_bytes())
                .unwrap();
            assert_eq!(back, bytes);
        }
    }

    #[test]
    fn a_gif_becomes_its_first_frame_as_png() {
        let image = prepare(&encoded(ImageFormat::Gif)).unwrap();
        assert_eq!(image.mime, "image/png");
        let png = base64::engine::general_purpose::STANDARD
            .decode(image.base64.as_bytes())
            .unwrap();
        let frame = image::load_from_memory_with_format(&png, ImageFormat::Png).unwrap();
        assert_eq!((frame.width(), frame.height()), (8, 6));
    }

    #[test]
    fn broken_and_foreign_bytes_are_refused() {
        assert!(matches!(
            prepare(b"\x89PNG binary"),
            Err(ImageError::Unsupported | ImageError::Undecodable(_))
        ));
        let mut truncated = encoded(ImageFormat::Png);
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(
            prepare(&truncated),
            Err(ImageError::Undecodable(_))
        ));
        assert!(matches!(prepare(b"hello"), Err(ImageError::Unsupported)));
    }

    #[test]
    fn attachments_are_recognised_by_type_then_extension() {
        assert!(looks_like_image(Some("image/png"), "x.bin"));
        assert!(looks_like_image(Some("image/jpeg; charset=binary"), "x"));
        assert!(!looks_like_image(Some("image/svg+xml"), "x.svg"));
        assert!(!looks_like_image(Some("text/plain"), "x.png"));
        assert!(looks_like_image(None, "Photo.JPG"));
        assert!(!looks_like_image(None, "notes.txt"));
    }
}
