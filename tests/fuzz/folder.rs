//! The model folder a target edits: a pristine copy of `tests/fixtures/tiny-qwen-image` in a
//! tempdir, and a work folder whose files are hard links to it. A case replaces the files it
//! edits (the link is removed first, so the pristine copy is never written) and puts the
//! links back afterwards.
//!
//! The tokenizer is the fixture's, cut to its first [`MERGES`] merges (the 256 byte tokens,
//! the tokens those merges make, every added token, ids unchanged) unless
//! `FUZZ_FULL_TOKENIZER=1`: reading the full 151,643-token vocabulary and 151,387 merges takes
//! 0.3 s, which would make every tokenizer and folder case that slow.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::mutate::{self, Ctx, Edit, State};

/// Merges kept in the cut tokenizer.
pub const MERGES: usize = 500;

pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen-image")
}

/// The token past the text encoder's embedding table that [`Folder::new`] adds when asked
/// (see the configs target).
pub const STOP_TOKEN: &str = "<|fuzz_stop|>";

pub struct Folder {
    _tmp: tempfile::TempDir,
    pristine: PathBuf,
    /// The folder the targets read.
    pub dir: PathBuf,
    /// Every file, relative to the folder.
    pub files: Vec<String>,
    bytes: HashMap<String, Vec<u8>>,
}

impl Folder {
    /// A copy of the fixture; `stop_token`: the tokenizer gets [`STOP_TOKEN`] with an id past
    /// the embedding table; `tokenizer_json`: the tokenizer folder also holds the
    /// `tokenizer.json` that `Tokenizer::to_json` makes of it (that layout wins).
    pub fn new(stop_token: bool, tokenizer_json: bool) -> Folder {
        let tmp = tempfile::tempdir().unwrap();
        let pristine = tmp.path().join("pristine");
        let dir = tmp.path().join("model");
        let src = fixture();
        let mut files = Vec::new();
        collect(&src, "", &mut files);
        files.sort();
        let full = std::env::var("FUZZ_FULL_TOKENIZER").is_ok_and(|v| v == "1");
        let mut bytes = HashMap::new();
        for rel in &files {
            bytes.insert(rel.clone(), fs::read(src.join(rel)).unwrap());
        }
        if !full {
            cut_tokenizer(&mut bytes);
        }
        if stop_token {
            let added = bytes.get_mut("tokenizer/added_tokens.json").unwrap();
            let mut map: BTreeMap<String, u64> = serde_json::from_slice(added).unwrap();
            map.insert(STOP_TOKEN.into(), 152_064);
            *added = serde_json::to_vec_pretty(&map).unwrap();
        }
        if tokenizer_json {
            let tmp_tok = tmp.path().join("tokenizer-files");
            fs::create_dir_all(&tmp_tok).unwrap();
            for rel in files.iter().filter(|f| f.starts_with("tokenizer/")) {
                fs::write(tmp_tok.join(&rel["tokenizer/".len()..]), &bytes[rel]).unwrap();
            }
            let json = qwen_runtime::Tokenizer::from_dir(&tmp_tok)
                .unwrap()
                .to_json()
                .unwrap();
            let rel = "tokenizer/tokenizer.json".to_owned();
            bytes.insert(rel.clone(), json.into_bytes());
            files.push(rel);
            files.sort();
        }
        for rel in &files {
            let p = pristine.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, &bytes[rel]).unwrap();
            let w = dir.join(rel);
            fs::create_dir_all(w.parent().unwrap()).unwrap();
            fs::hard_link(&p, &w).unwrap();
        }
        Folder {
            _tmp: tmp,
            pristine,
            dir,
            files,
            bytes,
        }
    }

    pub fn pristine_bytes(&self, rel: &str) -> &[u8] {
        &self.bytes[rel]
    }

    /// Writes the edits of one case (`files`: what `CopyOf` and `LinkTo` pick from); returns
    /// the files it replaced, for [`Folder::restore`].
    pub fn apply(&self, edits: &[Edit], files: &[String]) -> Vec<String> {
        let pristine = |rel: &str| self.bytes[rel].clone();
        let ctx = Ctx {
            dir: &self.dir,
            files,
            pristine: &pristine,
        };
        let mut states: BTreeMap<String, State> = BTreeMap::new();
        for edit in edits {
            let state = states
                .remove(&edit.file)
                .unwrap_or_else(|| State::Bytes(self.bytes[&edit.file].clone()));
            states.insert(edit.file.clone(), mutate::apply(edit, state, &ctx));
        }
        for (rel, state) in &states {
            let path = self.dir.join(rel);
            remove(&path);
            match state {
                State::Bytes(b) => fs::write(&path, b).unwrap(),
                State::Removed => {}
                State::Dir => fs::create_dir(&path).unwrap(),
                State::Link(to) => std::os::unix::fs::symlink(to, &path).unwrap(),
            }
        }
        states.into_keys().collect()
    }

    /// Replaces one file by `bytes` (for [`Folder::restore`] as [`Folder::apply`]).
    pub fn replace(&self, rel: &str, bytes: &[u8]) -> Vec<String> {
        let path = self.dir.join(rel);
        remove(&path);
        fs::write(&path, bytes).unwrap();
        vec![rel.to_owned()]
    }

    /// Puts back the links [`Folder::apply`] replaced.
    pub fn restore(&self, changed: &[String]) {
        for rel in changed {
            let path = self.dir.join(rel);
            remove(&path);
            fs::hard_link(self.pristine.join(rel), &path).unwrap();
        }
    }
}

fn remove(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).unwrap(),
        Ok(_) => fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

fn collect(root: &Path, rel: &str, out: &mut Vec<String>) {
    for entry in fs::read_dir(root.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if entry.file_type().unwrap().is_dir() {
            collect(root, &child, out);
        } else {
            out.push(child);
        }
    }
}

/// The fixture's tokenizer cut to its first [`MERGES`] merges: the vocabulary keeps the 256
/// byte tokens and every token those merges name or make, with their ids.
fn cut_tokenizer(bytes: &mut HashMap<String, Vec<u8>>) {
    let vocab: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes["tokenizer/vocab.json"]).unwrap();
    let merges = String::from_utf8(bytes["tokenizer/merges.txt"].clone()).unwrap();
    let mut lines: Vec<&str> = merges.lines().take(MERGES + 1).collect();
    assert!(lines[0].starts_with("#version"));
    let mut keep: Vec<String> = vocab
        .iter()
        .filter(|(_, id)| id.as_u64().unwrap() < 256)
        .map(|(t, _)| t.clone())
        .collect();
    for line in &lines[1..] {
        let (a, b) = line.split_once(' ').unwrap();
        keep.extend([a.to_owned(), b.to_owned(), format!("{a}{b}")]);
    }
    let cut: serde_json::Map<String, Value> = keep
        .into_iter()
        .map(|t| {
            let id = vocab[&t].clone();
            (t, id)
        })
        .collect();
    lines.push("");
    bytes.insert(
        "tokenizer/vocab.json".into(),
        serde_json::to_vec(&cut).unwrap(),
    );
    bytes.insert("tokenizer/merges.txt".into(), lines.join("\n").into_bytes());
}
