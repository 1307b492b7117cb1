//! Decoded images to 8-bit RGB, and PNG files with the generation parameters in them.
//!
//! Pixels follow diffusers' `VaeImageProcessor.postprocess` exactly, in f32 and in its order:
//! `u = clamp(x · 0.5 + 0.5, 0, 1)`, then `round(u · 255)` with ties to even (numpy's
//! `round`), cast to `u8`. NaN becomes 0.
//!
//! [`RgbImage::write_png`] never leaves a half-written file at the destination: it encodes in
//! memory, writes a temporary file in the same folder, syncs it and renames it over the
//! destination, so a failure keeps whatever file was there before. The temporary file is
//! named `.{name}.{pid}.{n}.tmp` (`name` the destination's file name, `pid` the writer's
//! process id, `n` a counter); a writer killed before the rename leaves it behind, and
//! [`temp_files`] finds such files so that a later run can remove them.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use mlx_rs::Array;

use crate::error::ImageError;

/// The most pixels [`RgbImage::read_png`] reads (256 Mi: 16384² and then some; an edit
/// resizes its inputs to about 1 MP anyway).
pub const MAX_READ_PIXELS: u64 = 1 << 28;

/// `clamp(x · 0.5 + 0.5, 0, 1)`: a decoder output in [−1, 1] to [0, 1].
pub fn unit_from_decoded(x: f32) -> f32 {
    (x * 0.5 + 0.5).clamp(0.0, 1.0)
}

