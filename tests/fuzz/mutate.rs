//! The mutations: what an edit of one file of the model folder is, how proptest draws one,
//! and how it turns the file's bytes into new ones.
//!
//! An edit is a small value (`Debug` prints it as Rust), applied to the real bytes of a
//! fixture file, so a failing case reads as "this file, this edit" and proptest can shrink
//! it. Positions are fractions of a length (`At`), tensors, nodes and lines are indexes taken
//! modulo their count, so every edit applies to every file of its kind.

use std::path::{Path, PathBuf};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Number, Value};

/// A position as a fraction of a length, in units of 2^-32 (always inside the length).
#[derive(Clone, Copy, Debug)]
pub struct At(pub u32);

impl At {
    pub fn of(self, len: usize) -> usize {
        ((u64::from(self.0) * len as u64) >> 32) as usize
    }
}

/// What a file is, from its name: it decides which edits are drawn for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `*.safetensors`
    Shard,
    /// `*.safetensors.index.json`
    Index,
    /// `vocab.json`, `added_tokens.json`, `tokenizer_config.json`: tokens and ids.
    Tokens,
    /// `merges.txt`
    Merges,
    /// Any other json file (configs, `special_tokens_map.json`).
    Json,
}

pub fn kind(file: &str) -> Kind {
    let name = file.rsplit('/').next().unwrap_or(file);
    if name.ends_with(".safetensors") {
        Kind::Shard
    } else if name.ends_with(".safetensors.index.json") {
        Kind::Index
    } else if matches!(
        name,
        "vocab.json" | "added_tokens.json" | "tokenizer_config.json"
    ) {
        Kind::Tokens
    } else if name == "merges.txt" {
        Kind::Merges
    } else {
        Kind::Json
    }
}

/// One edit of one file (a path relative to the model folder).
#[derive(Clone, Debug)]
pub struct Edit {
    pub file: String,
    pub op: Op,
}

#[derive(Clone, Debug)]
pub enum Op {
    Bytes(ByteEdit),
    Json(JsonEdit),
    Header(HeaderEdit),
    Index(IndexEdit),
    Token(TokenEdit),
    Lines(LineEdit),
    Replace(Replacement),
}

/// Raw byte edits. `head`: the position is taken in the file's head (a safetensors file's
/// length field and json header; the whole file otherwise) instead of the whole file.
#[derive(Clone, Debug)]
pub enum ByteEdit {
    Flip { at: At, head: bool, bit: u8 },
    Set { at: At, head: bool, byte: u8 },
    Insert { at: At, head: bool, bytes: Vec<u8> },
    Delete { at: At, head: bool, len: u16 },
    Truncate { at: At, head: bool },
    Append { bytes: Vec<u8> },
}

/// The file replaced by something else.
#[derive(Clone, Debug)]
pub enum Replacement {
    Remove,
    Empty,
    /// A folder of the same name.
    Dir,
    /// The bytes of another file of the target (index into its file list).
    CopyOf(u32),
    /// A symlink to another file of the target.
    LinkTo(u32),
    /// A symlink to nothing.
    Dangling,
    /// A symlink to itself.
    Loop,
}

