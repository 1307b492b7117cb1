//! A bad graph is rejected as it is built, with the node, the op and both shapes.

use graph_dsl::{DType, Dim, DslError, GraphBuilder, MaskKind, Shape};

fn b() -> GraphBuilder {
    GraphBuilder::new("t")
}

#[test]
fn linear_with_wrong_in_features() {
    let mut b = b();
    let x = b
        .input("x", [Dim::sym("B"), Dim::Const(8)], DType::F32)
        .unwrap();
    let e = b
        .scope("attn", |b| b.linear("to_q", x, 16, 4, true))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "node `attn.to_q` (linear): shapes [B, 8] and [4, 16] do not fit: x's last dim must equal the weight's `in`"
    );
}

#[test]
fn elementwise_that_does_not_broadcast() {
    let mut b = b();
    let x = b.input("x", [2usize, 3, 8], DType::F32).unwrap();
    let y = b.input("y", [2usize, 5, 8], DType::F32).unwrap();
    let e = b.add(x, y).unwrap_err();
    assert!(
        matches!(&e, DslError::ShapeMismatch { node, .. } if node == "add"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "node `add` (binary): shapes [2, 3, 8] and [2, 5, 8] do not fit: shapes do not broadcast"
    );
}

#[test]
fn concat_off_axis_mismatch() {
    let mut b = b();
    let t = b
        .input(
            "t",
            [Dim::sym("B"), Dim::sym("L_txt"), Dim::Const(8)],
            DType::F32,
        )
        .unwrap();
    let i = b
        .input(
            "i",
            [Dim::sym("B"), Dim::Const(16), Dim::Const(4)],
            DType::F32,
        )
        .unwrap();
    let e = b.concat(&[t, i], 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "node `concat` (concat): shapes [B, L_txt, 8] and [B, 16, 4] do not fit: all dims but axis 1 must agree"
    );
    let i = b
        .input(
            "i2",
            [Dim::sym("B"), Dim::Const(16), Dim::Const(8)],
            DType::F32,
        )
        .unwrap();
    let j = b.concat(&[t, i], 1).unwrap();
    assert_eq!(b.shape(j).to_string(), "[B, L_txt+16, 8]");
}

#[test]
fn gqa_heads_must_divide() {
    let mut b = b();
    let q = b.input("q", [1usize, 6, 10, 8], DType::F32).unwrap();
    let k = b.input("k", [1usize, 4, 10, 8], DType::F32).unwrap();
    let e = b.sdpa(q, k, k, 0.3, MaskKind::None, None).unwrap_err();
    assert!(
        e.to_string().contains("[1, 6, 10, 8] and [1, 4, 10, 8]"),
        "{e}"
    );
    let k = b.input("k2", [1usize, 2, 10, 8], DType::F32).unwrap();
    assert!(b.sdpa(q, k, k, 0.3, MaskKind::Causal, None).is_ok());
}

#[test]
fn conv_channel_mismatch_names_the_conv() {
    let mut b = b();
    let x = b
        .input(
            "x",
            [Dim::sym("B"), Dim::sym("h"), Dim::sym("w"), Dim::Const(3)],
            DType::F32,
        )
        .unwrap();
    let e = b
        .conv2d("decoder.conv_in", x, 16, 32, 3, 1, [(1, 1); 2], true)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "node `decoder.conv_in` (conv2d): shapes [B, h, w, 3] and [32, 3, 3, 16] do not fit: input channels differ"
    );
}

#[test]
fn strided_conv_and_asymmetric_padding() {
    let mut b = b();
    let x = b.input("x", [1usize, 64, 64, 8], DType::F32).unwrap();
    let y = b
        .conv2d("down", x, 8, 8, 3, 2, [(0, 1), (0, 1)], true)
        .unwrap();
    assert_eq!(b.shape(y), &Shape::from([1usize, 32, 32, 8]));
    let u = b.upsample2x(y).unwrap();
    assert_eq!(b.shape(u), &Shape::from([1usize, 64, 64, 8]));
}

#[test]
fn rope_tables_must_fit_the_head() {
    let mut b = b();
    let x = b
        .input(
            "x",
            [Dim::sym("B"), Dim::sym("L"), Dim::Const(2), Dim::Const(16)],
            DType::F32,
        )
        .unwrap();
    let c = b
        .input("c", [Dim::sym("L"), Dim::Const(4)], DType::F32)
        .unwrap();
    let e = b
        .rope(x, c, c, graph_dsl::RopeLayout::Interleaved)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "node `rope` (rope): shapes [B, L, 2, 16] and [L, 4] do not fit: tables must be [L, 8]"
    );
}

