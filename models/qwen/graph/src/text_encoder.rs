//! The Qwen2.5-VL language model (spec §3), text only: the decoder layer (GQA, causal
//! attention, rotate-half RoPE, SwiGLU) and the encoder around a loop of it.

use graph_dsl::{DType, Dim, Graph, GraphBuilder, MaskKind, Result, RopeLayout, Tensor};

use crate::config::TextEncoderConfig;

/// `model.layers.{i}` (spec §3.3): `h = x + o_proj(Attn(RMSNorm(x)))`,
/// `out = h + down(SiLU(gate(RMSNorm(h))) · up(RMSNorm(h)))`.
// x: [B, S, hidden]   cos, sin: [S, head_dim/2] -> [B, S, hidden]
pub fn decoder_layer(c: &TextEncoderConfig) -> Result<Graph> {
    let (hs, nh, nkv, hd) = (
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim(),
    );
    let (bb, s) = (Dim::sym("B"), Dim::sym("S"));
    let mut b = GraphBuilder::new("text_decoder_layer");
    let x = b.input("x", [bb.clone(), s.clone(), Dim::Const(hs)], DType::F32)?;
    let cos = b.input("cos", [s.clone(), Dim::Const(hd / 2)], DType::F32)?;
    let sin = b.input("sin", [s.clone(), Dim::Const(hd / 2)], DType::F32)?;

    let h = b.rms_norm("input_layernorm", x, hs, c.rms_norm_eps)?;
    let a = b.scope("self_attn", |b| {
        let q = b.linear("q_proj", h, hs, nh * hd, true)?;
        let k = b.linear("k_proj", h, hs, nkv * hd, true)?;
        let v = b.linear("v_proj", h, hs, nkv * hd, true)?;
        let q = b.reshape(q, [bb.clone(), s.clone(), Dim::Const(nh), Dim::Const(hd)])?; // [B, S, H, hd]
        let k = b.reshape(k, [bb.clone(), s.clone(), Dim::Const(nkv), Dim::Const(hd)])?; // [B, S, KV, hd]
        let v = b.reshape(v, [bb.clone(), s.clone(), Dim::Const(nkv), Dim::Const(hd)])?;
        let q = b.rope(q, cos, sin, RopeLayout::RotateHalf)?;
        let k = b.rope(k, cos, sin, RopeLayout::RotateHalf)?;
        let q = b.transpose(q, &[0, 2, 1, 3])?;
        let k = b.transpose(k, &[0, 2, 1, 3])?;
        let v = b.transpose(v, &[0, 2, 1, 3])?;
        let o = b.sdpa(q, k, v, 1.0 / (hd as f64).sqrt(), MaskKind::Causal, None)?; // GQA
        let o = b.transpose(o, &[0, 2, 1, 3])?;
        let o = b.reshape(o, [bb.clone(), s.clone(), Dim::Const(nh * hd)])?;
        b.linear("o_proj", o, nh * hd, hs, false)
    })?;
    let x = b.add(x, a)?;
    let h = b.rms_norm("post_attention_layernorm", x, hs, c.rms_norm_eps)?;
    let m = b.scope("mlp", |b| {
        let g = b.linear("gate_proj", h, hs, c.intermediate_size, false)?;
        let u = b.linear("up_proj", h, hs, c.intermediate_size, false)?;
        let g = b.silu(g)?;
        let gu = b.mul(g, u)?;
        b.linear("down_proj", gu, c.intermediate_size, hs, false)
    })?;
    let x = b.add(x, m)?;
    b.output("x", x)?;
    Ok(b.finish())
}

/// The decoder layers in a loop over `x` `[B, S, hidden]` with the RoPE tables, then the
/// final `norm`: the graph's output `hidden_states`.
fn layers_and_norm(
    mut b: GraphBuilder,
    c: &TextEncoderConfig,
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
) -> Result<Graph> {
    let layer = decoder_layer(c)?;
    let x = b.scope("model", |b| {
        b.repeat(&layer, "layers", c.num_hidden_layers, 1, &[x, cos, sin])
    })?[0];
    let x = b.rms_norm("model.norm", x, c.hidden_size, c.rms_norm_eps)?;
    b.output("hidden_states", x)?;
    Ok(b.finish())
}