/// `round(u · 255)` (ties to even) as a byte; `u` in [0, 1].
pub fn byte_from_unit(u: f32) -> u8 {
    (u * 255.0).round_ties_even() as u8
}

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (`[H, W, 3]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `height · width · 3` bytes.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// From a planar decoder output `[3, H, W]` (row-major, values in [−1, 1]).
    pub fn from_planar(planar: &[f32], width: usize, height: usize) -> Result<Self, ImageError> {
        let plane = width * height;
        Self::check_len(
            planar.len(),
            width,
            height,
            format!("[3, {height}, {width}]"),
        )?;
        let mut pixels = Vec::with_capacity(3 * plane);
        for i in 0..plane {
            for c in 0..3 {
                pixels.push(byte_from_unit(unit_from_decoded(planar[c * plane + i])));
            }
        }
        Self::with_pixels(width, height, pixels)
    }

    /// From an interleaved decoder output `[H, W, 3]` (row-major, values in [−1, 1]).
    pub fn from_interleaved(hwc: &[f32], width: usize, height: usize) -> Result<Self, ImageError> {
        Self::check_len(hwc.len(), width, height, format!("[{height}, {width}, 3]"))?;
        let pixels = hwc
            .iter()
            .map(|&x| byte_from_unit(unit_from_decoded(x)))
            .collect();
        Self::with_pixels(width, height, pixels)
    }

    fn check_len(
        len: usize,
        width: usize,
        height: usize,
        expected: String,
    ) -> Result<(), ImageError> {
        if len != 3 * width * height || width * height == 0 {
            return Err(ImageError::Shape {
                expected,
                got: vec![len as i64],
            });
        }
        Ok(())
    }

    fn with_pixels(width: usize, height: usize, pixels: Vec<u8>) -> Result<Self, ImageError> {
        let dim = |d: usize| {
            u32::try_from(d).map_err(|_| ImageError::Shape {
                expected: "dimensions below 2^32".into(),
                got: vec![height as i64, width as i64],
            })
        };
        Ok(Self {
            width: dim(width)?,
            height: dim(height)?,
            pixels,
        })
    }

    /// From a decoder output array of shape `[3, H, W]`, `[1, 3, H, W]` or `[1, 3, 1, H, W]`
    /// (any float dtype). Evaluates the array.
    ///
    /// Reads it channels last: the pipeline's decoder output is a transposed view of an NHWC
    /// array, so that view is already contiguous and reading it copies nothing on the device.
    /// (Copying the planar view contiguous failed to launch its CUDA kernel for a 2048² image
    /// with MLX 0.32.4 on an H200: "invalid argument".)
    pub fn from_array(decoded: &Array) -> Result<Self, ImageError> {
        let shape = decoded.shape();
        let (h, w, channels_last): (_, _, &[i32]) = match shape {
            [3, h, w] => (*h, *w, &[1, 2, 0]),
            [1, 3, h, w] => (*h, *w, &[0, 2, 3, 1]),
            [1, 3, 1, h, w] => (*h, *w, &[0, 2, 3, 4, 1]),
            _ => {
                return Err(ImageError::Shape {
                    expected: "[3, H, W], [1, 3, H, W] or [1, 3, 1, H, W]".into(),
                    got: shape.iter().map(|&d| i64::from(d)).collect(),
                })
            }
        };
        let mlx = |what: &'static str, e: &dyn std::fmt::Display| ImageError::Mlx {
            what,
            message: e.to_string(),
        };
        let values = mlx_rs::ops::transpose_axes(decoded, channels_last)
            .and_then(|a| a.as_type::<f32>())
            .and_then(|a| a.contiguous())
            .map_err(|e| mlx("convert the decoded image to f32", &e))?;
        let interleaved = values
            .try_as_slice::<f32>()
            .map_err(|e| mlx("read the decoded image", &e))?;
        Self::from_interleaved(interleaved, w as usize, h as usize)
    }

    /// Writes a PNG (8-bit RGB) with one text chunk per `(keyword, value)`: `tEXt` when both
    /// are Latin-1, else `iTXt` (UTF-8; prompts in any script). Keywords must be 1–79
    /// Latin-1 characters without NUL. Replaces an existing file atomically (see the module
    /// docs); a failed write leaves it untouched and no temporary file behind.
    pub fn write_png(
        &self,
        path: impl AsRef<Path>,
        text: &[(&str, &str)],
    ) -> Result<(), ImageError> {
        self.write_png_unless(path, text, &|| false).map(|_| ())
    }

    /// A PNG file's pixels as RGB: palette, grey and 16-bit images converted, an alpha channel
    /// dropped (as Pillow's `convert("RGB")`); anything but a PNG is an error naming the file.
    pub fn read_png(path: impl AsRef<Path>) -> Result<Self, ImageError> {
        let path = path.as_ref();
        let err = |message: String| ImageError::Read {
            path: path.to_path_buf(),
            message,
        };
        let file = crate::files::open_regular(path).map_err(|e| err(e.to_string()))?;
        let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder
            .read_info()
            .map_err(|e| err(format!("not a readable PNG file ({e})")))?;
        // the header's size, before a buffer of it is made (a few bytes can claim 200000²)
        let (w, h) = (reader.info().width, reader.info().height);
        if u64::from(w) * u64::from(h) > MAX_READ_PIXELS {
            return Err(err(format!(
                "{w}x{h} is larger than the {} megapixels an input image may have",
                MAX_READ_PIXELS >> 20
            )));
        }
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| err("too large".into()))?;
        let mut buf = Vec::new();
        buf.try_reserve_exact(size)
            .map_err(|_| err(format!("no memory for its {size} bytes")))?;
        buf.resize(size, 0);
        let info = reader
            .next_frame(&mut buf)
            .map_err(|e| err(e.to_string()))?;
        let data = &buf[..info.buffer_size()];
        let channels = match info.color_type {
            png::ColorType::Grayscale => 1,
            png::ColorType::GrayscaleAlpha => 2,
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            png::ColorType::Indexed => return Err(err("an unexpanded palette".into())),
        };
        let pixels = data
            .chunks_exact(channels)
            .flat_map(|p| match channels {
                1 | 2 => [p[0], p[0], p[0]],
                _ => [p[0], p[1], p[2]],
            })
            .collect();
        Ok(Self {
            width: info.width,
            height: info.height,
            pixels,
        })
    }

    /// [`write_png`](Self::write_png), but `cancelled` is asked once more after the temporary
    /// file is written and synced: when it answers true, that file is removed, the destination
    /// is left as it was and the result is `Ok(false)`. `Ok(true)`: the PNG was written.
    pub fn write_png_unless(
        &self,
        path: impl AsRef<Path>,
        text: &[(&str, &str)],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<bool, ImageError> {
        let path = path.as_ref();
        let bytes = self.encode_png(path, text)?;
        write_atomically(path, &bytes, cancelled)
    }

    fn encode_png(&self, path: &Path, text: &[(&str, &str)]) -> Result<Vec<u8>, ImageError> {
        let expected = self.width as usize * self.height as usize * 3;
        if self.pixels.len() != expected || expected == 0 {
            return Err(ImageError::Shape {
                expected: format!("[{}, {}, 3]", self.height, self.width),
                got: vec![self.pixels.len() as i64],
            });
        }
        let png_error = |e: png::EncodingError| ImageError::Png {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width, self.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for &(key, value) in text {
            let bad = |reason: &str| ImageError::Metadata {
                path: path.to_path_buf(),
                key: key.to_owned(),
                reason: reason.to_owned(),
            };
            if key.is_empty() || key.chars().count() > 79 {
                return Err(bad("a keyword has 1 to 79 characters"));
            }
            if !is_latin1(key) || key.contains('\0') {
                return Err(bad("a keyword is latin-1 without nul"));
            }
            if is_latin1(value) && !value.contains('\0') {
                encoder.add_text_chunk(key.to_owned(), value.to_owned())
            } else {
                encoder.add_itxt_chunk(key.to_owned(), value.to_owned())
            }
            .map_err(png_error)?;
        }
        let mut writer = encoder.write_header().map_err(png_error)?;
        writer.write_image_data(&self.pixels).map_err(png_error)?;
        writer.finish().map_err(png_error)?;
        Ok(out)
    }
}

fn is_latin1(s: &str) -> bool {
    s.chars().all(|c| (c as u32) < 256)
}

/// A temporary file of the writer found next to a destination (see [`temp_files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TempFile {
    /// The file, in the destination's folder.
    pub path: PathBuf,
    /// The process id in its name: the process that created it.
    pub pid: u32,
    /// Its modification time (the epoch when unknown).
    pub modified: SystemTime,
}

/// The destination's file name and folder (`.` for a bare name).
fn name_and_dir(path: &Path) -> std::io::Result<(String, PathBuf)> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?
        .to_string_lossy()
        .into_owned();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((name, dir))
}