#[test]
fn block_call_checks_inputs_and_substitutes_symbols() {
    let mut body = GraphBuilder::new("mlp");
    let x = body
        .input(
            "x",
            [Dim::sym("B"), Dim::sym("L"), Dim::Const(8)],
            DType::F32,
        )
        .unwrap();
    let y = body.linear("fc", x, 8, 8, true).unwrap();
    body.output("y", y).unwrap();
    let body = body.finish();

    let mut b = b();
    let x = b
        .input(
            "x",
            [Dim::Const(2), Dim::sym("L_txt"), Dim::Const(8)],
            DType::F32,
        )
        .unwrap();
    let out = b.repeat(&body, "layers", 3, 1, &[x]).unwrap();
    assert_eq!(b.shape(out[0]).to_string(), "[2, L_txt, 8]");
    let bad = b
        .input(
            "bad",
            [Dim::Const(2), Dim::sym("L_txt"), Dim::Const(4)],
            DType::F32,
        )
        .unwrap();
    let e = b.call(&body, "layers.0", &[bad]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "node `mlp` (call): shapes [B, L, 8] and [2, L_txt, 4] do not fit: block input `x` does not fit"
    );
}

#[test]
fn chunk_that_does_not_divide() {
    let mut b = b();
    let x = b.input("x", [2usize, 10], DType::F32).unwrap();
    let e = b.chunk(x, 3, 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "chunk axis 1 (10) must be a multiple of 3; got 10"
    );
}

#[test]
fn concatenated_linear_is_one_node_over_its_parts() {
    let mut b = b();
    let x = b
        .input("x", [Dim::sym("B"), Dim::Const(8)], DType::F32)
        .unwrap();
    let y = b
        .scope("attn", |b| {
            b.linear_cat("to_qkv", &["to_q", "to_k", "to_v"], x, 8, &[8, 4, 4], true)
        })
        .unwrap();
    assert_eq!(b.shape(y).to_string(), "[B, 16]");
    let g = b.finish();
    assert_eq!(g.count_op("linear"), 1);
    assert_eq!(g.nodes[y.0.node].name, "attn.to_qkv");
    let keys: Vec<&str> = g.weights.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, ["attn.to_qkv.weight", "attn.to_qkv.bias"]);
    assert_eq!(g.weights[0].shape, [16, 8]);
    let stored: Vec<(String, Vec<usize>)> = g
        .weights
        .iter()
        .flat_map(|w| w.stored())
        .map(|p| (p.key, p.shape))
        .collect();
    let want = [
        ("attn.to_q.weight", vec![8, 8]),
        ("attn.to_k.weight", vec![4, 8]),
        ("attn.to_v.weight", vec![4, 8]),
        ("attn.to_q.bias", vec![8]),
        ("attn.to_k.bias", vec![4]),
        ("attn.to_v.bias", vec![4]),
    ];
    let want: Vec<(String, Vec<usize>)> = want.map(|(k, s)| (k.to_string(), s)).to_vec();
    assert_eq!(stored, want);
}

#[test]
fn concatenated_weight_parts_must_fit_and_be_new() {
    let mut b = b();
    let e = b
        .weight_cat("qk", &[("q", &[4, 8]), ("k", &[4, 6])], DType::BF16)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "node `qk` (weight): part `k` [4, 6] does not concatenate with [4, 8] along axis 0"
    );
    b.weight("k", &[4, 8]).unwrap();
    let e = b
        .weight_cat("qk", &[("q", &[4, 8]), ("k", &[4, 8])], DType::BF16)
        .unwrap_err();
    assert!(
        matches!(&e, DslError::DuplicateName { name, .. } if name == "k"),
        "{e:?}"
    );
    b.weight_cat("qv", &[("q", &[4, 8]), ("v", &[4, 8])], DType::BF16)
        .unwrap();
    // a part's key is taken like a stored weight's
    let e = b.weight("v", &[4, 8]).unwrap_err();
    assert!(
        matches!(&e, DslError::DuplicateName { name, .. } if name == "v"),
        "{e:?}"
    );
}

#[test]
fn additive_mask_must_cover_queries_and_keys() {
    let mut b = b();
    let q = b.input("q", [1usize, 2, 6, 8], DType::F32).unwrap();
    let ok = b.input("ok", [6usize, 6], DType::F32).unwrap();
    assert!(b.sdpa(q, q, q, 0.5, MaskKind::Additive, Some(ok)).is_ok());
    let bad = b.input("bad", [6usize, 5], DType::F32).unwrap();
    let e = b
        .sdpa(q, q, q, 0.5, MaskKind::Additive, Some(bad))
        .unwrap_err();
    assert!(
        e.to_string().contains("additive mask must be [Lq, Lk]"),
        "{e}"
    );
}