/// A json value to put somewhere; the last variants derive it from the value replaced.
#[derive(Clone, Debug)]
pub enum Weird {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(&'static str),
    /// A string of this many characters.
    Long(u16),
    EmptyArray,
    EmptyObject,
    /// This many nested arrays.
    Nested(u8),
    Numbers(Vec<i64>),
    Adjust(i64),
    Scale(f64),
    Negate,
    Stringify,
    Wrap,
    /// A copy of another node of the document.
    CopyOf(u32),
}

/// A key for an object: a known one, or one of the document's own (index modulo their count).
#[derive(Clone, Debug)]
pub enum Key {
    Named(&'static str),
    Existing(u32),
}

/// Json edits on any node (index modulo the node count, pre-order, the root is node 0).
#[derive(Clone, Debug)]
pub enum JsonEdit {
    Replace {
        node: u32,
        with: Weird,
    },
    Remove {
        node: u32,
    },
    /// Into the node if it is an object or an array, else into its parent.
    Insert {
        node: u32,
        key: Key,
        with: Weird,
    },
    Rename {
        node: u32,
        to: Key,
    },
    /// The node written as this literal text (numbers serde_json's `Value` cannot hold).
    Raw {
        node: u32,
        literal: &'static str,
    },
}

/// Structural edits of a safetensors header (tensor index modulo the tensor count).
#[derive(Clone, Debug)]
pub enum HeaderEdit {
    Shape {
        tensor: u32,
        shape: Vec<Dim>,
    },
    /// Another shape of the same element count (so the header stays valid).
    Reshape {
        tensor: u32,
        how: u8,
    },
    /// Two entries trade names (valid; shapes and dtypes no longer what is expected).
    Swap(u32, u32),
    Dim {
        tensor: u32,
        axis: u8,
        dim: Dim,
    },
    Offsets {
        tensor: u32,
        start: Off,
        end: Off,
    },
    Dtype {
        tensor: u32,
        dtype: &'static str,
    },
    Drop {
        tensor: u32,
    },
    /// Another entry with the same dtype, shape and offsets.
    Clone {
        tensor: u32,
        name: Key,
    },
    Rename {
        tensor: u32,
        name: Key,
    },
    Metadata(Weird),
    /// The 8-byte header length changed by a delta, or set.
    LengthDelta(i64),
    Length(u64),
    /// Bytes added at the end of the header, inside its length.
    Pad(Vec<u8>),
    Json(JsonEdit),
}

#[derive(Clone, Debug)]
pub enum Dim {
    N(u64),
    Adjust(i64),
}

#[derive(Clone, Debug)]
pub enum Off {
    Keep,
    N(u64),
    Adjust(i64),
    /// The start (false) or end (true) of another tensor.
    Of(u32, bool),
}

/// Edits of a `*.safetensors.index.json`'s `weight_map`.
#[derive(Clone, Debug)]
pub enum IndexEdit {
    Place { tensor: u32, shard: ShardName },
    Drop { tensor: u32 },
    Add { name: Key, shard: ShardName },
}

#[derive(Clone, Debug)]
pub enum ShardName {
    /// One of the names the index already uses.
    Other(u32),
    Named(&'static str),
}

/// Edits of a token map: `vocab.json` and `added_tokens.json` (token → id),
/// `tokenizer_config.json`'s `added_tokens_decoder` (id → token entry).
#[derive(Clone, Debug)]
pub enum TokenEdit {
    SetId { token: u32, id: Id },
    Drop { token: u32 },
    Add { content: Tok, id: Id, special: bool },
}

#[derive(Clone, Debug)]
pub enum Id {
    N(i64),
    Uint(u64),
    Float(f64),
    Str(&'static str),
    /// The id of another token of the map.
    Existing(u32),
    Adjust(i64),
}

#[derive(Clone, Debug)]
pub enum Tok {
    Named(&'static str),
    Existing(u32),
    Concat(u32, u32),
    Long(u16),
}

/// Line edits of `merges.txt` (line index modulo the line count).
#[derive(Clone, Debug)]
pub enum LineEdit {
    Delete(u32),
    Dup(u32),
    Swap(u32, u32),
    Replace(u32, Line),
    Insert(u32, Line),
}

#[derive(Clone, Debug)]
pub enum Line {
    Named(&'static str),
    /// The left half of one line and the right half of another.
    Mix(u32, u32),
}

// === Values the strategies draw from ===

const INTS: &[i64] = &[
    0,
    1,
    -1,
    2,
    3,
    7,
    16,
    64,
    255,
    256,
    1000,
    4096,
    65535,
    65536,
    i32::MAX as i64,
    i32::MAX as i64 + 1,
    u32::MAX as i64,
    1 << 32,
    1 << 53,
    i64::MAX,
    i64::MIN,
    151_643,
    151_664,
    152_063,
    152_064,
];
const UINTS: &[u64] = &[u64::MAX, u64::MAX - 1, u64::MAX - 7, 1 << 63, (1 << 63) + 1];
const FLOATS: &[f64] = &[
    0.0,
    -0.0,
    0.5,
    -0.5,
    1.0,
    2.0,
    1e-6,
    1e-45,
    1e-320,
    3.4e38,
    3.5e38,
    1e39,
    -1e39,
    1e308,
    -1e308,
    f64::MAX,
    f64::MIN_POSITIVE,
    86.9,
    87.0,
    88.8,
    -87.5,
    1e9,
    0.999_999,
    1.000_001,
];
const STRS: &[&str] = &[
    "",
    " ",
    "0",
    "1",
    "-1",
    "NaN",
    "inf",
    "1e999",
    "true",
    "null",
    "bf16",
    "F32",
    "exponential",
    "linear",
    "QwenImagePipeline",
    "FluxPipeline",
    "../x",
    "/etc/hostname",
    "/dev/zero",
    ".",
    "..",
    "a/b",
    "\\",
    "\u{0}",
    "\u{fffd}",
    "\u{1f408}",
    "<|im_start|>",
    "<|endoftext|>",
    "\u{120}",
    "\u{120} \u{120}",
    "model.safetensors",
    "\n",
    "e\u{301}",
    // tokenizer.json: component types and values
    "BPE",
    "WordPiece",
    "WordLevel",
    "Unigram",
    "ByteLevel",
    "Metaspace",
    "Precompiled",
    "Sequence",
    "Replace",
    "Split",
    "Strip",
    "Fuse",
    "ByteFallback",
    "CTC",
    "NFC",
    "NFKC",
    "Lowercase",
    "Prepend",
    "Punctuation",
    "Whitespace",
    "Digits",
    "UnicodeScripts",
    "TemplateProcessing",
    "RobertaProcessing",
    "Isolated",
    "MergedWithPrevious",
    "##",
    "(",
    "\\p{L}+",
    "(a*)*b",
];
const KEYS: &[&str] = &[
    "__metadata__",
    "weight_map",
    "metadata",
    "total_size",
    "dtype",
    "shape",
    "data_offsets",
    "_class_name",
    "num_layers",
    "num_attention_heads",
    "attention_head_dim",
    "joint_attention_dim",
    "in_channels",
    "out_channels",
    "patch_size",
    "axes_dims_rope",
    "guidance_embeds",
    "shift",
    "base_shift",
    "max_shift",
    "use_dynamic_shifting",
    "shift_terminal",
    "num_train_timesteps",
    "time_shift_type",
    "base_image_seq_len",
    "max_image_seq_len",
    "invert_sigmas",
    "stochastic_sampling",
    "use_karras_sigmas",
    "use_beta_sigmas",
    "latents_mean",
    "latents_std",
    "z_dim",
    "base_dim",
    "dim_mult",
    "num_res_blocks",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_key_value_heads",
    "rms_norm_eps",
    "rope_theta",
    "text_config",
    "added_tokens_decoder",
    "additional_special_tokens",
    "content",
    "special",
    "lstrip",
    "rstrip",
    "single_word",
    "normalized",
    "",
    "\u{0}",
    "151643",
    "151665",
    "4294967296",
    "-1",
    "<|im_start|>",
    "\u{120}",
    "img_in.weight",
    // tokenizer.json
    "type",
    "pattern",
    "Regex",
    "String",
    "behavior",
    "invert",
    "precompiled_charsmap",
    "prepend_scheme",
    "replacement",
    "split",
    "continuing_subword_prefix",
    "end_of_word_suffix",
    "unk_token",
    "dropout",
    "byte_fallback",
    "ignore_merges",
    "fuse_unk",
    "vocab",
    "merges",
    "pretokenizers",
    "normalizers",
    "decoders",
    "add_prefix_space",
    "trim_offsets",
    "use_regex",
    "max_input_chars_per_word",
];
const LITERALS: &[&str] = &[
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "1e-400",
    "18446744073709551616",
    "-9223372036854775809",
    "340282366920938463463374607431768211456",
    "0.1e1",
    "-0",
    "1E+2",
    "00",
    "1.",
    "+1",
    "0x10",
    "\"\\ud800\"",
    "\"\\u0000\"",
    "\"\\uffff\"",
];
const DIMS: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    8,
    16,
    31,
    32,
    33,
    64,
    96,
    1000,
    65535,
    65536,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    (1 << 32) + 1,
    1 << 53,
    1 << 62,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];
const DELTAS: &[i64] = &[
    -65536, -4096, -9, -8, -4, -2, -1, 1, 2, 3, 4, 7, 8, 9, 16, 4096, 65536,
];
const DTYPES: &[&str] = &[
    "BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16", "BF16", "I32", "U32",
    "F32", "F64", "I64", "U64", "F4", "F6_E2M3", "F6_E3M2", "E8M0", "C64", "", "f32", "bf16",
    "F128", "Q4",
];
const SHARD_NAMES: &[&str] = &[
    "",
    ".",
    "..",
    "../vae/diffusion_pytorch_model.safetensors",
    "/etc/hostname",
    "/dev/zero",
    "sub/x.safetensors",
    "x\\y.safetensors",
    "missing.safetensors",
    "config.json",
    "model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors.index.json",
    "\u{0}",
];
const TOKENS: &[&str] = &[
    "",
    " ",
    "a",
    "hello",
    "\u{120}",
    "\u{120}\u{120}",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|new|>",
    "<",
    "|",
    "\u{0}",
    "\u{1f408}",
    "\u{e9}",
    "e\u{301}",
    "a b",
    "\n",
];
const LINES: &[&str] = &[
    "",
    " ",
    "a",
    "a b c",
    "a  b",
    "\u{120} \u{120}",
    "#version: 0.2",
    "\t",
    "zz qq",
    "a b",
    "<|im_start|> x",
    "\u{120}",
    " \u{120}",
    "\r",
    "\u{120}\u{120} \u{120}\u{120}",
    "i n",
    "\u{1f408} a",
];
const SNIPPETS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\0",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"1e999",
    b"-",
    b"NaN",
    b" ",
    b"\n",
    b"\r\n",
    b"\xe2\x80\xa8",
    b"\xef\xbb\xbf",
];

// === Strategies ===

fn at() -> impl Strategy<Value = At> {
    any::<u32>().prop_map(At)
}

fn some_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        select(SNIPPETS).prop_map(|s| s.to_vec()),
        vec(any::<u8>(), 1..16),
    ]
}

pub fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        3 => (at(), any::<bool>(), 0u8..8).prop_map(|(at, head, bit)| ByteEdit::Flip { at, head, bit }),
        2 => (at(), any::<bool>(), any::<u8>()).prop_map(|(at, head, byte)| ByteEdit::Set { at, head, byte }),
        2 => (at(), any::<bool>(), some_bytes()).prop_map(|(at, head, bytes)| ByteEdit::Insert { at, head, bytes }),
        1 => (at(), any::<bool>(), 1u16..64).prop_map(|(at, head, len)| ByteEdit::Delete { at, head, len }),
        2 => (at(), any::<bool>()).prop_map(|(at, head)| ByteEdit::Truncate { at, head }),
        1 => some_bytes().prop_map(|bytes| ByteEdit::Append { bytes }),
    ]
}

