//! Where `qwen-run` writes its PNG: the checks made on `--output` before any work, and the
//! removal of temporary files that a killed earlier run left next to it.
//!
//! The PNG itself is written by [`RgbImage::write_png`](qwen_runtime::RgbImage::write_png),
//! which renames a temporary file over the destination. So the destination must be a plain
//! path of our own: it may not be an input of the run (a model file, the latents file, also
//! through a hard link or a symlink elsewhere), not a device node, FIFO, socket or folder, and
//! not a symlink (refused, not followed: the rename would replace the link itself, not the
//! file it points to; give the path it points to instead).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use qwen_runtime::image::{check_writable, temp_files};

/// Why `--output` is refused.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("output {} is a folder, not a file", .0.display())]
    Folder(PathBuf),

    #[error(
        "output {} is a symbolic link (not followed: the PNG would replace the link, not what \
         it points to); give the path it points to",
        .0.display()
    )]
    Symlink(PathBuf),

    #[error("output {} is a {kind}, not a regular file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },

    #[error("output {}{}", path.display(), if path == input {
        " is an input of this run".to_string()
    } else {
        format!(" is the same file as {}, an input of this run", input.display())
    })]
    Input { path: PathBuf, input: PathBuf },

    #[error("cannot write {}: folder {} does not exist", path.display(), folder.display())]
    NoFolder { path: PathBuf, folder: PathBuf },

    #[error(transparent)]
    Image(#[from] qwen_runtime::ImageError),
}

/// Fails, before any work, when the PNG may not or could not be written to `path`: it is a
/// folder, a symlink, another non-regular file, the same file as any file under `inputs`
/// (folders are walked, symlinks followed), or its folder is missing or takes no new file.
/// An existing regular file is left alone until the image is ready.
pub fn check_output(path: &Path, inputs: &[&Path]) -> Result<(), OutputError> {
    if let Ok(link) = fs::symlink_metadata(path) {
        if link.file_type().is_symlink() {
            return Err(OutputError::Symlink(path.to_path_buf()));
        }
        let kind = link.file_type();
        if kind.is_dir() {
            return Err(OutputError::Folder(path.to_path_buf()));
        }
        if !kind.is_file() {
            let kind = match () {
                _ if kind.is_fifo() => "FIFO",
                _ if kind.is_char_device() => "character device",
                _ if kind.is_block_device() => "block device",
                _ if kind.is_socket() => "socket",
                _ => "special file",
            };
            return Err(OutputError::NotRegular {
                path: path.to_path_buf(),
                kind,
            });
        }
        let id = (link.dev(), link.ino());
        let mut seen = HashSet::new();
        for input in inputs {
            if let Some(input) = find_file(input, id, &mut seen, 0) {
                return Err(OutputError::Input {
                    path: path.to_path_buf(),
                    input,
                });
            }
        }
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !folder.is_dir() {
        return Err(OutputError::NoFolder {
            path: path.to_path_buf(),
            folder,
        });
    }
    check_writable(path)?;
    Ok(())
}

/// The path under `root` (itself when a file) of the file whose `(dev, ino)` is `id`,
/// following symlinks; `seen` holds the folders already walked (links may loop).
fn find_file(
    root: &Path,
    id: (u64, u64),
    seen: &mut HashSet<(u64, u64)>,
    depth: usize,
) -> Option<PathBuf> {
    let meta = fs::metadata(root).ok()?;
    if (meta.dev(), meta.ino()) == id {
        return Some(root.to_path_buf());
    }
    if !meta.is_dir() || depth > 32 || !seen.insert((meta.dev(), meta.ino())) {
        return None;
    }
    let entries = fs::read_dir(root).ok()?;
    entries
        .flatten()
        .find_map(|entry| find_file(&entry.path(), id, seen, depth + 1))
}

/// Removes the temporary files that earlier writers of `path` left behind: those named
/// `.{name}.{pid}.{n}.tmp` next to it, last modified before `started` (this process's start),
/// whose process is gone (or is this one: an earlier process had the same id). A file of a
/// process still running (another writer of the same output) is left alone. Returns what
/// was removed; a folder that cannot be listed removes nothing.
pub fn remove_stale_temp_files(path: &Path, started: SystemTime) -> Vec<PathBuf> {
    let Ok(found) = temp_files(path) else {
        return Vec::new();
    };
    found
        .into_iter()
        .filter(|t| t.modified < started && (t.pid == std::process::id() || !alive(t.pid)))
        .filter(|t| fs::remove_file(&t.path).is_ok())
        .map(|t| t.path)
        .collect()
}

/// Whether process `pid` exists (`kill(pid, 0)` does not fail with `ESRCH`).
pub fn alive(pid: u32) -> bool {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    const ESRCH: i32 = 3; // the same on Linux and macOS
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false; // 0 and -1 name process groups, not a process
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let rc = unsafe { kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(ESRCH)
}
