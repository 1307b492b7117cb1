//! Pixels against `tests/fixtures/references/pipeline.safetensors` (diffusers'
//! `VaeImageProcessor.postprocess`) and the PNGs the pipeline wrote; PNG writing.

mod common;

use std::io::Cursor;

use common::{fixture_path, Fixture};
use qwen_runtime::__private::mlx_rs::{ops, Array};
use qwen_runtime::image::{check_writable, temp_file_pid, temp_files, unit_from_decoded};
use qwen_runtime::{ImageError, RgbImage};

/// (pixels [H, W, 3], text chunks) of a PNG file.
fn read_png(bytes: &[u8]) -> (u32, u32, Vec<u8>, Vec<(String, String)>) {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_ignore_text_chunk(false);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    assert_eq!(frame.color_type, png::ColorType::Rgb);
    assert_eq!(frame.bit_depth, png::BitDepth::Eight);
    buf.truncate(frame.buffer_size());
    let info = reader.info();
    let mut text: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|c| (c.keyword.clone(), c.text.clone()))
        .collect();
    text.extend(
        info.utf8_text
            .iter()
            .map(|c| (c.keyword.clone(), c.get_text().unwrap())),
    );
    (frame.width, frame.height, buf, text)
}

#[test]
fn pixels_match_diffusers_postprocess_exactly() {
    let fx = Fixture::reference("pipeline.safetensors");
    for (res, w, h) in [("64x64", 64, 64), ("96x64", 96, 64)] {
        let (shape, decoded) = fx.f32(&format!("{res}.output.decoded"));
        assert_eq!(shape, [1, 3, h, w]);
        let (_, unit) = fx.f32(&format!("{res}.output.image"));
        let (u8_shape, want) = fx.u8(&format!("{res}.output.image_uint8"));
        assert_eq!(u8_shape, [h, w, 3]);

        // [0, 1] values bit for bit.
        let ours: Vec<f32> = decoded.iter().map(|&x| unit_from_decoded(x)).collect();
        let mismatched = ours
            .iter()
            .zip(&unit)
            .filter(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(mismatched.count(), 0, "{res}: [0, 1] image");

        // Bytes exactly, from the slice and from an MLX array.
        let image = RgbImage::from_planar(&decoded, w, h).unwrap();
        assert_eq!((image.width, image.height), (w as u32, h as u32));
        let wrong = image
            .pixels
            .iter()
            .zip(&want)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(wrong, 0, "{res}: {wrong} of {} bytes differ", want.len());
        let dims: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
        let from_array = RgbImage::from_array(&Array::from_slice(&decoded, &dims)).unwrap();
        assert_eq!(from_array, image, "{res}: array path");
        // the view the pipeline's decode returns (an NHWC array transposed to planar), and
        // the other accepted shapes
        let planar = Array::from_slice(&decoded, &[1, 3, h as i32, w as i32]);
        let nhwc = ops::transpose_axes(&planar, &[0, 2, 3, 1])
            .unwrap()
            .contiguous()
            .unwrap();
        let view = ops::transpose_axes(&nhwc, &[0, 3, 1, 2]).unwrap();
        assert_eq!(
            RgbImage::from_array(&view).unwrap(),
            image,
            "{res}: NHWC view"
        );
        for dims in [
            vec![3, h as i32, w as i32],
            vec![1, 3, 1, h as i32, w as i32],
        ] {
            let a = Array::from_slice(&decoded, &dims);
            assert_eq!(RgbImage::from_array(&a).unwrap(), image, "{res}: {dims:?}");
        }

        // The PNG diffusers wrote holds the same pixels.
        let png = std::fs::read(fixture_path(&format!("references/pipeline_{res}.png"))).unwrap();
        let (pw, ph, pixels, _) = read_png(&png);
        assert_eq!((pw, ph), (w as u32, h as u32));
        assert_eq!(pixels, image.pixels, "{res}: reference png");
    }
}

#[test]
fn rounding_is_half_to_even_and_clamped() {
    // Ties: x = 0 gives 0.5 · 255 = 127.5 → 128 (even); x = −0.21176469 (bits 0xbe58d8d8)
    // gives exactly 100.5 in f32 → 100 (even; away from zero would give 101). Out of range
    // clamps; NaN → 0. Planes R, G, B of a 2×2 image.
    let r = [-2.0f32, -1.0, 1.0, 3.0];
    let g = [0.0, f32::NAN, -1.0, 1.0];
    let b = [f32::from_bits(0xbe58_d8d8), 0.0, 0.0, 0.0];
    let planar = [r, g, b].concat();
    let image = RgbImage::from_planar(&planar, 2, 2).unwrap();
    assert_eq!(
        image.pixels,
        [0, 128, 100, 0, 0, 128, 255, 0, 128, 255, 255, 128]
    );
    assert!(matches!(
        RgbImage::from_planar(&planar, 3, 2),
        Err(ImageError::Shape { .. })
    ));
    let bad = Array::from_slice(&planar, &[2, 3, 2]);
    let err = RgbImage::from_array(&bad).unwrap_err();
    assert!(err.to_string().contains("[2, 3, 2]"), "{err}");
}

#[test]
fn png_round_trips_with_metadata_and_replaces_atomically() {
    let fx = Fixture::reference("pipeline.safetensors");
    let (_, decoded) = fx.f32("96x64.output.decoded");
    let image = RgbImage::from_planar(&decoded, 96, 64).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");

    std::fs::write(&path, b"old").unwrap();
    let text = [
        ("prompt", "a red fox in the snow, watercolor"),
        ("negative_prompt", "一只猫"),
        ("steps", "3"),
    ];
    image.write_png(&path, &text).unwrap();
    let (w, h, pixels, mut got) = read_png(&std::fs::read(&path).unwrap());
    assert_eq!((w, h), (96, 64));
    assert_eq!(pixels, image.pixels);
    got.sort();
    let mut want: Vec<(String, String)> = text
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    assert_eq!(got, want);

    // A bad keyword fails before touching the disk: the old file stays.
    let err = image.write_png(&path, &[("", "x")]).unwrap_err();
    assert!(matches!(err, ImageError::Metadata { .. }), "{err}");
    assert!(err.to_string().contains("out.png"), "{err}");
    let (_, _, still, _) = read_png(&std::fs::read(&path).unwrap());
    assert_eq!(still, image.pixels);

    // A destination that cannot be replaced (a non-empty folder): an error naming it, and
    // no temporary file left behind.
    let blocked = dir.path().join("blocked.png");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("keep"), b"").unwrap();
    let err = image.write_png(&blocked, &[]).unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }), "{err}");
    assert!(err.to_string().starts_with("cannot write "), "{err}");
    assert!(err.to_string().contains("blocked.png"), "{err}");

    // A missing folder.
    let err = image
        .write_png(dir.path().join("nope/out.png"), &[])
        .unwrap_err();
    assert!(err.to_string().contains("nope/out.png"), "{err}");

    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["blocked.png", "out.png"]);
}

