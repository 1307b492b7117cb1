//! The tokenizer against `tests/fixtures/references/tokens.safetensors` (transformers'
//! `Qwen2Tokenizer` on the templated prompts) and `tests/fixtures/tokenizer_check.txt`, in
//! both folder layouts: the fixture's vocab.json + merges.txt, and a tokenizer.json written
//! here from them (the Qwen2 fast tokenizer's serialized form), which must give the same ids.

mod common;

use std::sync::OnceLock;

use common::{fixture_path, Fixture};
use qwen_runtime::tokenizer::{Layout, SPLIT_PATTERN};
use qwen_runtime::{Tokenizer, TokenizerError};
use serde_json::{json, Value};

/// The Qwen-Image prompt template (spec §1.2); the Qwen pipeline will own it.
const TEMPLATE: &str = "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n";
/// Tokens of the system turn and `<|im_start|>user\n`, dropped from the embeddings.
const DROP: usize = 34;
/// `tokenizer_max_length` of the pipeline (1024 + 34).
const MAX_LENGTH: usize = 1058;

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        Tokenizer::from_dir(fixture_path("tiny-qwen-image/tokenizer")).expect("tokenizer loads")
    })
}

/// The fixture's tokenizer as a folder of the other layout: `tokenizer.json` (written from
/// vocab.json, merges.txt and tokenizer_config.json's added tokens, in the shape of Qwen2's
/// published tokenizer.json) and `tokenizer_config.json`, nothing else.
fn json_layout() -> &'static (tempfile::TempDir, Tokenizer) {
    static JSON: OnceLock<(tempfile::TempDir, Tokenizer)> = OnceLock::new();
    JSON.get_or_init(|| {
        let src = fixture_path("tiny-qwen-image/tokenizer");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer.json"),
            qwen2_tokenizer_json(&src).to_string(),
        )
        .unwrap();
        let config = "tokenizer_config.json";
        std::fs::copy(src.join(config), dir.path().join(config)).unwrap();
        let tok = Tokenizer::from_dir(dir.path()).expect("tokenizer.json loads");
        (dir, tok)
    })
}

/// A tokenizer.json as Qwen2's fast tokenizer serializes itself, from the slow files of `src`.
fn qwen2_tokenizer_json(src: &std::path::Path) -> Value {
    let read = |name: &str| std::fs::read_to_string(src.join(name)).unwrap();
    let vocab: Value = serde_json::from_str(&read("vocab.json")).unwrap();
    let merges: Vec<Value> = read("merges.txt")
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.is_empty())
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            json!([a, b])
        })
        .collect();
    let config: Value = serde_json::from_str(&read("tokenizer_config.json")).unwrap();
    let added: Vec<Value> = config["added_tokens_decoder"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, t)| {
            let mut t = t.clone();
            t["id"] = json!(id.parse::<u32>().unwrap());
            t
        })
        .collect();
    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false
    });
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN},
             "behavior": "Isolated", "invert": false},
            byte_level,
        ]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": "", "end_of_word_suffix": "",
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    })
}

fn templated(prompt: &str) -> String {
    TEMPLATE.replacen("{}", prompt, 1)
}

fn to_u32(v: &[i64]) -> Vec<u32> {
    v.iter().map(|&x| u32::try_from(x).unwrap()).collect()
}

fn prompts(tokens: &Fixture) -> Vec<String> {
    serde_json::from_str(&tokens.metadata()["prompts"]).unwrap()
}

