//! Helpers shared by the tests (each test file uses a subset).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use qwen_runtime::__private::mlx_rs::{ops, Array};

/// A file under `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel)
}

/// ‖ours − reference‖₂ / ‖reference‖₂ over the whole tensor (shapes must match).
pub fn rel_err(ours: &Array, reference: &Array) -> f32 {
    assert_eq!(
        ours.shape(),
        reference.shape(),
        "shape of ours vs reference"
    );
    let diff = ops::subtract(ours, reference).unwrap();
    let norm = |a: &Array| {
        let sq = ops::square(a).unwrap();
        ops::sqrt(ops::sum(sq, None).unwrap()).unwrap()
    };
    let (num, den) = (norm(&diff), norm(reference));
    num.item_exact::<f32>() / den.item_exact::<f32>()
}

/// An 8-bit RGB PNG as written by `qwen-run`.
#[derive(Debug, PartialEq, Eq)]
pub struct Png {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
    /// The text chunks (tEXt and iTXt), keyword and text.
    pub text: Vec<(String, String)>,
}

/// Reads the PNG at `path` (asserting 8-bit RGB).
pub fn read_png(path: &Path) -> Png {
    let file = std::fs::File::open(path).unwrap();
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    let meta = reader.info();
    let mut text: Vec<(String, String)> = meta
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    for t in &meta.utf8_text {
        text.push((t.keyword.clone(), t.get_text().unwrap()));
    }
    Png {
        width: info.width,
        height: info.height,
        pixels: buf,
        text,
    }
}