pub fn replacement() -> impl Strategy<Value = Replacement> {
    prop_oneof![
        Just(Replacement::Remove),
        Just(Replacement::Empty),
        Just(Replacement::Dir),
        any::<u32>().prop_map(Replacement::CopyOf),
        any::<u32>().prop_map(Replacement::LinkTo),
        Just(Replacement::Dangling),
        Just(Replacement::Loop),
    ]
}

pub fn weird() -> impl Strategy<Value = Weird> {
    prop_oneof![
        Just(Weird::Null),
        any::<bool>().prop_map(Weird::Bool),
        select(INTS).prop_map(Weird::Int),
        any::<i64>().prop_map(Weird::Int),
        select(UINTS).prop_map(Weird::Uint),
        select(FLOATS).prop_map(Weird::Float),
        select(STRS).prop_map(Weird::Str),
        (1u16..3000).prop_map(Weird::Long),
        Just(Weird::EmptyArray),
        Just(Weird::EmptyObject),
        (1u8..=200).prop_map(Weird::Nested),
        vec(select(INTS), 0..20).prop_map(Weird::Numbers),
        select(DELTAS).prop_map(Weird::Adjust),
        select(&[-1.0, 0.0, 1e-30, 0.5, 2.0, 1e30][..]).prop_map(Weird::Scale),
        Just(Weird::Negate),
        Just(Weird::Stringify),
        Just(Weird::Wrap),
        any::<u32>().prop_map(Weird::CopyOf),
    ]
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        select(KEYS).prop_map(Key::Named),
        any::<u32>().prop_map(Key::Existing),
    ]
}

pub fn json_edit() -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        5 => (any::<u32>(), weird()).prop_map(|(node, with)| JsonEdit::Replace { node, with }),
        2 => any::<u32>().prop_map(|node| JsonEdit::Remove { node }),
        2 => (any::<u32>(), key(), weird()).prop_map(|(node, key, with)| JsonEdit::Insert { node, key, with }),
        1 => (any::<u32>(), key()).prop_map(|(node, to)| JsonEdit::Rename { node, to }),
        2 => (any::<u32>(), select(LITERALS)).prop_map(|(node, literal)| JsonEdit::Raw { node, literal }),
    ]
}

