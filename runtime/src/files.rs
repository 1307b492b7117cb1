//! Only regular files are opened: a FIFO's `open` blocks until a writer comes, and a device
//! node is not a model file. `metadata` follows symlinks, so a link to a regular file (the
//! Hugging Face cache is made of them) passes.

use std::fs::FileType;
use std::io;
use std::path::Path;

/// What a file of this type is when it is not a regular file (`None` for a regular file).
pub fn not_regular(file_type: FileType) -> Option<&'static str> {
    if file_type.is_file() {
        None
    } else if file_type.is_dir() {
        Some("a folder")
    } else {
        Some(special_kind(file_type))
    }
}

#[cfg(unix)]
fn special_kind(file_type: FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_fifo() {
        "a named pipe (fifo)"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: FileType) -> &'static str {
    "a special file"
}

/// `path` opened for reading when it is a regular file; otherwise an `InvalidInput` error
/// saying what it is.
pub fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    let meta = std::fs::metadata(path)?;
    if let Some(kind) = not_regular(meta.file_type()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is {kind}, not a regular file"),
        ));
    }
    std::fs::File::open(path)
}

/// The text of `path`, read only when it is a regular file (see [`open_regular`]).
pub fn read_regular(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    io::Read::read_to_string(&mut open_regular(path)?, &mut text)?;
    Ok(text)
}
