//! Sharded checkpoints: a `*.safetensors.index.json` whose `weight_map` names, for each
//! tensor, the shard file holding it.
//!
//! The index is input like any other and is checked before a shard is opened: every
//! `weight_map` entry must be a plain file name in the index's folder (no absolute path,
//! no `..`, no path separator; the file itself may be a symlink, as in the Hugging Face
//! cache). Every named shard's header is read before any tensor is placed, and a tensor
//! stored in two shards is refused, naming both files.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use super::{regular_file, Checkpoint, Entry, Shard};
use crate::error::WeightError;

impl Checkpoint {
    pub(super) fn open_sharded(index: &Path) -> Result<Checkpoint, WeightError> {
        let placement = read_weight_map(index)?;
        let dir = index.parent().unwrap_or(Path::new("."));

        // Shards in name order, each opened once.
        let mut files: Vec<&str> = placement.values().map(String::as_str).collect();
        files.sort_unstable();
        files.dedup();
        let mut shards: Vec<Shard> = Vec::new();
        let mut stored: BTreeMap<String, Entry> = BTreeMap::new();
        for (i, file) in files.iter().enumerate() {
            let shard_path = dir.join(file);
            if !shard_path.exists() {
                return Err(WeightError::MissingShard {
                    index: index.to_path_buf(),
                    shard: shard_path,
                });
            }
            let shard = Shard::open(&shard_path)?;
            for (name, entry) in shard.entries(i)? {
                if let Some(first) = stored.get(&name) {
                    return Err(WeightError::DuplicateTensor {
                        name,
                        first: shards[first.shard].path.clone(),
                        second: shard_path,
                    });
                }
                stored.insert(name, entry);
            }
            shards.push(shard);
        }

        // Each tensor from the shard the index names; tensors the index does not list
        // are left out, as before.
        let mut tensors = BTreeMap::new();
        for (name, file) in &placement {
            // always found: `files` holds every placed file name
            let shard = files.binary_search(&file.as_str()).unwrap_or_default();
            match stored.remove(name) {
                Some(entry) if entry.shard == shard => {
                    tensors.insert(name.clone(), entry);
                }
                _ => {
                    return Err(WeightError::NotInShard {
                        index: index.to_path_buf(),
                        shard: shards[shard].path.clone(),
                        name: name.clone(),
                    })
                }
            }
        }
        Ok(Checkpoint {
            path: index.to_path_buf(),
            shards,
            tensors,
            #[cfg(test)]
            made: Default::default(),
        })
    }
}

/// The index's `weight_map`: tensor name → shard file name, each checked to be a plain
/// name in the index's folder.
fn read_weight_map(index: &Path) -> Result<BTreeMap<String, String>, WeightError> {
    let malformed = |reason: String| WeightError::Index {
        path: index.to_path_buf(),
        reason,
    };
    regular_file(index)?;
    let text = std::fs::read_to_string(index).map_err(|source| WeightError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|map| map.as_object())
        .ok_or_else(|| malformed("no `weight_map` object".to_string()))?;
    let mut placement = BTreeMap::new();
    for (name, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| malformed(format!("`weight_map` entry `{name}` is not a file name")))?;
        if !is_plain_file_name(shard) {
            return Err(WeightError::ShardOutsideFolder {
                index: index.to_path_buf(),
                name: name.clone(),
                shard: shard.to_string(),
            });
        }
        placement.insert(name.clone(), shard.to_string());
    }
    Ok(placement)
}

/// One ordinary path component: not empty, `.` or `..`, not absolute, without `/` or `\`.
fn is_plain_file_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    !name.contains(['/', '\\'])
        && matches!(components.next(), Some(Component::Normal(_)))
        && components.next().is_none()
}
