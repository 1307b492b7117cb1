//! Reading the committed reference fixtures (`tests/fixtures/` at the workspace root).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};

/// `tests/fixtures/<rel>` of the workspace.
pub fn fixture_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(rel)
}

/// A whole safetensors file held in memory.
pub struct Fixture {
    bytes: Vec<u8>,
    name: String,
}

impl Fixture {
    /// Reads `tests/fixtures/references/<name>`.
    pub fn reference(name: &str) -> Self {
        let path = fixture_path("references").join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self {
            bytes,
            name: name.to_owned(),
        }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("valid safetensors")
    }

    /// The string metadata.
    pub fn metadata(&self) -> HashMap<String, String> {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).expect("header");
        meta.metadata().clone().unwrap_or_default()
    }

    /// All tensor names.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.st().names().into_iter().map(str::to_owned).collect();
        names.sort();
        names
    }

    fn raw(&self, name: &str, dtype: Dtype) -> (Vec<usize>, Vec<u8>) {
        let st = self.st();
        let view = st
            .tensor(name)
            .unwrap_or_else(|e| panic!("{}: `{name}`: {e}", self.name));
        assert_eq!(view.dtype(), dtype, "{}: `{name}`", self.name);
        (view.shape().to_vec(), view.data().to_vec())
    }

    /// An F32 tensor: (shape, values).
    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, data) = self.raw(name, Dtype::F32);
        let values = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (shape, values)
    }

    /// An I64 tensor: (shape, values).
    pub fn i64(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
        let (shape, data) = self.raw(name, Dtype::I64);
        let values = data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (shape, values)
    }

    /// A U8 tensor: (shape, values).
    pub fn u8(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        self.raw(name, Dtype::U8)
    }
}

/// ‖a − b‖ / ‖b‖ over whole tensors (f64 accumulation).
pub fn rel_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    (num / den).sqrt()
}

/// max |a − b| / max(|b|, floor), elementwise.
pub fn max_rel_elem(a: &[f32], b: &[f32], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs() / (y as f64).abs().max(floor))
        .fold(0.0, f64::max)
}
