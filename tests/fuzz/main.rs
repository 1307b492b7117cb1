//! Fuzz targets for everything a model folder feeds the runtime (issue 9), on stable Rust
//! with proptest: each case applies a few drawn edits to the real bytes of
//! `tests/fixtures/tiny-qwen-image` (a copy in a tempdir, see `folder.rs`; the edits in
//! `mutate.rs`), calls the public API and asks only that it returns, `Ok` or `Err`, without a
//! panic, an abort or a hang.
//!
//! - `loader`: `Checkpoint::open` of a component folder, an index or one shard, then `check`
//!   against the pristine checkpoint's specs and `array` of every tensor.
//! - `tokenizer`: `Tokenizer::from_dir`, then `encode` (and `decode`) of a few prompts.
//! - `configs`: `SchedulerConfig::from_file` + `schedule`, `detect_config`, and
//!   `Pipeline::open` for the configs only it reads (see `configs_run`).
//! - `model_folder`: one edit of any file of the folder, then `Pipeline::open` at 96x64, f32.
//!
//! `cargo test --test fuzz` runs a short run of each (the CI run). A long run by hand:
//! `FUZZ_CASES=250000 cargo test --release --test fuzz loader -- --nocapture` (see
//! `tests/fuzz/README.md`). A panic is reported with the case that caused it, shrunk by
//! proptest; an abort or a hang ends the process, so the case about to run is always in
//! `target/tmp/fuzz-<target>.case` (a hang of `FUZZ_HANG_SECS`, default 300, aborts).

mod folder;
mod mutate;
mod regressions;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mlx_rs::Dtype;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use qwen::pipeline::{detect_config, format_prompt, Options, Pipeline};
use qwen_runtime::{Checkpoint, Extra, SchedulerConfig, TensorSpec, Tokenizer};

use folder::Folder;
use mutate::{Edit, Kind};

// === The runner ===

/// Panics seen by the hook [`quiet_panics`] installs: the panicking thread and
/// "location: message".
static PANICS: Mutex<Vec<(std::thread::ThreadId, String)>> = Mutex::new(Vec::new());

thread_local! {
    /// Whether this thread runs [`fuzz`]: its panics are recorded, not printed.
    static IN_FUZZ: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Replaces the panic hook (once) with one that records each panic in [`PANICS`] instead of
/// printing it, on the threads running [`fuzz`]: shrinking a failure runs the failing code hundreds of times. `FUZZ_VERBOSE=1`
/// prints them too.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        let verbose = std::env::var("FUZZ_VERBOSE").is_ok_and(|v| v == "1");
        panic::set_hook(Box::new(move |info| {
            if verbose || !IN_FUZZ.get() {
                default(info);
            }
            let at = info
                .location()
                .map_or_else(String::new, |l| format!("{}:{}", l.file(), l.line()));
            let message = payload_text(info.payload());
            let mut panics = PANICS.lock().unwrap_or_else(|e| e.into_inner());
            panics.push((std::thread::current().id(), format!("{at}: {message}")));
            if panics.len() > 256 {
                panics.drain(..128);
            }
        }));
    });
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// The first panic recorded on this thread since `from` (the original one when a panic was
/// caught and raised again), else the last one of any thread (a panic in a thread the target
/// spawned), else `payload`.
fn first_panic(from: usize, payload: &(dyn std::any::Any + Send)) -> String {
    let panics = PANICS.lock().unwrap_or_else(|e| e.into_inner());
    let me = std::thread::current().id();
    let recent = &panics[from.min(panics.len())..];
    recent
        .iter()
        .find(|(t, _)| *t == me)
        .or(recent.last())
        .map_or_else(|| payload_text(payload), |(_, m)| m.clone())
}

/// What tells panics apart: the location (`file:line`) and the message with its numbers
/// blanked (a serde error's line and column, an index), cut at 100 characters.
fn signature(message: &str) -> String {
    let (at, text) = message.split_once(": ").unwrap_or(("", message));
    let mut out = String::new();
    for c in text.chars().take(100) {
        if c.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else {
            out.push(c);
        }
    }
    format!("{at}: {out}")
}