fn dim() -> impl Strategy<Value = Dim> {
    prop_oneof![
        select(DIMS).prop_map(Dim::N),
        select(DELTAS).prop_map(Dim::Adjust),
    ]
}

fn off() -> impl Strategy<Value = Off> {
    prop_oneof![
        Just(Off::Keep),
        select(DIMS).prop_map(Off::N),
        select(DELTAS).prop_map(Off::Adjust),
        (any::<u32>(), any::<bool>()).prop_map(|(t, end)| Off::Of(t, end)),
    ]
}

pub fn header_edit() -> impl Strategy<Value = HeaderEdit> {
    prop_oneof![
        3 => (any::<u32>(), vec(dim(), 0..5)).prop_map(|(tensor, shape)| HeaderEdit::Shape { tensor, shape }),
        3 => (any::<u32>(), 0u8..4, dim()).prop_map(|(tensor, axis, dim)| HeaderEdit::Dim { tensor, axis, dim }),
        3 => (any::<u32>(), 0u8..6).prop_map(|(tensor, how)| HeaderEdit::Reshape { tensor, how }),
        2 => (any::<u32>(), any::<u32>()).prop_map(|(a, b)| HeaderEdit::Swap(a, b)),
        4 => (any::<u32>(), off(), off()).prop_map(|(tensor, start, end)| HeaderEdit::Offsets { tensor, start, end }),
        3 => (any::<u32>(), select(DTYPES)).prop_map(|(tensor, dtype)| HeaderEdit::Dtype { tensor, dtype }),
        1 => any::<u32>().prop_map(|tensor| HeaderEdit::Drop { tensor }),
        1 => (any::<u32>(), key()).prop_map(|(tensor, name)| HeaderEdit::Clone { tensor, name }),
        1 => (any::<u32>(), key()).prop_map(|(tensor, name)| HeaderEdit::Rename { tensor, name }),
        1 => weird().prop_map(HeaderEdit::Metadata),
        2 => select(DELTAS).prop_map(HeaderEdit::LengthDelta),
        1 => select(DIMS).prop_map(HeaderEdit::Length),
        1 => some_bytes().prop_map(HeaderEdit::Pad),
        3 => json_edit().prop_map(HeaderEdit::Json),
    ]
}

fn shard_name() -> impl Strategy<Value = ShardName> {
    prop_oneof![
        3 => any::<u32>().prop_map(ShardName::Other),
        2 => select(SHARD_NAMES).prop_map(ShardName::Named),
    ]
}

pub fn index_edit() -> impl Strategy<Value = IndexEdit> {
    prop_oneof![
        3 => (any::<u32>(), shard_name()).prop_map(|(tensor, shard)| IndexEdit::Place { tensor, shard }),
        2 => any::<u32>().prop_map(|tensor| IndexEdit::Drop { tensor }),
        1 => (key(), shard_name()).prop_map(|(name, shard)| IndexEdit::Add { name, shard }),
    ]
}

fn id() -> impl Strategy<Value = Id> {
    prop_oneof![
        3 => select(INTS).prop_map(Id::N),
        1 => select(UINTS).prop_map(Id::Uint),
        1 => select(&[0.5, 1.0, 151_643.0, 1e20, -1.0][..]).prop_map(Id::Float),
        1 => select(&["", "x", "1", "-1", "151643", "4294967296", "1e3", " 1"][..]).prop_map(Id::Str),
        2 => any::<u32>().prop_map(Id::Existing),
        2 => select(DELTAS).prop_map(Id::Adjust),
    ]
}

fn tok() -> impl Strategy<Value = Tok> {
    prop_oneof![
        3 => select(TOKENS).prop_map(Tok::Named),
        2 => any::<u32>().prop_map(Tok::Existing),
        1 => (any::<u32>(), any::<u32>()).prop_map(|(a, b)| Tok::Concat(a, b)),
        1 => (1u16..3000).prop_map(Tok::Long),
    ]
}

pub fn token_edit() -> impl Strategy<Value = TokenEdit> {
    prop_oneof![
        3 => (any::<u32>(), id()).prop_map(|(token, id)| TokenEdit::SetId { token, id }),
        1 => any::<u32>().prop_map(|token| TokenEdit::Drop { token }),
        3 => (tok(), id(), any::<bool>()).prop_map(|(content, id, special)| TokenEdit::Add { content, id, special }),
    ]
}

fn line() -> impl Strategy<Value = Line> {
    prop_oneof![
        select(LINES).prop_map(Line::Named),
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| Line::Mix(a, b)),
    ]
}

pub fn line_edit() -> impl Strategy<Value = LineEdit> {
    prop_oneof![
        2 => any::<u32>().prop_map(LineEdit::Delete),
        1 => any::<u32>().prop_map(LineEdit::Dup),
        1 => (any::<u32>(), any::<u32>()).prop_map(|(a, b)| LineEdit::Swap(a, b)),
        2 => (any::<u32>(), line()).prop_map(|(i, l)| LineEdit::Replace(i, l)),
        2 => (any::<u32>(), line()).prop_map(|(i, l)| LineEdit::Insert(i, l)),
    ]
}

/// The edits drawn for a file of this kind.
pub fn op(kind: Kind) -> BoxedStrategy<Op> {
    let bytes = byte_edit().prop_map(Op::Bytes);
    let json = json_edit().prop_map(Op::Json);
    let replace = replacement().prop_map(Op::Replace);
    match kind {
        Kind::Shard => prop_oneof![
            3 => bytes,
            7 => header_edit().prop_map(Op::Header),
            1 => replace,
        ]
        .boxed(),
        Kind::Index => prop_oneof![
            4 => index_edit().prop_map(Op::Index),
            3 => json,
            2 => bytes,
            1 => replace,
        ]
        .boxed(),
        Kind::Tokens => prop_oneof![
            4 => token_edit().prop_map(Op::Token),
            3 => json,
            2 => bytes,
            1 => replace,
        ]
        .boxed(),
        Kind::Merges => prop_oneof![
            5 => line_edit().prop_map(Op::Lines),
            3 => bytes,
            1 => replace,
        ]
        .boxed(),
        Kind::Json => prop_oneof![
            6 => json,
            2 => bytes,
            1 => replace,
        ]
        .boxed(),
    }
}