#[test]
fn every_reference_prompt_encodes_to_the_reference_ids() {
    let tok = tokenizer();
    let tokens = Fixture::reference("tokens.safetensors");
    let meta = tokens.metadata();
    assert_eq!(meta["template"], TEMPLATE);
    assert_eq!(meta["drop_idx"], DROP.to_string());
    assert_eq!(meta["tokenizer_max_length"], MAX_LENGTH.to_string());
    let lengths: Vec<serde_json::Value> = serde_json::from_str(&meta["lengths"]).unwrap();
    let prompts = prompts(&tokens);
    assert_eq!(prompts.len(), 10);

    let pad: u32 = meta["pad_token_id"].parse().unwrap();
    assert_eq!(tok.token_id("<|endoftext|>"), Some(pad));
    let (batch_shape, batch_ids) = tokens.i64("batch.input_ids");
    let (_, batch_mask) = tokens.i64("batch.attention_mask");
    assert_eq!(batch_shape, [10, MAX_LENGTH]);

    for (i, prompt) in prompts.iter().enumerate() {
        let ids = tok.encode(&templated(prompt)).unwrap();
        let untruncated = lengths[i]["templated_untruncated"].as_u64().unwrap() as usize;
        assert_eq!(ids.len(), untruncated, "prompt {i}: untruncated length");

        // The pipeline truncates on the right to 1058 tokens.
        let truncated = &ids[..ids.len().min(MAX_LENGTH)];
        let (shape, want) = tokens.i64(&format!("prompt.{i}.input_ids"));
        assert_eq!(shape, [1, truncated.len()], "prompt {i}");
        assert_eq!(truncated, to_u32(&want), "prompt {i}: {prompt:?}");
        let (_, mask) = tokens.i64(&format!("prompt.{i}.attention_mask"));
        assert!(mask.iter().all(|&m| m == 1), "prompt {i}");

        // In the padded batch: the ids, then the pad id with mask 0.
        let row = &batch_ids[i * MAX_LENGTH..(i + 1) * MAX_LENGTH];
        let row_mask = &batch_mask[i * MAX_LENGTH..(i + 1) * MAX_LENGTH];
        let n = truncated.len();
        assert_eq!(&to_u32(&row[..n]), truncated, "batch row {i}");
        assert!(
            row[n..].iter().all(|&x| x == i64::from(pad)),
            "batch row {i}"
        );
        assert!(row_mask[..n].iter().all(|&m| m == 1));
        assert!(row_mask[n..].iter().all(|&m| m == 0));
    }
    // The over-long prompt: 4129 tokens before truncation, 1024 after the drop.
    assert_eq!(lengths[9]["templated_untruncated"], 4129);
    assert_eq!(lengths[9]["after_drop"], MAX_LENGTH - DROP);
}

#[test]
fn system_prefix_is_the_34_reference_tokens() {
    let tok = tokenizer();
    let tokens = Fixture::reference("tokens.safetensors");
    let (shape, system) = tokens.i64("template.system_ids");
    assert_eq!(shape, [1, DROP]);
    let system = to_u32(&system);

    // The ids also written out in tokenizer_check.txt.
    let check = std::fs::read_to_string(fixture_path("tokenizer_check.txt")).unwrap();
    let listed = |prefix: &str| -> Vec<u32> {
        let line = check.lines().find(|l| l.starts_with(prefix)).unwrap();
        let list = &line[line.find('[').unwrap() + 1..line.find(']').unwrap()];
        list.split(", ").map(|x| x.parse().unwrap()).collect()
    };
    assert_eq!(listed("system part ids:"), system);

    let prefix_text = &TEMPLATE[..TEMPLATE.find("{}").unwrap()];
    assert_eq!(tok.encode(prefix_text).unwrap(), system);
    let empty = tok.encode(&templated("")).unwrap();
    assert_eq!(empty.len(), 39);
    assert_eq!(empty[..DROP], system[..]);
    assert_eq!(
        empty[DROP..],
        listed("suffix ids (<|im_end|>\\n<|im_start|>assistant\\n):")[..]
    );
}