/// Runs `target` on `cases` drawn cases (`FUZZ_CASES`, else `short`), seeded by `FUZZ_SEED`
/// (else a fixed seed for the short run and a random one for a long run). Each case returns
/// an outcome label; the counts of each are printed with the rate.
///
/// A panic fails the run with the case proptest shrank it to. With `FUZZ_CONTINUE=1` the run
/// goes on instead: each distinct panic (location and message) is kept with the first case
/// that gave it (also written to `target/tmp/fuzz-<target>-crash-<n>.case`), and the run
/// fails at the end listing them all.
fn fuzz<S>(name: &str, short: u32, strategy: S, target: impl Fn(&S::Value) -> String)
where
    S: Strategy,
    S::Value: Debug,
{
    quiet_panics();
    IN_FUZZ.set(true);
    let var = |k: &str| std::env::var(k).ok();
    let long = var("FUZZ_CASES");
    let cases = long
        .as_deref()
        .map_or(short, |n| n.parse().expect("FUZZ_CASES is a number"));
    let seed: u64 = match var("FUZZ_SEED") {
        Some(s) => s.parse().expect("FUZZ_SEED is a number"),
        None if long.is_some() => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
        None => 9,
    };
    let keep_going = var("FUZZ_CONTINUE").is_some_and(|v| v == "1");
    let hang = Duration::from_secs(
        var("FUZZ_HANG_SECS").map_or(300, |s| s.parse().expect("FUZZ_HANG_SECS")),
    );
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let case_file = tmp.join(format!("fuzz-{name}.case"));
    eprintln!(
        "fuzz {name}: {cases} cases, FUZZ_SEED={seed}; the case running is in {}",
        case_file.display()
    );

    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2000,
        max_global_rejects: cases,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );

    // Watchdog: a case running longer than `hang` is reported and the process aborted.
    let start = Instant::now();
    let case_start = Arc::new(AtomicU64::new(u64::MAX));
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (case_start, done, case_file, name) = (
            case_start.clone(),
            done.clone(),
            case_file.clone(),
            name.to_owned(),
        );
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let at = case_start.load(Ordering::Relaxed);
                let now = start.elapsed().as_millis() as u64;
                if at != u64::MAX && now.saturating_sub(at) > hang.as_millis() as u64 {
                    let case = std::fs::read_to_string(&case_file).unwrap_or_default();
                    eprintln!("fuzz {name}: a case ran over {hang:?} (a hang):\n{case}");
                    std::process::abort();
                }
            }
        })
    };

    let executions = AtomicU64::new(0);
    let outcomes: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
    // Distinct panics: message -> (count, first case).
    let crashes: Mutex<BTreeMap<String, (u64, String)>> = Mutex::new(BTreeMap::new());
    let last_report = Mutex::new(Instant::now());
    let result = runner.run(&strategy, |case| {
        let shown = format!("{case:#?}");
        std::fs::write(&case_file, format!("FUZZ_SEED={seed}\n{shown}\n")).unwrap();
        let from = PANICS.lock().unwrap_or_else(|e| e.into_inner()).len();
        case_start.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| target(&case)));
        case_start.store(u64::MAX, Ordering::Relaxed);
        let n = executions.fetch_add(1, Ordering::Relaxed) + 1;
        if long.is_some() {
            let mut last = last_report.lock().unwrap();
            if last.elapsed() > Duration::from_secs(60) {
                *last = Instant::now();
                let s = start.elapsed().as_secs_f64();
                let c = crashes.lock().unwrap().len();
                eprintln!(
                    "fuzz {name}: {n} executions, {s:.0} s, {:.0}/s, {c} distinct panics",
                    n as f64 / s
                );
            }
        }
        match outcome {
            Ok(label) => {
                *outcomes.lock().unwrap().entry(label).or_default() += 1;
                Ok(())
            }
            Err(payload) => {
                let message = first_panic(from, payload.as_ref());
                if !keep_going {
                    return Err(TestCaseError::fail(format!("panicked at {message}")));
                }
                let mut crashes = crashes.lock().unwrap();
                let k = crashes.len();
                let entry = crashes.entry(signature(&message)).or_insert_with(|| {
                    let file = tmp.join(format!("fuzz-{name}-crash-{k}.case"));
                    let text = format!("FUZZ_SEED={seed}\npanicked at {message}\n{shown}\n");
                    std::fs::write(&file, text).unwrap();
                    eprintln!("fuzz {name}: new panic at {message} ({})", file.display());
                    (0, shown)
                });
                entry.0 += 1;
                Ok(())
            }
        }
    });
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    IN_FUZZ.set(false);

    let n = executions.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    let outcomes = outcomes.into_inner().unwrap();
    let mut top: Vec<(&String, &u64)> = outcomes.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    let shown: Vec<String> = top
        .iter()
        .take(12)
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    let crashes = crashes.into_inner().unwrap();
    let crashed: u64 = crashes.values().map(|(c, _)| c).sum();
    eprintln!(
        "fuzz {name}: {n} executions in {secs:.1} s ({:.0}/s, {:.2} ms each), {crashed} panicked, FUZZ_SEED={seed}\n  outcomes: {}",
        n as f64 / secs,
        1000.0 * secs / n.max(1) as f64,
        shown.join(", ")
    );
    match result {
        Ok(()) if crashes.is_empty() => {}
        Ok(()) => {
            let list: Vec<String> = crashes
                .iter()
                .map(|(m, (count, case))| {
                    format!("{count} cases panicked at {m}\nfirst case:\n{case}")
                })
                .collect();
            panic!(
                "fuzz {name}: {} distinct panics (FUZZ_SEED={seed}):\n{}",
                crashes.len(),
                list.join("\n")
            )
        }
        Err(TestError::Fail(reason, case)) => {
            panic!("fuzz {name}: {reason}\nminimal case (FUZZ_SEED={seed}):\n{case:#?}")
        }
        Err(TestError::Abort(reason)) => panic!("fuzz {name}: aborted: {reason}"),
    }
}