/// One edit of one of `files`, `weights[i]` the relative chance of `files[i]`.
pub fn edit(files: &[(&str, u32)]) -> BoxedStrategy<Edit> {
    let choices: Vec<(u32, BoxedStrategy<Edit>)> = files
        .iter()
        .map(|&(file, weight)| {
            let name = file.to_owned();
            let s = op(kind(file))
                .prop_map(move |op| Edit {
                    file: name.clone(),
                    op,
                })
                .boxed();
            (weight, s)
        })
        .collect();
    proptest::strategy::Union::new_weighted(choices).boxed()
}

// === Applying edits ===

/// What a file of the folder is after the edits of a case.
#[derive(Clone, Debug)]
pub enum State {
    Bytes(Vec<u8>),
    Removed,
    Dir,
    Link(PathBuf),
}

/// Where an edit applies: the folder it will be written in, the target's files and their
/// pristine bytes (for `CopyOf`, `LinkTo`).
pub struct Ctx<'a> {
    pub dir: &'a Path,
    pub files: &'a [String],
    pub pristine: &'a dyn Fn(&str) -> Vec<u8>,
}

pub fn apply(edit: &Edit, state: State, ctx: &Ctx) -> State {
    let State::Bytes(bytes) = state else {
        return match &edit.op {
            Op::Replace(r) => replace(&edit.file, r, ctx),
            _ => state,
        };
    };
    let kind = kind(&edit.file);
    let changed = match &edit.op {
        Op::Replace(r) => return replace(&edit.file, r, ctx),
        Op::Bytes(e) => Some(byte_edit_apply(e, bytes.clone(), head_len(kind, &bytes))),
        Op::Json(e) => json_text_edit(&bytes, |doc| json_edit_apply(e, doc)),
        Op::Header(e) => header_edit_apply(e, &bytes),
        Op::Index(e) => json_text_edit(&bytes, |doc| {
            index_edit_apply(e, doc);
            None
        }),
        Op::Token(e) => json_text_edit(&bytes, |doc| {
            token_edit_apply(e, doc, &edit.file);
            None
        }),
        Op::Lines(e) => Some(line_edit_apply(e, &bytes)),
    };
    State::Bytes(changed.unwrap_or(bytes))
}

fn replace(file: &str, r: &Replacement, ctx: &Ctx) -> State {
    let other = |i: u32| &ctx.files[i as usize % ctx.files.len()];
    match r {
        Replacement::Remove => State::Removed,
        Replacement::Empty => State::Bytes(Vec::new()),
        Replacement::Dir => State::Dir,
        Replacement::CopyOf(i) => State::Bytes((ctx.pristine)(other(*i))),
        Replacement::LinkTo(i) => State::Link(ctx.dir.join(other(*i))),
        Replacement::Dangling => State::Link(ctx.dir.join("no-such-file")),
        Replacement::Loop => State::Link(ctx.dir.join(file)),
    }
}

/// The length of a file's head: a safetensors file's length field and header, else all.
fn head_len(kind: Kind, bytes: &[u8]) -> usize {
    if kind == Kind::Shard {
        if let Some(n) = bytes.get(..8) {
            let n = u64::from_le_bytes(n.try_into().unwrap());
            return usize::try_from(n.saturating_add(8))
                .unwrap_or(usize::MAX)
                .min(bytes.len());
        }
    }
    bytes.len()
}

fn byte_edit_apply(e: &ByteEdit, mut bytes: Vec<u8>, head: usize) -> Vec<u8> {
    let pos = |at: At, in_head: bool| at.of(if in_head { head } else { bytes.len() });
    match e {
        ByteEdit::Flip { at, head, bit } => {
            let i = pos(*at, *head);
            if let Some(b) = bytes.get_mut(i) {
                *b ^= 1 << (bit % 8);
            }
        }
        ByteEdit::Set { at, head, byte } => {
            let i = pos(*at, *head);
            if let Some(b) = bytes.get_mut(i) {
                *b = *byte;
            }
        }
        ByteEdit::Insert {
            at,
            head,
            bytes: new,
        } => {
            let i = pos(*at, *head);
            bytes.splice(i..i, new.iter().copied());
        }
        ByteEdit::Delete { at, head, len } => {
            let i = pos(*at, *head);
            let end = (i + usize::from(*len)).min(bytes.len());
            bytes.drain(i..end);
        }
        ByteEdit::Truncate { at, head } => {
            let i = pos(*at, *head);
            bytes.truncate(i);
        }
        ByteEdit::Append { bytes: new } => bytes.extend_from_slice(new),
    }
    bytes
}

/// The placeholder a `Raw` edit leaves in the document, replaced by its literal in the text.
const RAW: &str = "@@fuzz-raw@@";

/// Parses `bytes` as json, edits the document, writes it back (compact). `None` (no change)
/// when the bytes are not json, as after an earlier byte edit.
fn json_text_edit(
    bytes: &[u8],
    edit: impl FnOnce(&mut Value) -> Option<&'static str>,
) -> Option<Vec<u8>> {
    let mut doc: Value = serde_json::from_slice(bytes).ok()?;
    let raw = edit(&mut doc);
    let mut text = serde_json::to_string(&doc).ok()?;
    if let Some(literal) = raw {
        text = text.replacen(&format!("\"{RAW}\""), literal, 1);
    }
    Some(text.into_bytes())
}

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Idx(usize),
}