/// The pid of a temporary file name `.{name}.{pid}.{n}.tmp` of the destination `name`
/// (`pid` and `n` decimal digits, nothing else); `None` for any other name.
pub fn temp_file_pid(name: &str, file_name: &str) -> Option<u32> {
    let rest = file_name
        .strip_prefix('.')?
        .strip_prefix(name)?
        .strip_prefix('.')?
        .strip_suffix(".tmp")?;
    let (pid, n) = rest.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

/// The regular files next to `path` named like the writer's temporary files for it
/// (`.{name}.{pid}.{n}.tmp`), whoever made them; symlinks and folders are not listed. The
/// caller decides which are stale (e.g. older than itself, of a process that is gone).
pub fn temp_files(path: &Path) -> std::io::Result<Vec<TempFile>> {
    let (name, dir) = name_and_dir(path)?;
    let mut found = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        let Some(pid) = temp_file_pid(&name, &entry.file_name().to_string_lossy()) else {
            continue;
        };
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            continue; // gone meanwhile
        };
        if meta.is_file() {
            found.push(TempFile {
                path: entry.path(),
                pid,
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// Creates a fresh temporary file next to `path`, named as [`temp_files`] says.
fn create_temp(path: &Path) -> Result<(PathBuf, File), ImageError> {
    let io = |source: std::io::Error| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (name, dir) = name_and_dir(path).map_err(io)?;
    let mut attempt = 0u32;
    loop {
        let tmp = dir.join(format!(".{name}.{}.{attempt}.tmp", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                attempt += 1
            }
            Err(e) => return Err(io(e)),
        }
    }
}

/// Checks that a PNG could be written to `path` (its folder exists and takes a new file) by
/// creating and removing one of the writer's temporary files; the destination is not touched.
pub fn check_writable(path: &Path) -> Result<(), ImageError> {
    let (tmp, file) = create_temp(path)?;
    drop(file);
    fs::remove_file(&tmp).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to a fresh temporary file next to `path`, syncs it, renames it to `path`
/// unless `cancelled()` (then removes it and answers false).
fn write_atomically(
    path: &Path,
    bytes: &[u8],
    cancelled: &dyn Fn() -> bool,
) -> Result<bool, ImageError> {
    let (tmp, mut file) = create_temp(path)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop::<File>(file);
            if cancelled() {
                return Ok(false);
            }
            fs::rename(&tmp, path).map(|()| true)
        });
    match written {
        Ok(true) => Ok(true),
        Ok(false) => {
            let _ = fs::remove_file(&tmp);
            Ok(false)
        }
        Err(source) => {
            let _ = fs::remove_file(&tmp);
            Err(ImageError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    }
}