#[test]
fn a_cancelled_write_keeps_the_destination_and_leaves_no_temporary_file() {
    let image = RgbImage::from_planar(&[0.0; 12], 2, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");
    std::fs::write(&path, b"old").unwrap();

    // Asked after the temporary file is complete: cancelled, nothing replaced or left.
    let asked = std::cell::Cell::new(0);
    let written = image
        .write_png_unless(&path, &[], &|| {
            asked.set(asked.get() + 1);
            let temps = temp_files(&path).unwrap();
            assert_eq!(temps.len(), 1, "the temporary file exists when asked");
            assert_eq!(temps[0].pid, std::process::id());
            true
        })
        .unwrap();
    assert!(!written);
    assert_eq!(asked.get(), 1);
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // Not cancelled: written.
    assert!(image.write_png_unless(&path, &[], &|| false).unwrap());
    let (w, h, _, _) = read_png(&std::fs::read(&path).unwrap());
    assert_eq!((w, h), (2, 2));

    // The writability probe is one of the writer's temporary files, removed at once.
    check_writable(&dir.path().join("new.png")).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let err = check_writable(&dir.path().join("nope/new.png")).unwrap_err();
    assert!(err.to_string().starts_with("cannot write "), "{err}");
}

#[test]
fn temporary_files_of_a_destination_are_found_by_their_exact_name() {
    assert_eq!(temp_file_pid("out.png", ".out.png.123.0.tmp"), Some(123));
    assert_eq!(temp_file_pid("out.png", ".out.png.7.42.tmp"), Some(7));
    for other in [
        "out.png",
        ".out.png.tmp",
        ".out.png.123.tmp",
        ".out.png.123.0.tmp~",
        ".out.png.x.0.tmp",
        ".out.png.1.2.3.tmp",
        ".out.png.-1.0.tmp",
        ".out.png..0.tmp",
        "out.png.123.0.tmp",
        ".other.png.123.0.tmp",
        ".out.png.5.0.tmp.png",
        ".out.png.99999999999.0.tmp",
    ] {
        assert_eq!(temp_file_pid("out.png", other), None, "{other}");
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");
    let touch = |name: &str| std::fs::write(dir.path().join(name), b"").unwrap();
    touch(".out.png.11.0.tmp");
    touch(".out.png.12.3.tmp");
    touch(".out.png.x.0.tmp");
    touch(".b.png.11.0.tmp");
    touch("out.png");
    std::fs::create_dir(dir.path().join(".out.png.13.0.tmp")).unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("out.png"),
        dir.path().join(".out.png.14.0.tmp"),
    )
    .unwrap();
    let found: Vec<(String, u32)> = temp_files(&path)
        .unwrap()
        .into_iter()
        .map(|t| (t.path.file_name().unwrap().to_string_lossy().into(), t.pid))
        .collect();
    assert_eq!(
        found,
        [
            (".out.png.11.0.tmp".to_string(), 11),
            (".out.png.12.3.tmp".to_string(), 12)
        ],
        "regular files of that exact pattern only"
    );
}

/// CRC-32 (IEEE) of a PNG chunk's type and data.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// `read_png` opens regular files only (a FIFO would block it) and refuses a header that
/// claims more pixels than an input may have, before it makes a buffer of that size.
#[test]
fn reading_a_png_refuses_special_files_and_oversized_headers() {
    let dir = tempfile::tempdir().unwrap();
    // a real PNG reads back
    let small = dir.path().join("small.png");
    let image = RgbImage::from_planar(&[0.0; 12], 2, 2).unwrap();
    image.write_png(&small, &[]).unwrap();
    assert_eq!(RgbImage::read_png(&small).unwrap(), image);

    // 200000 × 200000 RGB in a 60-byte file
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let body: Vec<u8> = kind.iter().chain(data).copied().collect();
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = vec![];
    ihdr.extend(200_000u32.to_be_bytes());
    ihdr.extend(200_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    chunk(b"IEND", &[]);
    let huge = dir.path().join("huge.png");
    std::fs::write(&huge, &png).unwrap();
    let e = RgbImage::read_png(&huge).unwrap_err().to_string();
    assert!(e.contains("200000x200000 is larger than"), "{e}");

    #[cfg(unix)]
    {
        let fifo = dir.path().join("fifo.png");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let e = RgbImage::read_png(&fifo).unwrap_err().to_string();
            assert!(e.contains("named pipe"), "{e}");
        }
    }
}