/// Every node's path, pre-order, the root first.
fn nodes(doc: &Value) -> Vec<Vec<Seg>> {
    fn walk(v: &Value, path: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
        out.push(path.clone());
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    path.push(Seg::Key(k.clone()));
                    walk(child, path, out);
                    path.pop();
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    path.push(Seg::Idx(i));
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(doc, &mut Vec::new(), &mut out);
    out
}

fn get_mut<'a>(doc: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut v = doc;
    for seg in path {
        v = match seg {
            Seg::Key(k) => v.as_object_mut()?.get_mut(k)?,
            Seg::Idx(i) => v.as_array_mut()?.get_mut(*i)?,
        };
    }
    Some(v)
}

fn pick(doc: &Value, node: u32) -> Vec<Seg> {
    let all = nodes(doc);
    all[node as usize % all.len()].clone()
}

fn all_keys(doc: &Value) -> Vec<String> {
    nodes(doc)
        .into_iter()
        .filter_map(|p| match p.last() {
            Some(Seg::Key(k)) => Some(k.clone()),
            _ => None,
        })
        .collect()
}

fn key_name(key: &Key, doc: &Value) -> String {
    match key {
        Key::Named(k) => (*k).to_owned(),
        Key::Existing(i) => {
            let keys = all_keys(doc);
            if keys.is_empty() {
                String::new()
            } else {
                keys[*i as usize % keys.len()].clone()
            }
        }
    }
}

fn number(x: i128) -> Value {
    if let Ok(u) = u64::try_from(x) {
        Value::from(u)
    } else if let Ok(i) = i64::try_from(x) {
        Value::from(i)
    } else {
        float(x as f64)
    }
}

fn float(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn make(w: &Weird, old: &Value, doc: &Value) -> Value {
    match w {
        Weird::Null => Value::Null,
        Weird::Bool(b) => Value::Bool(*b),
        Weird::Int(i) => Value::from(*i),
        Weird::Uint(u) => Value::from(*u),
        Weird::Float(f) => float(*f),
        Weird::Str(s) => Value::from(*s),
        Weird::Long(n) => Value::from("x".repeat(usize::from(*n))),
        Weird::EmptyArray => Value::Array(vec![]),
        Weird::EmptyObject => Value::Object(Map::new()),
        Weird::Nested(depth) => {
            let mut v = Value::from(1);
            for _ in 0..*depth {
                v = Value::Array(vec![v]);
            }
            v
        }
        Weird::Numbers(ns) => Value::from(ns.clone()),
        Weird::Adjust(d) => match old {
            Value::Number(n) if n.is_u64() => {
                number(i128::from(n.as_u64().unwrap()) + i128::from(*d))
            }
            Value::Number(n) if n.is_i64() => {
                number(i128::from(n.as_i64().unwrap()) + i128::from(*d))
            }
            Value::Number(n) => float(n.as_f64().unwrap_or(0.0) + *d as f64),
            _ => Value::from(*d),
        },
        Weird::Scale(s) => match old.as_f64() {
            Some(x) => float(x * s),
            None => float(*s),
        },
        Weird::Negate => match old {
            Value::Number(n) if n.is_u64() => number(-i128::from(n.as_u64().unwrap())),
            Value::Number(n) if n.is_i64() => number(-i128::from(n.as_i64().unwrap())),
            Value::Number(n) => float(-n.as_f64().unwrap_or(0.0)),
            Value::Bool(b) => Value::Bool(!b),
            _ => Value::Null,
        },
        Weird::Stringify => Value::String(old.to_string()),
        Weird::Wrap => Value::Array(vec![old.clone()]),
        Weird::CopyOf(i) => {
            let path = pick(doc, *i);
            let mut copy = doc.clone();
            get_mut(&mut copy, &path)
                .map(|v| v.take())
                .unwrap_or(Value::Null)
        }
    }
}

/// Applies a json edit; a `Raw` edit returns the literal to put in place of [`RAW`].
fn json_edit_apply(e: &JsonEdit, doc: &mut Value) -> Option<&'static str> {
    match e {
        JsonEdit::Replace { node, with } => {
            let path = pick(doc, *node);
            let snapshot = doc.clone();
            if let Some(v) = get_mut(doc, &path) {
                *v = make(with, v, &snapshot);
            }
        }
        JsonEdit::Remove { node } => {
            let path = pick(doc, *node);
            let Some((last, parent)) = path.split_last() else {
                *doc = Value::Null;
                return None;
            };
            match (get_mut(doc, parent), last) {
                (Some(Value::Object(map)), Seg::Key(k)) => {
                    map.remove(k);
                }
                (Some(Value::Array(items)), Seg::Idx(i)) => {
                    items.remove(*i);
                }
                _ => {}
            }
        }
        JsonEdit::Insert { node, key, with } => {
            let mut path = pick(doc, *node);
            let name = key_name(key, doc);
            let snapshot = doc.clone();
            let is_container = |v: &Value| v.is_object() || v.is_array();
            if !get_mut(doc, &path).is_some_and(|v| is_container(v)) {
                path.pop();
            }
            if let Some(target) = get_mut(doc, &path) {
                let value = make(with, &Value::Null, &snapshot);
                match target {
                    Value::Object(map) => {
                        map.insert(name, value);
                    }
                    Value::Array(items) => items.push(value),
                    _ => {}
                }
            }
        }
        JsonEdit::Rename { node, to } => {
            let path = pick(doc, *node);
            let name = key_name(to, doc);
            if let Some((Seg::Key(k), parent)) = path.split_last() {
                if let Some(Value::Object(map)) = get_mut(doc, parent) {
                    if let Some(v) = map.remove(k) {
                        map.insert(name, v);
                    }
                }
            }
        }
        JsonEdit::Raw { node, literal } => {
            let path = pick(doc, *node);
            if let Some(v) = get_mut(doc, &path) {
                *v = Value::from(RAW);
                return Some(literal);
            }
        }
    }
    None
}