/// A short label for an error: its variant name (`Corrupt`, `Weights/Truncated`, ...).
/// Formatting it (`Display` and `Debug`) is part of every target.
fn label(error: &dyn std::error::Error) -> String {
    let _ = error.to_string();
    let debug = format!("{error:?}");
    let variant = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut label = variant(&debug);
    // One level down for wrapping variants (`Weights { component: .., error: Corrupt .. }`).
    if let Some(i) = debug.find("error: ") {
        label = format!("{label}/{}", variant(&debug[i + 7..]));
    }
    let mut source = error.source();
    while let Some(s) = source {
        let _ = s.to_string();
        source = s.source();
    }
    label
}

fn files_weighted(folder: &Folder, keep: impl Fn(&str) -> Option<u32>) -> Vec<(String, u32)> {
    folder
        .files
        .iter()
        .filter_map(|f| keep(f).map(|w| (f.clone(), w)))
        .collect()
}

fn edits(files: &[(String, u32)], n: std::ops::RangeInclusive<usize>) -> BoxedStrategy<Vec<Edit>> {
    let files: Vec<(&str, u32)> = files.iter().map(|(f, w)| (f.as_str(), *w)).collect();
    vec(mutate::edit(&files), n).boxed()
}

/// Files of a few MiB (two text encoder shards, the VAE) are drawn less often: a case that
/// edits one writes all of it.
fn big(folder: &Folder, file: &str) -> bool {
    folder.pristine_bytes(file).len() > 1 << 20
}

// === 1. loader ===

#[derive(Clone, Debug)]
struct LoaderCase {
    /// What `Checkpoint::open` gets: a component folder, its index, or one shard.
    open: String,
    edits: Vec<Edit>,
}

