//! Whole-component snapshots of the generated code (reviewed with `cargo insta review`):
//! both parity blocks at the tiny config, and the whole module of the real config at
//! res = 1024 (what `specialize!(res = 1024)` expands to). Same calls as the macro's
//! `expand`: qwen-graph builds and runs the passes, graph-codegen emits and formats.

use graph_codegen::{generate_string, Shared, Spec};
use graph_dsl::passes::CfgJoin;
use qwen_graph::{build, build_shared, shared_module, Built, ConfigName, Request};

fn built(width: usize, height: usize, config: ConfigName) -> Built {
    built_cfg(width, height, config, CfgJoin::Batched)
}

fn built_cfg(width: usize, height: usize, config: ConfigName, cfg: CfgJoin) -> Built {
    build(&Request {
        width,
        height,
        config,
        cfg,
    })
    .unwrap()
}

fn spec(module: &str, b: &Built) -> Spec {
    Spec {
        module: module.into(),
        title: b.title.clone(),
        consts: b.consts.clone(),
        shared: None,
    }
}

/// Replace long byte-string tables by their length and an FNV-1a hash, so the snapshot
/// stays readable and still changes when a table does.
fn elide_tables(code: &str) -> String {
    let mut out = String::new();
    for line in code.lines() {
        match (line.find("b\""), line.rfind('"')) {
            (Some(s), Some(e)) if e > s + 200 => {
                let body = &line[s + 2..e];
                let h = body.bytes().fold(0xcbf29ce484222325u64, |h, b| {
                    (h ^ b as u64).wrapping_mul(0x100000001b3)
                });
                out.push_str(&format!(
                    "{}b\"<{} escaped chars, fnv1a {h:016x}>\"{}",
                    &line[..s],
                    body.len(),
                    &line[e + 1..]
                ));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[test]
fn tiny_dual_stream_block() {
    let b = built(96, 64, ConfigName::Tiny);
    let block = b.graphs[1].blocks["dual_stream_block"].clone();
    let code = generate_string(&spec("res96x64_tiny", &b), &[block]).unwrap();
    insta::assert_snapshot!("tiny_dual_stream_block", code);
}

#[test]
fn tiny_split_dual_stream_block() {
    let b = built_cfg(96, 64, ConfigName::Tiny, CfgJoin::SplitHalves);
    let block = b.graphs[1].blocks["dual_stream_block"].clone();
    let code = generate_string(&spec("res96x64_tiny_split", &b), &[block]).unwrap();
    insta::assert_snapshot!("tiny_split_dual_stream_block", code);
}

#[test]
fn tiny_vae_residual_block() {
    let b = build_shared(ConfigName::Tiny).unwrap();
    let vae = b
        .graphs
        .iter()
        .find(|g| g.name == "vae_up1_resnet0")
        .unwrap()
        .clone();
    let code = generate_string(&spec("shared_tiny", &b), &[vae]).unwrap();
    insta::assert_snapshot!("tiny_vae_up1_resnet0", code);
}

/// What `specialize!(res = 1024)` expands to.
#[test]
fn real_res1024_module() {
    let b = built(1024, 1024, ConfigName::Real);
    let mut s = spec("res1024", &b);
    s.shared = Some(Shared {
        path: format!("super::{}", shared_module(ConfigName::Real)),
        graphs: build_shared(ConfigName::Real).unwrap().graphs,
    });
    let code = generate_string(&s, &b.graphs).unwrap();
    assert!(code.contains("pub const IMG_TOKENS: usize = 4096;"));
    assert!(code.contains("pub use super::shared::vae_resblock_384_384;"));
    assert!(!code.contains("pub fn text_encoder"));
    insta::assert_snapshot!("real_res1024_module", elide_tables(&code));
}

/// What `specialize!(shared)` expands to.
#[test]
fn real_shared_module() {
    let b = build_shared(ConfigName::Real).unwrap();
    let code = generate_string(&spec("shared", &b), &b.graphs).unwrap();
    insta::assert_snapshot!("real_shared_module", code);
}

#[test]
fn generation_is_deterministic() {
    let a = built(96, 64, ConfigName::Tiny);
    let b = built(96, 64, ConfigName::Tiny);
    let ca = generate_string(&spec("m", &a), &a.graphs).unwrap();
    let cb = generate_string(&spec("m", &b), &b.graphs).unwrap();
    assert_eq!(ca, cb);
}