/// The header and the data of a safetensors file, if its length field fits the file.
fn split_shard(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(n).ok()?)?;
    Some((bytes.get(8..end)?, &bytes[end..]))
}

fn join_shard(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

fn header_edit_apply(e: &HeaderEdit, bytes: &[u8]) -> Option<Vec<u8>> {
    match e {
        HeaderEdit::LengthDelta(d) => {
            let mut out = bytes.to_vec();
            let n = u64::from_le_bytes(out.get(..8)?.try_into().ok()?);
            out[..8].copy_from_slice(&n.wrapping_add(*d as u64).to_le_bytes());
            return Some(out);
        }
        HeaderEdit::Length(n) => {
            let mut out = bytes.to_vec();
            out.get_mut(..8)?.copy_from_slice(&n.to_le_bytes());
            return Some(out);
        }
        _ => {}
    }
    let (header, data) = split_shard(bytes)?;
    let header = match e {
        HeaderEdit::Pad(pad) => [header, pad].concat(),
        HeaderEdit::Json(j) => json_text_edit(header, |doc| json_edit_apply(j, doc))?,
        _ => json_text_edit(header, |doc| {
            tensor_edit_apply(e, doc);
            None
        })?,
    };
    Some(join_shard(&header, data))
}

fn tensor_names(doc: &Value) -> Vec<String> {
    doc.as_object()
        .map(|m| m.keys().filter(|k| *k != "__metadata__").cloned().collect())
        .unwrap_or_default()
}

fn tensor_edit_apply(e: &HeaderEdit, doc: &mut Value) {
    let names = tensor_names(doc);
    if names.is_empty() {
        return;
    }
    let name = |t: u32| names[t as usize % names.len()].clone();
    let snapshot = doc.clone();
    let Some(map) = doc.as_object_mut() else {
        return;
    };
    let dim = |d: &Dim, old: Option<&Value>| match d {
        Dim::N(n) => Value::from(*n),
        Dim::Adjust(delta) => {
            number(i128::from(old.and_then(Value::as_u64).unwrap_or(0)) + i128::from(*delta))
        }
    };
    match e {
        HeaderEdit::Shape { tensor, shape } => {
            let t = name(*tensor);
            let old = map[&t]["shape"].clone();
            let new: Vec<Value> = shape
                .iter()
                .enumerate()
                .map(|(i, d)| dim(d, old.get(i)))
                .collect();
            if let Some(info) = map.get_mut(&t).and_then(Value::as_object_mut) {
                info.insert("shape".into(), Value::Array(new));
            }
        }
        HeaderEdit::Reshape { tensor, how } => {
            let t = name(*tensor);
            let count: u64 = map[&t]["shape"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .map(|d| d.as_u64().unwrap_or(1))
                        .fold(1u64, u64::saturating_mul)
                })
                .unwrap_or(1);
            let factor = (2..count.min(1 << 16))
                .find(|f| count % f == 0)
                .unwrap_or(count);
            let shape: Vec<u64> = match how {
                0 => vec![count],
                1 => vec![1, count],
                2 => vec![count, 1],
                3 => vec![factor, count / factor.max(1)],
                4 => vec![count / factor.max(1), 1, factor],
                _ if count == 1 => vec![],
                _ => [vec![1; 40], vec![count]].concat(),
            };
            if let Some(info) = map.get_mut(&t).and_then(Value::as_object_mut) {
                info.insert("shape".into(), Value::from(shape));
            }
        }
        HeaderEdit::Swap(a, b) => {
            let (a, b) = (name(*a), name(*b));
            let (ia, ib) = (map[&a].clone(), map[&b].clone());
            map.insert(a, ib);
            map.insert(b, ia);
        }
        HeaderEdit::Dim {
            tensor,
            axis,
            dim: d,
        } => {
            let t = name(*tensor);
            if let Some(shape) = map
                .get_mut(&t)
                .and_then(|info| info.get_mut("shape"))
                .and_then(Value::as_array_mut)
            {
                let axis = usize::from(*axis);
                if axis < shape.len() {
                    shape[axis] = dim(d, shape.get(axis));
                } else {
                    shape.push(dim(d, None));
                }
            }
        }
        HeaderEdit::Offsets { tensor, start, end } => {
            let t = name(*tensor);
            let offsets = |n: &str| -> [Value; 2] {
                let o = &snapshot[n]["data_offsets"];
                [o[0].clone(), o[1].clone()]
            };
            let old = offsets(&t);
            let new = |o: &Off, old: &Value| match o {
                Off::Keep => old.clone(),
                Off::N(n) => Value::from(*n),
                Off::Adjust(d) => number(i128::from(old.as_u64().unwrap_or(0)) + i128::from(*d)),
                Off::Of(other, end) => offsets(&name(*other))[usize::from(*end)].clone(),
            };
            let value = Value::Array(vec![new(start, &old[0]), new(end, &old[1])]);
            if let Some(info) = map.get_mut(&t).and_then(Value::as_object_mut) {
                info.insert("data_offsets".into(), value);
            }
        }
        HeaderEdit::Dtype { tensor, dtype } => {
            if let Some(info) = map.get_mut(&name(*tensor)).and_then(Value::as_object_mut) {
                info.insert("dtype".into(), Value::from(*dtype));
            }
        }
        HeaderEdit::Drop { tensor } => {
            map.remove(&name(*tensor));
        }
        HeaderEdit::Clone { tensor, name: key } => {
            let info = map[&name(*tensor)].clone();
            map.insert(key_name(key, &snapshot), info);
        }
        HeaderEdit::Rename { tensor, name: key } => {
            if let Some(info) = map.remove(&name(*tensor)) {
                map.insert(key_name(key, &snapshot), info);
            }
        }
        HeaderEdit::Metadata(w) => {
            let old = map.get("__metadata__").cloned().unwrap_or(Value::Null);
            map.insert("__metadata__".into(), make(w, &old, &snapshot));
        }
        HeaderEdit::LengthDelta(_)
        | HeaderEdit::Length(_)
        | HeaderEdit::Pad(_)
        | HeaderEdit::Json(_) => {}
    }
}