/// What the edits may touch for `open`: the shard itself, or the component's checkpoint files.
fn loader_files(folder: &Folder, open: &str) -> Vec<String> {
    if open.ends_with(".safetensors") {
        return vec![open.to_owned()];
    }
    let component = open.split('/').next().unwrap();
    folder
        .files
        .iter()
        .filter(|f| f.starts_with(&format!("{component}/")) && f.contains(".safetensors"))
        .cloned()
        .collect()
}

fn loader_run(folder: &Folder, case: &LoaderCase, expected: &[TensorSpec]) -> String {
    let files = loader_files(folder, &case.open);
    let changed = folder.apply(&case.edits, &files);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let ck = match Checkpoint::open(folder.dir.join(&case.open)) {
            Ok(ck) => ck,
            Err(e) => return format!("open: {}", label(&e)),
        };
        let _ = format!("{ck:?} {}", ck.path().display());
        let names: Vec<String> = ck.names().into_iter().map(str::to_owned).collect();
        for name in &names {
            let _ = (ck.spec(name), ck.file_of(name));
        }
        let mut outcome = match ck.check(expected, Extra::Report) {
            Ok(()) => "check ok".to_owned(),
            Err(e) => format!("check: {}", label(&e)),
        };
        if let Err(e) = ck.check(expected, Extra::Allow) {
            label(&e);
        }
        let mut failed = 0;
        for name in &names {
            match ck.array(name) {
                Ok(a) => {
                    a.eval().unwrap();
                    let _ = (a.shape().len(), a.dtype(), a.nbytes());
                }
                Err(e) => {
                    label(&e);
                    failed += 1;
                }
            }
        }
        assert!(ck.array("no.such.tensor").is_err());
        if failed > 0 {
            outcome += &format!(", {failed} arrays refused");
        }
        outcome
    }));
    folder.restore(&changed);
    outcome.unwrap_or_else(|p| panic::resume_unwind(p))
}

/// What `Checkpoint::open` is given, with its relative chance, and the pristine
/// checkpoint's specs for each.
struct LoaderSetup {
    folder: Folder,
    opens: Vec<(String, u32)>,
    specs: BTreeMap<String, Vec<TensorSpec>>,
}

fn loader_setup() -> LoaderSetup {
    let folder = Folder::new(false, false);
    let mut opens: Vec<(String, u32)> = vec![
        ("transformer".into(), 3),
        ("text_encoder".into(), 1),
        ("vae".into(), 1),
    ];
    for f in &folder.files {
        if f.ends_with(".safetensors.index.json") {
            opens.push((f.clone(), if f.starts_with("transformer") { 3 } else { 1 }));
        } else if f.ends_with(".safetensors") {
            opens.push((f.clone(), if big(&folder, f) { 1 } else { 3 }));
        }
    }
    let specs = opens
        .iter()
        .map(|(open, _)| {
            let ck = Checkpoint::open(folder.dir.join(open)).unwrap();
            let specs = ck.names().iter().map(|n| ck.spec(n).unwrap()).collect();
            (open.clone(), specs)
        })
        .collect();
    LoaderSetup {
        folder,
        opens,
        specs,
    }
}

fn loader_strategy(folder: &Folder, opens: &[(String, u32)]) -> impl Strategy<Value = LoaderCase> {
    let choices: Vec<(u32, BoxedStrategy<LoaderCase>)> = opens
        .iter()
        .map(|(open, weight)| {
            let files: Vec<(String, u32)> = loader_files(folder, open)
                .into_iter()
                .map(|f| {
                    let w = if mutate::kind(&f) == Kind::Index {
                        3
                    } else if big(folder, &f) {
                        1
                    } else {
                        2
                    };
                    (f, w)
                })
                .collect();
            let open = open.clone();
            let s = edits(&files, 1..=3)
                .prop_map(move |edits| LoaderCase {
                    open: open.clone(),
                    edits,
                })
                .boxed();
            (*weight, s)
        })
        .collect();
    Union::new_weighted(choices)
}

#[test]
fn loader() {
    let LoaderSetup {
        folder,
        opens,
        specs,
    } = loader_setup();
    let strategy = loader_strategy(&folder, &opens);
    fuzz("loader", 300, strategy, |case| {
        loader_run(&folder, case, &specs[&case.open])
    });
}

