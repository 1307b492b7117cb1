//! What `--model` names: a model folder, or a Hugging Face repo id found in the local cache.
//!
//! [`resolve`] gives the folder to open:
//! - an existing folder is used as it is; that includes a snapshot folder of the Hugging Face
//!   cache (`…/hub/models--Qwen--Qwen-Image/snapshots/<rev>`), whose files are symlinks into
//!   `blobs/` (the loader follows symlinks);
//! - otherwise a repo id `owner/name` (such as `Qwen/Qwen-Image`) is looked up in the cache,
//!   `$HF_HOME/hub`, or `$HOME/.cache/huggingface/hub` when `HF_HOME` is unset, as
//!   `models--owner--name/snapshots/<rev>` where `<rev>` is what `refs/main` holds (without
//!   `refs/main`, the only snapshot there is). Nothing is downloaded; when the repo is not
//!   there, the error names every place looked;
//! - anything else is returned unchanged (opening it reports a missing folder).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Why `--model` names no model folder.
#[derive(Debug, thiserror::Error)]
pub enum ModelDirError {
    #[error(
        "model {arg} not found: no folder {}, and not in the Hugging Face cache: no {} \
         ({hub_from}); nothing is downloaded (`hf download {arg}` fetches it)",
        folder.display(),
        repo_dir.display()
    )]
    NotCached {
        arg: String,
        folder: PathBuf,
        repo_dir: PathBuf,
        hub_from: String,
    },

    #[error(
        "model {arg} not found: no folder {}, and no Hugging Face cache to look in \
         (HF_HOME and HOME are both unset)",
        folder.display()
    )]
    NoCache { arg: String, folder: PathBuf },

    #[error(
        "model {arg}: {} names revision {rev}, but there is no folder {} (also looked for a \
         folder {})",
        refs.display(),
        snapshot.display(),
        folder.display()
    )]
    MissingSnapshot {
        arg: String,
        refs: PathBuf,
        rev: String,
        snapshot: PathBuf,
        folder: PathBuf,
    },

    #[error(
        "model {arg}: {} holds {content:?}, not a revision (also looked for a folder {})",
        refs.display(),
        folder.display()
    )]
    BadRef {
        arg: String,
        refs: PathBuf,
        content: String,
        folder: PathBuf,
    },

    #[error(
        "model {arg}: no {} to pick a snapshot, and {} holds {}; give the snapshot folder \
         as --model (also looked for a folder {})",
        refs.display(),
        snapshots.display(),
        list(found),
        folder.display()
    )]
    Snapshots {
        arg: String,
        refs: PathBuf,
        snapshots: PathBuf,
        found: Vec<String>,
        folder: PathBuf,
    },

    #[error("model {arg}: reading {}: {source}", path.display())]
    Io {
        arg: String,
        path: PathBuf,
        source: io::Error,
    },
}

fn list(found: &[String]) -> String {
    match found {
        [] => "no snapshot".into(),
        _ => format!("{} snapshots: {}", found.len(), found.join(", ")),
    }
}

/// The folder `arg` names (see the module's documentation). Reads `HF_HOME` and `HOME`.
pub fn resolve(arg: impl AsRef<Path>) -> Result<PathBuf, ModelDirError> {
    let hub = Hub::from_env(std::env::var_os("HF_HOME"), std::env::var_os("HOME"));
    resolve_in(arg.as_ref(), hub.as_ref())
}

/// The root of a Hugging Face cache (`…/hub`) and where it came from, for errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    pub dir: PathBuf,
    pub from: String,
}

impl Hub {
    /// `$HF_HOME/hub`, or `$HOME/.cache/huggingface/hub` when `HF_HOME` is unset or empty.
    pub fn from_env(hf_home: Option<OsString>, home: Option<OsString>) -> Option<Hub> {
        let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(hf_home) = set(hf_home) {
            return Some(Hub {
                dir: hf_home.join("hub"),
                from: format!("HF_HOME={}", hf_home.display()),
            });
        }
        set(home).map(|home| Hub {
            dir: home.join(".cache/huggingface/hub"),
            from: format!("HF_HOME unset, HOME={}", home.display()),
        })
    }
}