/// The language model (spec §3.3), text only: `embed_tokens`, `num_hidden_layers`
/// decoder layers in a loop, the final `norm` — whose output is what the pipeline uses.
/// Positions are `0..S` (an unpadded prompt; M-RoPE reduces to 1-D RoPE for text, θ from
/// the config), so the cos/sin tables are made here from the run-time length.
// input_ids: [B, S] i32 -> [B, S, hidden]
pub fn text_encoder(c: &TextEncoderConfig) -> Result<Graph> {
    let (hs, hd) = (c.hidden_size, c.head_dim());
    let s = Dim::sym("S");
    let mut b = GraphBuilder::new("text_encoder");
    let ids = b.input("input_ids", [Dim::sym("B"), s.clone()], DType::I32)?;
    let x = b.embedding("model.embed_tokens", ids, c.vocab_size, hs)?; // [B, S, hidden]
                                                                       // inv_freq_j = θ^(−2j/hd), j < hd/2 (as transformers computes it, in f32)
    let inv: Vec<f32> = (0..hd / 2)
        .map(|j| 1.0 / (c.rope_theta as f32).powf((2 * j) as f32 / hd as f32))
        .collect();
    let inv = b.const_tensor("rope_inv_freq", &[1, hd / 2], inv)?;
    let pos = b.arange(0, s.clone())?;
    let pos = b.reshape(pos, [s, Dim::Const(1)])?;
    let ang = b.mul(pos, inv)?; // [S, hd/2]
    let cos = b.unary(graph_dsl::Unary::Cos, ang)?;
    let sin = b.unary(graph_dsl::Unary::Sin, ang)?;
    layers_and_norm(b, c, x, cos, sin)
}

/// The language model with images in its prompt (Qwen-Image-Edit, spec §5.2-5.3): the rows of
/// the image tokens take the vision tower's embeddings instead of the token table's
/// (`image_embeds` row `image_rows[s]` where `image_mask[s]` is 1), and the multimodal RoPE
/// tables come from the caller (`qwen::vision::PromptImages::rope`: per half-dim the temporal, row or
/// column position of each token, from the image grids, made at bind time). At least one
/// image: text rows read row 0 of `image_embeds` (and multiply it by 0); a prompt without
/// images runs [`text_encoder`].
// input_ids: [B, S] i32, image_embeds: [N, hidden], image_rows: [S] i32, image_mask: [S, 1],
// cos, sin: [S, head_dim/2] -> [B, S, hidden]
pub fn text_encoder_with_images(c: &TextEncoderConfig) -> Result<Graph> {
    let (hs, hd) = (c.hidden_size, c.head_dim());
    let s = Dim::sym("S");
    let mut b = GraphBuilder::new("text_encoder_with_images");
    let ids = b.input("input_ids", [Dim::sym("B"), s.clone()], DType::I32)?;
    let images = b.input("image_embeds", [Dim::sym("N"), Dim::Const(hs)], DType::F32)?;
    let rows = b.input("image_rows", [s.clone()], DType::I32)?;
    let mask = b.input("image_mask", [s.clone(), Dim::Const(1)], DType::F32)?;
    let cos = b.input("cos", [s.clone(), Dim::Const(hd / 2)], DType::F32)?;
    let sin = b.input("sin", [s.clone(), Dim::Const(hd / 2)], DType::F32)?;
    let text = b.embedding("model.embed_tokens", ids, c.vocab_size, hs)?; // [B, S, hidden]
    let image = b.take_rows(images, rows)?; // [S, hidden]
                                            // text · (1 − mask) + image · mask: each row exactly one of the two
    let one = b.scalar(1.0)?;
    let keep = b.binary(graph_dsl::Binary::Sub, one, mask)?;
    let text = b.mul(text, keep)?;
    let image = b.mul(image, mask)?;
    let x = b.add(text, image)?;
    layers_and_norm(b, c, x, cos, sin)
}
