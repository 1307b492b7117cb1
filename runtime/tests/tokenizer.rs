//! The tokenizer against `tests/fixtures/references/tokens.safetensors` (transformers'
//! `Qwen2Tokenizer` on the templated prompts) and `tests/fixtures/tokenizer_check.txt`.

mod common;

use std::sync::OnceLock;

use common::{fixture_path, Fixture};
use qwen_runtime::{Tokenizer, TokenizerError};

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
        ("merges.txt", ""),
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