fn shard_name_of(s: &ShardName, doc: &Value) -> String {
    match s {
        ShardName::Named(n) => (*n).to_owned(),
        ShardName::Other(i) => {
            let mut names: Vec<String> = doc["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names.dedup();
            if names.is_empty() {
                "model.safetensors".into()
            } else {
                names[*i as usize % names.len()].clone()
            }
        }
    }
}

fn index_edit_apply(e: &IndexEdit, doc: &mut Value) {
    let snapshot = doc.clone();
    let Some(map) = doc.get_mut("weight_map").and_then(Value::as_object_mut) else {
        return;
    };
    let names: Vec<String> = map.keys().cloned().collect();
    let name = |t: u32| names.get(t as usize % names.len().max(1)).cloned();
    match e {
        IndexEdit::Place { tensor, shard } => {
            if let Some(t) = name(*tensor) {
                map.insert(t, Value::from(shard_name_of(shard, &snapshot)));
            }
        }
        IndexEdit::Drop { tensor } => {
            if let Some(t) = name(*tensor) {
                map.remove(&t);
            }
        }
        IndexEdit::Add { name: key, shard } => {
            map.insert(
                key_name(key, &snapshot),
                Value::from(shard_name_of(shard, &snapshot)),
            );
        }
    }
}

/// The token map of a file: `vocab.json` and `added_tokens.json` are one; in
/// `tokenizer_config.json` it is `added_tokens_decoder` (keys are ids there).
fn token_edit_apply(e: &TokenEdit, doc: &mut Value, file: &str) {
    let by_id = file.ends_with("tokenizer_config.json");
    let snapshot = doc.clone();
    let map = if by_id {
        doc.get_mut("added_tokens_decoder")
    } else {
        Some(doc)
    };
    let Some(map) = map.and_then(Value::as_object_mut) else {
        return;
    };
    let keys: Vec<String> = map.keys().cloned().collect();
    let nth = |i: u32| keys.get(i as usize % keys.len().max(1)).cloned();
    // The token text and the id of the map's `i`-th entry.
    let entry = |i: u32| -> Option<(String, Value)> {
        let k = nth(i)?;
        Some(if by_id {
            let content = map[&k]["content"].as_str().unwrap_or("").to_owned();
            (content, Value::from(k))
        } else {
            (k.clone(), map[&k].clone())
        })
    };
    let id_value = |id: &Id, old: Option<&Value>| -> Value {
        match id {
            Id::N(n) => Value::from(*n),
            Id::Uint(u) => Value::from(*u),
            Id::Float(f) => float(*f),
            Id::Str(s) => Value::from(*s),
            Id::Existing(i) => entry(*i).map_or(Value::Null, |(_, v)| v),
            Id::Adjust(d) => {
                let old = old
                    .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
                    .unwrap_or(0);
                number(i128::from(old) + i128::from(*d))
            }
        }
    };
    // In `added_tokens_decoder` an id is a key: a string.
    let as_key = |v: Value| match v {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let text = |t: &Tok| -> String {
        match t {
            Tok::Named(s) => (*s).to_owned(),
            Tok::Existing(i) => entry(*i).map_or_else(String::new, |(c, _)| c),
            Tok::Concat(a, b) => {
                let a = entry(*a).map_or_else(String::new, |(c, _)| c);
                let b = entry(*b).map_or_else(String::new, |(c, _)| c);
                a + &b
            }
            Tok::Long(n) => "<|".to_owned() + &"y".repeat(usize::from(*n)) + "|>",
        }
    };
    let _ = snapshot;
    match e {
        TokenEdit::SetId { token, id } => {
            let Some(k) = nth(*token) else { return };
            if by_id {
                let new = as_key(id_value(id, Some(&Value::from(k.clone()))));
                if let Some(v) = map.remove(&k) {
                    map.insert(new, v);
                }
            } else {
                let old = map.get(&k).cloned();
                let v = id_value(id, old.as_ref());
                map.insert(k, v);
            }
        }
        TokenEdit::Drop { token } => {
            if let Some(k) = nth(*token) {
                map.remove(&k);
            }
        }
        TokenEdit::Add {
            content,
            id,
            special,
        } => {
            let content = text(content);
            let v = id_value(id, None);
            if by_id {
                let entry = serde_json::json!({
                    "content": content, "lstrip": false, "normalized": false,
                    "rstrip": false, "single_word": false, "special": special,
                });
                map.insert(as_key(v), entry);
            } else {
                map.insert(content, v);
            }
        }
    }
}

fn line_edit_apply(e: &LineEdit, bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let n = lines.len();
    let i = |k: u32| k as usize % n;
    let half = |k: u32, right: bool| -> String {
        let l = &lines[i(k)];
        let mut parts = l.splitn(2, ' ');
        let left = parts.next().unwrap_or("");
        let r = parts.next().unwrap_or("");
        (if right { r } else { left }).to_owned()
    };
    let line = |l: &Line| match l {
        Line::Named(s) => (*s).to_owned(),
        Line::Mix(a, b) => format!("{} {}", half(*a, false), half(*b, true)),
    };
    match e {
        LineEdit::Delete(k) => {
            lines.remove(i(*k));
        }
        LineEdit::Dup(k) => {
            let l = lines[i(*k)].clone();
            lines.insert(i(*k), l);
        }
        LineEdit::Swap(a, b) => lines.swap(i(*a), i(*b)),
        LineEdit::Replace(k, l) => {
            let new = line(l);
            lines[i(*k)] = new;
        }
        LineEdit::Insert(k, l) => {
            let new = line(l);
            lines.insert(i(*k), new);
        }
    }
    lines.join("\n").into_bytes()
}