#[test]
fn added_tokens_keep_their_ids_and_decode_round_trips() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 151_665);
    for (text, id) in [
        ("<|im_start|>", 151_644),
        ("<|im_end|>", 151_645),
        ("<|vision_start|>", 151_652),
        ("<|image_pad|>", 151_655),
        ("<tool_call>", 151_657),
        ("<|file_sep|>", 151_664),
    ] {
        assert_eq!(tok.encode(text).unwrap(), [id], "{text}");
        assert_eq!(tok.decode(&[id]).unwrap(), text);
    }
    let tokens = Fixture::reference("tokens.safetensors");
    for prompt in prompts(&tokens) {
        let text = templated(&prompt);
        assert_eq!(tok.decode(&tok.encode(&text).unwrap()).unwrap(), text);
    }
    // NFC first: "e" + combining acute encodes as the precomposed "é".
    assert_eq!(
        tok.encode("caf\u{65}\u{301}").unwrap(),
        tok.encode("caf\u{e9}").unwrap()
    );
    assert!(matches!(
        tok.decode(&[151_665]),
        Err(TokenizerError::UnknownId { id: 151_665, .. })
    ));
}

fn write_folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn a_small_folder_builds_and_bad_files_are_named() {
    let vocab = r#"{"a": 0, "b": 1, "ab": 2, "Ġ": 3}"#;
    let ok = write_folder(&[
        ("vocab.json", vocab),
        ("merges.txt", "#version: 0.2\na b\n"),
        ("added_tokens.json", r#"{"<|x|>": 4}"#),
        ("special_tokens_map.json", r#"{"eos_token": "<|x|>"}"#),
    ]);
    let tok = Tokenizer::from_dir(ok.path()).unwrap();
    assert_eq!(tok.encode("ab ab<|x|>").unwrap(), [2, 3, 2, 4]);
    assert_eq!(tok.decode(&[2, 3, 2, 4]).unwrap(), "ab ab<|x|>");

    let missing = write_folder(&[("merges.txt", "a b\n")]);
    let err = Tokenizer::from_dir(missing.path()).unwrap_err();
    assert!(matches!(err, TokenizerError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("vocab.json"), "{err}");

    let bad = write_folder(&[
        ("vocab.json", vocab),
        ("merges.txt", "#version: 0.2\na b\nab\n"),
    ]);
    let err = Tokenizer::from_dir(bad.path()).unwrap_err();
    assert!(
        matches!(err, TokenizerError::Merges { line: 3, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("merges.txt") && msg.contains("line 3"),
        "{msg}"
    );

    let unknown = write_folder(&[("vocab.json", vocab), ("merges.txt", "a c\n")]);
    let msg = Tokenizer::from_dir(unknown.path()).unwrap_err().to_string();
    assert!(msg.contains("line 1") && msg.contains("`c`"), "{msg}");

    let clash = write_folder(&[
        ("vocab.json", vocab),
        ("merges.txt", "a b\n"),
        ("added_tokens.json", r#"{"<|x|>": 2}"#),
    ]);
    let err = Tokenizer::from_dir(clash.path()).unwrap_err();
    assert!(matches!(err, TokenizerError::AddedToken { .. }), "{err}");
    assert!(err.to_string().contains("`ab`"), "{err}");

    let json = write_folder(&[("vocab.json", "{"), ("merges.txt", "")]);
    let err = Tokenizer::from_dir(json.path()).unwrap_err();
    assert!(matches!(err, TokenizerError::Json { .. }), "{err}");
    assert!(err.to_string().starts_with("malformed "), "{err}");
}

#[test]
fn tokenizer_json_gives_the_reference_ids_of_every_prompt() {
    let (files, (_dir, json)) = (tokenizer(), json_layout());
    assert_eq!(files.layout(), Layout::VocabMerges);
    assert_eq!(json.layout(), Layout::TokenizerJson);
    assert_eq!(json.vocab_size(), files.vocab_size());
    assert_eq!(json.max_id(), files.max_id());
    assert_eq!(json.token_id("<|endoftext|>"), Some(151_643));

    let tokens = Fixture::reference("tokens.safetensors");
    let lengths: Vec<Value> = serde_json::from_str(&tokens.metadata()["lengths"]).unwrap();
    let prompts = prompts(&tokens);
    assert_eq!(prompts.len(), 10);
    for (i, prompt) in prompts.iter().enumerate() {
        let text = templated(prompt);
        let ids = json.encode(&text).unwrap();
        assert_eq!(ids, files.encode(&text).unwrap(), "prompt {i}: {prompt:?}");
        let n = lengths[i]["templated_untruncated"].as_u64().unwrap() as usize;
        assert_eq!(ids.len(), n, "prompt {i}");
        let truncated = &ids[..n.min(MAX_LENGTH)];
        let (_, want) = tokens.i64(&format!("prompt.{i}.input_ids"));
        assert_eq!(truncated, to_u32(&want), "prompt {i}: {prompt:?}");
        assert_eq!(json.decode(&ids).unwrap(), text, "prompt {i}");
    }
    // The over-long prompt: not truncated by the tokenizer either way.
    assert_eq!(json.encode(&templated(&prompts[9])).unwrap().len(), 4129);
    let (_, system) = tokens.i64("template.system_ids");
    let prefix_text = &TEMPLATE[..TEMPLATE.find("{}").unwrap()];
    assert_eq!(json.encode(prefix_text).unwrap(), to_u32(&system));
    for text in [
        "<|im_start|>",
        "<|image_pad|>",
        "<|file_sep|>",
        "caf\u{65}\u{301}",
        "",
    ] {
        assert_eq!(
            json.encode(text).unwrap(),
            files.encode(text).unwrap(),
            "{text:?}"
        );
    }
}

/// The runtime's own tokenizer, serialized, loads back as the same tokenizer; a
/// tokenizer.json asking for truncation and padding gets neither.
#[test]
fn serialized_tokenizer_round_trips_without_truncation_or_padding() {
    let files = tokenizer();
    let mut value: Value = serde_json::from_str(&files.to_json().unwrap()).unwrap();
    value["truncation"] = json!({
        "direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0
    });
    value["padding"] = json!({
        "strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": null,
        "pad_id": 151643, "pad_type_id": 0, "pad_token": "<|endoftext|>"
    });
    let dir = write_folder(&[("tokenizer.json", &value.to_string())]);
    let back = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(back.layout(), Layout::TokenizerJson);
    let tokens = Fixture::reference("tokens.safetensors");
    for prompt in prompts(&tokens) {
        let text = templated(&prompt);
        assert_eq!(back.encode(&text).unwrap(), files.encode(&text).unwrap());
    }
}

#[test]
fn tokenizer_json_wins_over_vocab_and_merges() {
    let vocab = r#"{"a": 0, "b": 1, "ab": 2, "Ġ": 3}"#;
    let slow = write_folder(&[("vocab.json", vocab), ("merges.txt", "a b\n")]);
    let mut value: Value =
        serde_json::from_str(&Tokenizer::from_dir(slow.path()).unwrap().to_json().unwrap())
            .unwrap();
    // The same model with "ab" at id 7: the ids show which file was read.
    value["model"]["vocab"] = json!({"a": 0, "b": 1, "ab": 7, "Ġ": 3});
    let both = write_folder(&[
        ("vocab.json", vocab),
        ("merges.txt", "a b\n"),
        ("tokenizer.json", &value.to_string()),
    ]);
    let tok = Tokenizer::from_dir(both.path()).unwrap();
    assert_eq!(tok.layout(), Layout::TokenizerJson);
    assert_eq!(tok.encode("ab ab").unwrap(), [7, 3, 7]);
    assert_eq!(tok.max_id(), Some(("ab", 7)));

    // A broken tokenizer.json is an error, not a fall back to the other files.
    let broken = write_folder(&[
        ("vocab.json", vocab),
        ("merges.txt", "a b\n"),
        ("tokenizer.json", "{"),
    ]);
    let err = Tokenizer::from_dir(broken.path()).unwrap_err();
    assert!(matches!(err, TokenizerError::Json { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

/// A folder's files: (name, text).
type Files<'a> = &'a [(&'a str, &'a str)];

/// Each bad folder: its files, what the error must name, how the error starts.
#[test]
fn empty_or_malformed_files_are_one_error_naming_the_file() {
    let vocab = r#"{"a": 0, "b": 1, "ab": 2, "Ġ": 3}"#;
    let good_json =
        Tokenizer::from_dir(write_folder(&[("vocab.json", vocab), ("merges.txt", "a b\n")]).path())
            .unwrap()
            .to_json()
            .unwrap();
    let mut no_merges: Value = serde_json::from_str(&good_json).unwrap();
    no_merges["model"]["merges"] = json!([]);
    let no_merges = no_merges.to_string();
    let mut no_vocab: Value = serde_json::from_str(&good_json).unwrap();
    no_vocab["model"] = json!({"type": "WordLevel", "vocab": {}, "unk_token": "<unk>"});
    no_vocab["added_tokens"] = json!([]);
    let mut wrong_added: Value = serde_json::from_str(&good_json).unwrap();
    wrong_added["added_tokens"] = json!([{"id": 4, "content": "<|x|>", "single_word": false,
        "lstrip": false, "rstrip": false, "normalized": false, "special": true}]);
    let wrong_added = wrong_added.to_string();
    let no_vocab = no_vocab.to_string();
    let config = r#"{"added_tokens_decoder": {"5": {"content": "<|x|>", "special": true}}}"#;

    let cases: &[(Files, &str, &str)] = &[
        (
            &[("vocab.json", vocab), ("merges.txt", "")],
            "merges.txt",
            "tokenizer file ",
        ),
        (
            &[("vocab.json", vocab), ("merges.txt", "#version: 0.2\n\n")],
            "merges.txt",
            "tokenizer file ",
        ),
        (
            &[("vocab.json", ""), ("merges.txt", "a b\n")],
            "vocab.json",
            "tokenizer file ",
        ),
        (
            &[("vocab.json", "{}"), ("merges.txt", "a b\n")],
            "vocab.json",
            "tokenizer file ",
        ),
        (
            &[("vocab.json", "[1]"), ("merges.txt", "a b\n")],
            "vocab.json",
            "malformed ",
        ),
        (
            &[("vocab.json", vocab), ("merges.txt", "a\n")],
            "merges.txt",
            "malformed ",
        ),
        (
            &[("vocab.json", vocab)],
            "merges.txt",
            "tokenizer file not found",
        ),
        (
            &[("tokenizer.json", "")],
            "tokenizer.json",
            "tokenizer file ",
        ),
        (
            &[("tokenizer.json", "{\"model\": ")],
            "tokenizer.json",
            "malformed ",
        ),
        (&[("tokenizer.json", "{}")], "tokenizer.json", "malformed "),
        (&[("tokenizer.json", "[]")], "tokenizer.json", "malformed "),
        (
            &[("tokenizer.json", &no_merges)],
            "tokenizer.json",
            "tokenizer file ",
        ),
        (
            &[("tokenizer.json", &no_vocab)],
            "tokenizer.json",
            "tokenizer file ",
        ),
        (
            &[
                ("tokenizer.json", &wrong_added),
                ("tokenizer_config.json", config),
            ],
            "tokenizer.json",
            "bad added token",
        ),
        (
            &[
                ("tokenizer.json", &good_json),
                ("tokenizer_config.json", ""),
            ],
            "tokenizer_config.json",
            "tokenizer file ",
        ),
        (&[("README.md", "hi")], "no tokenizer in", "no tokenizer in"),
    ];
    for (files, file, start) in cases {
        let dir = write_folder(files);
        let err = Tokenizer::from_dir(dir.path()).unwrap_err();
        let msg = err.to_string();
        let names: Vec<&str> = files.iter().map(|f| f.0).collect();
        assert!(msg.starts_with(start), "{names:?}: {msg}");
        assert!(msg.contains(file), "{names:?}: {msg}");
        assert_eq!(msg.lines().count(), 1, "{names:?}: {msg}");
    }

    // A FIFO is refused, not opened (opening one would block).
    let dir = write_folder(&[("merges.txt", "a b\n")]);
    let fifo = dir.path().join("vocab.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(
        matches!(err, TokenizerError::NotRegularFile { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("vocab.json"), "{err}");
}