// === 2. tokenizer ===

fn prompts() -> Vec<String> {
    vec![
        String::new(),
        "a photo of a cat".into(),
        format_prompt("A red fox in the snow, 35mm, f/1.8 \u{1f98a}"),
        "<|im_start|><|im_end|><|endoftext|><|fuzz_stop|><|new|>".into(),
        "\u{0}\r\n\t  e\u{301} \u{fb01} \u{120}\u{120} \u{65e5}\u{672c}\u{8a9e} 12345 'll 's"
            .into(),
        "x".repeat(3000),
    ]
}

fn tokenizer_run(folder: &Folder, edits: &[Edit], files: &[String], prompts: &[String]) -> String {
    let changed = folder.apply(edits, files);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let tok = match Tokenizer::from_dir(folder.dir.join("tokenizer")) {
            Ok(t) => t,
            Err(e) => return format!("from_dir: {}", label(&e)),
        };
        let _ = (format!("{tok:?}"), tok.max_id(), tok.vocab_size());
        let _ = tok.token_id("<|im_start|>");
        let mut refused = 0;
        for p in prompts {
            match tok.encode(p) {
                Ok(ids) => {
                    if let Err(e) = tok.decode(&ids) {
                        label(&e);
                        refused += 1;
                    }
                }
                Err(e) => {
                    label(&e);
                    refused += 1;
                }
            }
        }
        let _ = tok.decode(&[0, 1, 151_643, u32::MAX]);
        format!("{:?}: encoded, {refused} refused", tok.layout())
    }));
    folder.restore(&changed);
    outcome.unwrap_or_else(|p| panic::resume_unwind(p))
}

/// The tokenizer folder in its two layouts: vocab.json + merges.txt (the fixture's), and the
/// same with the `tokenizer.json` `Tokenizer::to_json` makes of it (that file wins).
#[derive(Clone, Debug)]
struct TokenizerCase {
    tokenizer_json: bool,
    edits: Vec<Edit>,
}

fn tokenizer_files(folder: &Folder) -> Vec<(String, u32)> {
    files_weighted(folder, |f| match f {
        "tokenizer/vocab.json" | "tokenizer/merges.txt" | "tokenizer/tokenizer.json" => Some(3),
        "tokenizer/tokenizer_config.json" | "tokenizer/added_tokens.json" => Some(2),
        f if f.starts_with("tokenizer/") => Some(1),
        _ => None,
    })
}

#[test]
fn tokenizer() {
    let folders = [Folder::new(false, false), Folder::new(false, true)];
    let files = folders.each_ref().map(tokenizer_files);
    let names = files
        .each_ref()
        .map(|f| f.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>());
    let strategy = Union::new_weighted(vec![
        (
            2,
            edits(&files[0], 1..=3)
                .prop_map(|edits| TokenizerCase {
                    tokenizer_json: false,
                    edits,
                })
                .boxed(),
        ),
        (
            1,
            edits(&files[1], 1..=3)
                .prop_map(|edits| TokenizerCase {
                    tokenizer_json: true,
                    edits,
                })
                .boxed(),
        ),
    ]);
    let prompts = prompts();
    fuzz("tokenizer", 200, strategy, |case| {
        let i = usize::from(case.tokenizer_json);
        tokenizer_run(&folders[i], &case.edits, &names[i], &prompts)
    });
}

// === 3. configs ===

#[derive(Clone, Debug)]
struct ConfigCase {
    edits: Vec<Edit>,
    steps: usize,
    image_seq_len: usize,
    static_shift: f64,
}

fn options() -> Options {
    Options {
        resolution: Some("96x64".parse().unwrap()),
        dtype: Dtype::Float32,
        ..Options::default()
    }
}

