//! Every panic the targets found, kept as the case that gave it (as proptest shrank it), run
//! through the same target function: each must return, `Ok` or `Err`, without a panic.

use std::panic::{self, AssertUnwindSafe};

use crate::folder::Folder;
use crate::mutate::{Edit, Id, Op, Tok, TokenEdit};
use crate::{prompts, tokenizer_run};

/// `tokenizer` target, FUZZ_SEED=1002 (build with overflow checks, as `cargo test` is): an
/// added token with id 4294967295 (u32::MAX) in `tokenizer_config.json` panics in
/// `Tokenizer::from_dir` with "attempt to add with overflow" in tokenizers 0.22.2
/// (`AddedVocabulary::add_tokens` computes the next free id as the largest added id + 1). In
/// a release build the sum wraps silently.
#[test]
fn added_token_with_id_u32_max() {
    let folder = Folder::new(false, false);
    let edit = Edit {
        file: "tokenizer/tokenizer_config.json".into(),
        op: Op::Token(TokenEdit::Add {
            content: Tok::Named("<|endoftext|><|endoftext|>"),
            id: Id::N(4_294_967_295),
            special: true,
        }),
    };
    tokenizer_run(&folder, &[edit], &folder.files, &prompts());
}

/// The tokenizer target on a folder whose `rel` is its pristine text with `from` replaced by
/// `to`.
fn tokenizer_with(folder: &Folder, rel: &str, from: &str, to: &str) {
    let text = String::from_utf8(folder.pristine_bytes(rel).to_vec()).unwrap();
    assert!(text.contains(from), "`{from}` is not in {rel}");
    let changed = folder.replace(rel, text.replacen(from, to, 1).as_bytes());
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        tokenizer_run(folder, &[], &[], &prompts())
    }));
    folder.restore(&changed);
    if let Err(payload) = outcome {
        panic::resume_unwind(payload);
    }
}

/// `tokenizer` target, FUZZ_SEED=1002: any json syntax error inside the `decoder` object of a
/// `tokenizer.json` panics in `Tokenizer::from_dir` (tokenizers 0.22.2,
/// `decoders/mod.rs:90`: `DecoderHelper::deserialize(..).expect("Helper")`) instead of
/// giving a json error. Found as truncations, deleted bytes and bad literals there.
#[test]
fn tokenizer_json_with_a_syntax_error_in_the_decoder() {
    let folder = Folder::new(false, true);
    tokenizer_with(
        &folder,
        "tokenizer/tokenizer.json",
        "\"decoder\": {",
        "\"decoder\": {,",
    );
}

/// `tokenizer` target, FUZZ_SEED=1002: a BPE `continuing_subword_prefix` longer than the
/// right half of a merge panics in `Tokenizer::from_dir` (tokenizers 0.22.2,
/// `models/bpe/model.rs:186` slices `&b[prefix_len..]`: "start byte index 2 is out of
/// bounds of `n`").
#[test]
fn tokenizer_json_with_a_long_continuing_subword_prefix() {
    let folder = Folder::new(false, true);
    tokenizer_with(
        &folder,
        "tokenizer/tokenizer.json",
        "\"continuing_subword_prefix\": null",
        "\"continuing_subword_prefix\": \"##\"",
    );
}