/// [`resolve`] with the cache root given (`None`: there is none).
pub fn resolve_in(arg: &Path, hub: Option<&Hub>) -> Result<PathBuf, ModelDirError> {
    if arg.is_dir() {
        return Ok(arg.to_path_buf());
    }
    let Some((owner, name)) = arg.to_str().and_then(repo_id) else {
        return Ok(arg.to_path_buf());
    };
    let arg_s = format!("{owner}/{name}");
    // The folder it would have been, as the user can find it.
    let folder = std::env::current_dir()
        .map(|d| d.join(arg))
        .unwrap_or_else(|_| arg.to_path_buf());
    let Some(hub) = hub else {
        return Err(ModelDirError::NoCache { arg: arg_s, folder });
    };
    let repo_dir = hub.dir.join(format!("models--{owner}--{name}"));
    if !repo_dir.is_dir() {
        return Err(ModelDirError::NotCached {
            arg: arg_s,
            folder,
            repo_dir,
            hub_from: hub.from.clone(),
        });
    }
    let snapshots = repo_dir.join("snapshots");
    let refs = repo_dir.join("refs").join("main");
    let io_err = |path: &Path, source| ModelDirError::Io {
        arg: arg_s.clone(),
        path: path.to_path_buf(),
        source,
    };
    match fs::read_to_string(&refs) {
        Ok(content) => {
            let rev = content.trim();
            if !is_revision(rev) {
                return Err(ModelDirError::BadRef {
                    arg: arg_s,
                    refs,
                    content,
                    folder,
                });
            }
            let snapshot = snapshots.join(rev);
            if !snapshot.is_dir() {
                return Err(ModelDirError::MissingSnapshot {
                    arg: arg_s,
                    refs,
                    rev: rev.to_string(),
                    snapshot,
                    folder,
                });
            }
            Ok(snapshot)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut found = Vec::new();
            match fs::read_dir(&snapshots) {
                Ok(entries) => {
                    for entry in entries {
                        let entry = entry.map_err(|e| io_err(&snapshots, e))?;
                        if entry.path().is_dir() {
                            found.push(entry.file_name().to_string_lossy().into_owned());
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&snapshots, e)),
            }
            found.sort();
            if let [only] = found.as_slice() {
                return Ok(snapshots.join(only));
            }
            Err(ModelDirError::Snapshots {
                arg: arg_s,
                refs,
                snapshots,
                found,
                folder,
            })
        }
        Err(e) => Err(io_err(&refs, e)),
    }
}

/// `owner/name` split in two when `s` looks like a Hugging Face repo id: exactly one `/`,
/// both parts non-empty of ASCII letters, digits, `-`, `_` and `.`, neither starting with `.`
/// (so `./x`, `../x` and `/x` are paths).
pub fn repo_id(s: &str) -> Option<(&str, &str)> {
    let (owner, name) = s.split_once('/')?;
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    (part(owner) && part(name)).then_some((owner, name))
}

/// A revision as `refs/main` holds it: a single path component (a commit hash, in practice).
fn is_revision(rev: &str) -> bool {
    !rev.is_empty()
        && rev != "."
        && rev != ".."
        && !rev.contains(['/', '\\', '\0'])
        && !rev.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REV: &str = "0123456789abcdef0123456789abcdef01234567";

    fn hub(root: &Path) -> Hub {
        Hub {
            dir: root.join("hub"),
            from: format!("HF_HOME={}", root.display()),
        }
    }

    /// `hub/models--owner--name` with the given snapshot folders and `refs/main` content.
    fn cached(root: &Path, repo: &str, snapshots: &[&str], main: Option<&str>) -> PathBuf {
        let dir = root
            .join("hub")
            .join(format!("models--{}", repo.replace('/', "--")));
        fs::create_dir_all(dir.join("blobs")).unwrap();
        fs::create_dir_all(dir.join("snapshots")).unwrap();
        for s in snapshots {
            fs::create_dir_all(dir.join("snapshots").join(s)).unwrap();
        }
        if let Some(main) = main {
            fs::create_dir_all(dir.join("refs")).unwrap();
            fs::write(dir.join("refs/main"), main).unwrap();
        }
        dir
    }

    #[test]
    fn repo_ids_and_paths() {
        assert_eq!(repo_id("Qwen/Qwen-Image"), Some(("Qwen", "Qwen-Image")));
        assert_eq!(repo_id("a_b/c.d-2"), Some(("a_b", "c.d-2")));
        for path in [
            "/abs/path",
            "./Qwen/Qwen-Image",
            "../Qwen-Image",
            ".hidden/x",
            "a/.b",
            "a/b/c",
            "a/",
            "/b",
            "ab",
            "a b/c",
            "a/b\\c",
            "",
        ] {
            assert_eq!(repo_id(path), None, "{path}");
        }
    }

    #[test]
    fn an_existing_folder_is_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let got = resolve_in(tmp.path(), None).unwrap();
        assert_eq!(got, tmp.path());
        // a snapshot folder is just a folder
        let repo = cached(tmp.path(), "Qwen/Qwen-Image", &[REV], Some(REV));
        let snap = repo.join("snapshots").join(REV);
        assert_eq!(resolve_in(&snap, Some(&hub(tmp.path()))).unwrap(), snap);
    }

    #[test]
    fn other_missing_paths_are_returned_unchanged() {
        let tmp = tempfile::tempdir().unwrap();
        for p in ["/no/such/model", "no-such-model", "./a/b", "a/b/c"] {
            assert_eq!(
                resolve_in(Path::new(p), Some(&hub(tmp.path()))).unwrap(),
                Path::new(p)
            );
        }
    }

    #[test]
    fn a_repo_id_is_the_snapshot_refs_main_names() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = cached(
            tmp.path(),
            "Qwen/Qwen-Image",
            &[REV, "older"],
            Some(&format!("{REV}\n")),
        );
        let got = resolve_in(Path::new("Qwen/Qwen-Image"), Some(&hub(tmp.path()))).unwrap();
        assert_eq!(got, repo.join("snapshots").join(REV));
    }

    #[test]
    fn without_refs_main_the_only_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = cached(tmp.path(), "o/n", &["abc"], None);
        fs::write(repo.join("snapshots/not-a-folder"), b"").unwrap();
        let got = resolve_in(Path::new("o/n"), Some(&hub(tmp.path()))).unwrap();
        assert_eq!(got, repo.join("snapshots/abc"));
    }

    #[test]
    fn without_refs_main_several_or_no_snapshots_are_listed() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hub(tmp.path());
        cached(tmp.path(), "o/two", &["bbb", "aaa"], None);
        let err = resolve_in(Path::new("o/two"), Some(&h))
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 snapshots: aaa, bbb"), "{err}");
        assert!(err.contains("models--o--two/refs/main"), "{err}");
        assert!(err.contains("give the snapshot folder"), "{err}");

        cached(tmp.path(), "o/none", &[], None);
        let err = resolve_in(Path::new("o/none"), Some(&h))
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds no snapshot"), "{err}");

        // no snapshots/ folder at all
        fs::create_dir_all(tmp.path().join("hub/models--o--bare")).unwrap();
        let err = resolve_in(Path::new("o/bare"), Some(&h))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("models--o--bare/snapshots holds no snapshot"),
            "{err}"
        );
    }

    #[test]
    fn refs_main_naming_a_missing_or_bad_revision() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hub(tmp.path());
        cached(tmp.path(), "o/gone", &["other"], Some(REV));
        let err = resolve_in(Path::new("o/gone"), Some(&h))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("names revision {REV}")), "{err}");
        assert!(
            err.contains(&format!("models--o--gone/snapshots/{REV}")),
            "{err}"
        );

        for bad in ["", "../../etc", "a b"] {
            cached(tmp.path(), "o/bad", &["x"], Some(bad));
            let err = resolve_in(Path::new("o/bad"), Some(&h)).unwrap_err();
            assert!(
                matches!(err, ModelDirError::BadRef { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn a_repo_not_in_the_cache_names_every_place_looked() {
        let tmp = tempfile::tempdir().unwrap();
        let h = hub(tmp.path());
        let err = resolve_in(Path::new("Qwen/Qwen-Image"), Some(&h))
            .unwrap_err()
            .to_string();
        let cwd = std::env::current_dir().unwrap();
        assert!(
            err.contains(&cwd.join("Qwen/Qwen-Image").display().to_string()),
            "{err}"
        );
        let repo = h.dir.join("models--Qwen--Qwen-Image");
        assert!(err.contains(&repo.display().to_string()), "{err}");
        assert!(err.contains(&h.from), "{err}");
        assert!(err.contains("nothing is downloaded"), "{err}");

        let err = resolve_in(Path::new("Qwen/Qwen-Image"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("HF_HOME and HOME are both unset"), "{err}");
    }

    #[test]
    fn the_cache_root_from_the_environment() {
        let os = |s: &str| Some(OsString::from(s));
        let h = Hub::from_env(os("/hf"), os("/home/u")).unwrap();
        assert_eq!(h.dir, Path::new("/hf/hub"));
        assert_eq!(h.from, "HF_HOME=/hf");
        for unset in [None, os("")] {
            let h = Hub::from_env(unset, os("/home/u")).unwrap();
            assert_eq!(h.dir, Path::new("/home/u/.cache/huggingface/hub"));
            assert_eq!(h.from, "HF_HOME unset, HOME=/home/u");
        }
        assert_eq!(Hub::from_env(None, None), None);
    }
}