/// The configs: `scheduler_config.json` through `SchedulerConfig` (every schedule it can
/// give), `transformer/config.json` through `detect_config`, and `model_index.json`,
/// `vae/config.json`, `text_encoder/config.json` through `Pipeline::open`, the one public
/// reader of those. The folder's tokenizer has one token past the text encoder's embedding
/// table ([`folder::STOP_TOKEN`]), so `open` reads and checks every config, opens and checks
/// the weights, reads the tokenizer and then stops with that error, before loading any
/// weight: 1 ms a case instead of 15.
fn configs_run(folder: &Folder, case: &ConfigCase, files: &[String]) -> String {
    let changed = folder.apply(&case.edits, files);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut outcome = Vec::new();
        let sched = folder.dir.join("scheduler/scheduler_config.json");
        match SchedulerConfig::from_file(&sched) {
            Ok(c) => {
                let _ = c.mu(case.image_seq_len);
                let variants = [
                    c.clone(),
                    c.clone().with_static_shift(case.static_shift),
                    c.clone().lightning(),
                ];
                let mut given = 0;
                for v in variants {
                    match v.schedule(case.steps, case.image_seq_len) {
                        Ok(s) => {
                            assert_eq!(s.steps(), case.steps);
                            assert_eq!(s.sigmas.len(), case.steps + 1);
                            for i in 0..s.steps() {
                                let _ = s.dt(i);
                            }
                            given += 1;
                        }
                        Err(e) => {
                            label(&e);
                        }
                    }
                }
                outcome.push(format!("scheduler ok ({given}/3 schedules)"));
            }
            Err(e) => outcome.push(format!("scheduler: {}", label(&e))),
        }
        match detect_config(&folder.dir) {
            Ok(c) => outcome.push(format!("detect {c}")),
            Err(e) => outcome.push(format!("detect: {}", label(&e))),
        }
        match Pipeline::open(&folder.dir, &options()) {
            Ok(_) => outcome.push("open ok".into()),
            Err(e) => outcome.push(format!("open: {}", label(&e))),
        }
        outcome.join(", ")
    }));
    folder.restore(&changed);
    outcome.unwrap_or_else(|p| panic::resume_unwind(p))
}

#[test]
fn configs() {
    let folder = Folder::new(true, false);
    let files = files_weighted(&folder, |f| match f {
        "scheduler/scheduler_config.json" => Some(3),
        "transformer/config.json" | "vae/config.json" | "text_encoder/config.json" => Some(2),
        "model_index.json" => Some(1),
        _ => None,
    });
    let names: Vec<String> = files.iter().map(|(f, _)| f.clone()).collect();
    let strategy = (
        edits(&files, 1..=3),
        prop::sample::select(vec![1usize, 2, 3, 4, 8, 20, 50, 1000]),
        prop::sample::select(vec![0usize, 1, 24, 256, 4096, 8192, 1 << 20, usize::MAX]),
        prop::sample::select(vec![
            0.0,
            1.0,
            3.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            1e308,
            1e-300,
        ]),
    )
        .prop_map(|(edits, steps, image_seq_len, static_shift)| ConfigCase {
            edits,
            steps,
            image_seq_len,
            static_shift,
        });
    fuzz("configs", 200, strategy, |case| {
        configs_run(&folder, case, &names)
    });
}

// === 4. model folder ===

fn model_run(folder: &Folder, edit: &Edit) -> String {
    let changed = folder.apply(std::slice::from_ref(edit), &folder.files);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        match Pipeline::open(&folder.dir, &options()) {
            Ok(p) => format!("opened {}", p.variant().name()),
            Err(e) => format!("open: {}", label(&e)),
        }
    }));
    folder.restore(&changed);
    outcome.unwrap_or_else(|p| panic::resume_unwind(p))
}

#[test]
fn model_folder() {
    let folder = Folder::new(false, false);
    let files = files_weighted(&folder, |f| Some(if big(&folder, f) { 1 } else { 2 }));
    let strategy = {
        let files: Vec<(&str, u32)> = files.iter().map(|(f, w)| (f.as_str(), *w)).collect();
        mutate::edit(&files)
    };
    fuzz("model_folder", 100, strategy, |edit| {
        model_run(&folder, edit)
    });
}
