//! The Qwen-Image MMDiT (`QwenImageTransformer2DModel`, spec §2): the dual-stream block,
//! the whole transformer around a loop of blocks, and the RoPE tables.
//!
//! Symbols: `B` batch (run time), `L_img` image tokens (fixed by the resolution),
//! `L_txt` text tokens (run time), `gh`/`gw` the packed grid.

use graph_dsl::{DType, Dim, Graph, GraphBuilder, MaskKind, QkvStream, Result, RopeSpec, Tensor};

use crate::config::{TransformerConfig, DIT_EPS, DIT_ROPE_THETA, TIMESTEP_CHANNELS};

/// The batch symbol (both CFG halves in one call: the `cfg_batch` pass splits on it).
pub const BATCH: &str = "B";
/// The images of one text in each CFG half after the CFG split (run time: `--count`).
pub const IMAGES: &str = "N";
/// The text-length symbol (run time; one per half after the CFG split).
pub const TEXT: &str = "L_txt";
/// The first text RoPE position, bound per resolution (`image_bindings`).
pub const TXT_ROPE_OFFSET: &str = "txt_rope_offset";
/// The timestep-count symbol of [`timestep_modulation`] (run time: a schedule's steps).
pub const TIMESTEPS: &str = "T";
/// The modulation values [`timestep_modulation`] makes and [`transformer`] takes.
pub const IMG_MOD: &str = "img_mod";
pub const TXT_MOD: &str = "txt_mod";
pub const OUT_MOD: &str = "out_mod";
/// The references' image modulation (Edit-2511's `zero_cond_t`: timestep 0).
pub const IMG_MOD_REFS: &str = "img_mod_refs";

fn b_() -> Dim {
    Dim::sym(BATCH)
}
fn l_img() -> Dim {
    Dim::sym("L_img")
}
fn l_txt() -> Dim {
    Dim::sym(TEXT)
}
fn t_() -> Dim {
    Dim::sym(TIMESTEPS)
}

/// `net.2(GELU_tanh(net.0.proj(y)))` (diffusers `FeedForward`, "gelu-approximate").
fn mlp(b: &mut GraphBuilder, name: &str, y: Tensor, d: usize) -> Result<Tensor> {
    b.scope(name, |b| {
        let h = b.linear("net.0.proj", y, d, 4 * d, true)?; // [B, L, 4D]
        let h = b.gelu_tanh(h)?;
        b.linear("net.2", h, 4 * d, d, true) // [B, L, D]
    })
}

/// The checkpoint names of one stream's attention projections and q/k norms.
struct StreamNames {
    /// The joined projection's name and its checkpoint parts (q, k, v).
    qkv: (&'static str, [&'static str; 3]),
    norms: [&'static str; 2],
}

const IMG_NAMES: StreamNames = StreamNames {
    qkv: ("to_qkv", ["to_q", "to_k", "to_v"]),
    norms: ["norm_q", "norm_k"],
};
const TXT_NAMES: StreamNames = StreamNames {
    qkv: ("add_qkv_proj", ["add_q_proj", "add_k_proj", "add_v_proj"]),
    norms: ["norm_added_q", "norm_added_k"],
};

/// One stream's QKV projection `[B, L, 3D]` (one matmul: the three checkpoint weights are
/// joined at load; the bias is added by `joint_qkv_heads`), its bias and q/k norm weights.
fn qkv_stream(
    b: &mut GraphBuilder,
    c: &TransformerConfig,
    y: Tensor,
    names: &StreamNames,
    rope: [Tensor; 2],
) -> Result<QkvStream> {
    let (d, dh) = (c.inner_dim(), c.attention_head_dim);
    let (name, parts) = names.qkv;
    let qkv = b.linear_cat(name, &parts, y, d, &[d, d, d], false)?;
    let keys = parts.map(|p| format!("{p}.bias"));
    let width = [d];
    let bias_parts: Vec<(&str, &[usize])> = keys.iter().map(|k| (k.as_str(), &width[..])).collect();
    let bias = b.weight_cat(&format!("{name}.bias"), &bias_parts, DType::BF16)?;
    let mut norms = vec![];
    for n in names.norms {
        norms.push(b.scope(n, |b| b.weight("weight", &[dh]))?);
    }
    Ok(QkvStream {
        qkv,
        bias,
        norms: [norms[0], norms[1]],
        rope,
    })
}

/// Joint attention (`QwenDoubleStreamAttnProcessor2_0`, spec §2.4): text first, then image.
// xi: [B, L_img, D]   ci: [B, L_txt, D]   -> (img [B, L_img, D], txt [B, L_txt, D])
fn joint_attention(
    b: &mut GraphBuilder,
    c: &TransformerConfig,
    xi: Tensor,
    ci: Tensor,
    [img_cos, img_sin, txt_cos, txt_sin]: [Tensor; 4],
    seq: &Dim,
    parts: usize,
) -> Result<(Tensor, Tensor)> {
    let (d, dh) = (c.inner_dim(), c.attention_head_dim);
    b.scope("attn", |b| {
        let img = qkv_stream(b, c, xi, &IMG_NAMES, [img_cos, img_sin])?;
        let txt = qkv_stream(b, c, ci, &TXT_NAMES, [txt_cos, txt_sin])?;
        // [B, H, L_txt+L_img, Dh] each
        let joint = b.joint_qkv_heads(c.num_attention_heads, [txt, img], DIT_EPS)?;
        // a sequence split over `parts` ranks: this rank's queries (the text and its share
        // of the image) attend to the text and every rank's image keys, in order
        let (k, v) = match parts {
            1 => (joint[1], joint[2]),
            _ => gather_image_rows(b, [joint[1], joint[2]], seq, parts)?,
        };
        let o = b.sdpa(
            joint[0],
            k,
            v,
            1.0 / (dh as f64).sqrt(),
            MaskKind::None,
            None,
        )?;
        // [B, L, H, Dh], a view; the rows are split before the reshape to [B, L, D], so that
        // each part is copied once into its layout (with the CFG halves batched, the image
        // rows of both halves in one join)
        let o = b.transpose(o, &[0, 2, 1, 3])?;
        let l = l_txt().add(seq);
        let txt = b.slice(o, 1, 0, l_txt())?;
        let img = b.slice(o, 1, l_txt(), l)?;
        let txt = b.reshape(txt, [b_(), l_txt(), Dim::Const(d)])?;
        let img = b.reshape(img, [b_(), seq.clone(), Dim::Const(d)])?;
        let img = b.linear("to_out.0", img, d, d, true)?;
        let txt = b.linear("to_add_out", txt, d, d, true)?;
        Ok((img, txt))
    })
}

/// Joint keys and values `[B, H, L_txt + seq, Dh]` of this rank (the text's rows, then its
/// share of the image's) → `[B, H, L_txt + parts·seq, Dh]` each: the text's rows, then every
/// rank's image rows in rank order (the whole image, as one GPU has it). The text is on every
/// rank; it is kept once. Keys and values travel in one gather (`[2B, ..]`): one collective a
/// block, not two.
fn gather_image_rows(
    b: &mut GraphBuilder,
    [k, v]: [Tensor; 2],
    seq: &Dim,
    parts: usize,
) -> Result<(Tensor, Tensor)> {
    let img = l_txt().add(seq);
    let ki = b.slice(k, 2, l_txt(), img.clone())?;
    let vi = b.slice(v, 2, l_txt(), img)?;
    let both = b.concat(&[ki, vi], 0)?; // [2B, H, seq, Dh]
    let all = b.gather_sequence(both, 2, parts)?; // [2B, H, parts·seq, Dh]
    let mut out = vec![];
    for (i, t) in [k, v].into_iter().enumerate() {
        let txt = b.slice(t, 2, 0, l_txt())?;
        let rows = b.slice(all, 0, b_().mul(i), b_().mul(i + 1))?;
        out.push(b.concat(&[txt, rows], 2)?);
    }
    Ok((out[0], out[1]))
}

/// The RoPE tables as graph inputs: `img_cos`, `img_sin` `[img, Dh/2]` (`img`: the image
/// tokens, `L_img`), then `txt_cos`, `txt_sin` `[L_txt, Dh/2]` (built once per generation by
/// `rope`, or for an edit at run time).
fn rope_inputs(b: &mut GraphBuilder, dh: usize, img: Dim) -> Result<[Tensor; 4]> {
    let half = Dim::Const(dh / 2);
    Ok([
        b.input("img_cos", [img.clone(), half.clone()], DType::F32)?,
        b.input("img_sin", [img, half.clone()], DType::F32)?,
        b.input("txt_cos", [l_txt(), half.clone()], DType::F32)?,
        b.input("txt_sin", [l_txt(), half], DType::F32)?,
    ])
}

/// One AdaLN modulation `[B, 1, D]` each: `norm(x)·(1 + scale) + shift` before a
/// sub-layer, `x + gate·sublayer(..)` after it.
#[derive(Clone, Copy)]
struct Mod {
    shift: Tensor,
    scale: Tensor,
    gate: Tensor,
}

impl Mod {
    /// `[shift, scale]`, as `norm_modulate` takes them.
    fn norm(&self) -> [Tensor; 2] {
        [self.shift, self.scale]
    }
}

/// One stream's modulations: for the attention (`msa`) and the MLP.
struct StreamMods {
    msa: Mod,
    mlp: Mod,
}

/// One stream's `{name}.1(SiLU(temb))` `[B, 6D]` (made per schedule by
/// [`timestep_modulation`]) → six `[B, 1, D]` parts in diffusers' order (shift, scale, gate
/// for the attention, then for the MLP), named `{name}.shift_msa` etc.
fn modulation(b: &mut GraphBuilder, name: &str, m: Tensor, d: usize) -> Result<StreamMods> {
    let m = b.reshape(m, [b_(), Dim::Const(1), Dim::Const(6 * d)])?; // [B, 1, 6D]
    let parts = b.chunk(m, 6, 2)?;
    let names = [
        "shift_msa",
        "scale_msa",
        "gate_msa",
        "shift_mlp",
        "scale_mlp",
        "gate_mlp",
    ];
    let p: Vec<Tensor> = parts
        .into_iter()
        .zip(names)
        .map(|(t, n)| b.name(t, &format!("{name}.{n}")))
        .collect();
    Ok(StreamMods {
        msa: Mod {
            shift: p[0],
            scale: p[1],
            gate: p[2],
        },
        mlp: Mod {
            shift: p[3],
            scale: p[4],
            gate: p[5],
        },
    })
}

/// One dual-stream block (`QwenImageTransformerBlock`, spec §2.4); weights relative to
/// `transformer_blocks.{i}`. Its modulation comes in made (`img_mod`, `txt_mod`
/// `[B, 6D]`: [`block_modulation`] of this block for the step's timestep).
pub fn dual_stream_block(c: &TransformerConfig) -> Result<Graph> {
    dual_stream_block_with(c, "dual_stream_block", l_img(), false, 1)
}

/// The image stream's modulation: one for every token, or (Edit-2511's `zero_cond_t`) the
/// step's for the generated image's `L_out` tokens and the timestep 0's for the references'.
enum ImageMods {
    One(StreamMods),
    Split { out: StreamMods, refs: StreamMods },
}

/// An op of the image stream under one modulation: its values in, its results out.
type SegmentOp = dyn Fn(&mut GraphBuilder, &StreamMods, &[Tensor]) -> Result<Vec<Tensor>>;

/// `f` on the whole image stream, or on its two segments (the generated image's tokens with
/// `out`'s modulation, the references' with `refs`'), joined again; `f` returns any number
/// of values of the stream's length.
fn per_segment(
    b: &mut GraphBuilder,
    mods: &ImageMods,
    ins: &[Tensor],
    f: &SegmentOp,
) -> Result<Vec<Tensor>> {
    match mods {
        ImageMods::One(m) => f(b, m, ins),
        ImageMods::Split { out, refs } => {
            let (lo, lr) = (Dim::sym("L_out"), Dim::sym("L_ref"));
            let all = lo.add(&lr);
            let first: Vec<Tensor> = ins
                .iter()
                .map(|t| b.slice(*t, 1, 0, lo.clone()))
                .collect::<Result<_>>()?;
            let second: Vec<Tensor> = ins
                .iter()
                .map(|t| b.slice(*t, 1, lo.clone(), all.clone()))
                .collect::<Result<_>>()?;
            let a = f(b, out, &first)?;
            let r = f(b, refs, &second)?;
            a.into_iter()
                .zip(r)
                .map(|(x, y)| b.concat(&[x, y], 1))
                .collect()
        }
    }
}

fn dual_stream_block_with(
    c: &TransformerConfig,
    name: &str,
    seq: Dim,
    zero_cond: bool,
    parts: usize,
) -> Result<Graph> {
    let (d, dh) = (c.inner_dim(), c.attention_head_dim);
    let mut b = GraphBuilder::new(name);
    let x = b.input(
        "hidden_states",
        [b_(), seq.clone(), Dim::Const(d)],
        DType::F32,
    )?;
    let ctx = b.input(
        "encoder_hidden_states",
        [b_(), l_txt(), Dim::Const(d)],
        DType::F32,
    )?;
    let img_mod = b.input(IMG_MOD, [b_(), Dim::Const(6 * d)], DType::F32)?;
    let txt_mod = b.input(TXT_MOD, [b_(), Dim::Const(6 * d)], DType::F32)?;
    let img_mod_refs = if zero_cond {
        Some(b.input(IMG_MOD_REFS, [b_(), Dim::Const(6 * d)], DType::F32)?)
    } else {
        None
    };
    let rope = rope_inputs(&mut b, dh, seq.clone())?;

    let im = modulation(&mut b, "img_mod", img_mod, d)?;
    let tm = modulation(&mut b, "txt_mod", txt_mod, d)?;
    let im = match img_mod_refs {
        Some(r) => ImageMods::Split {
            out: im,
            refs: modulation(&mut b, "img_mod_refs", r, d)?,
        },
        None => ImageMods::One(im),
    };

    let xi = per_segment(&mut b, &im, &[x], &|b, m, t| {
        Ok(vec![b.norm_modulate(
            t[0],
            m.msa.shift,
            m.msa.scale,
            DIT_EPS,
        )?])
    })?[0];
    let ci = b.norm_modulate(ctx, tm.msa.shift, tm.msa.scale, DIT_EPS)?;
    let (a_img, a_txt) = joint_attention(&mut b, c, xi, ci, rope, &seq, parts)?;

    let r = per_segment(&mut b, &im, &[x, a_img], &|b, m, t| {
        let (x, xm) =
            b.gate_residual_norm_modulate(t[0], t[1], m.msa.gate, m.mlp.norm(), DIT_EPS)?;
        Ok(vec![x, xm])
    })?;
    let (x, xm) = (r[0], r[1]);
    let xm = mlp(&mut b, "img_mlp", xm, d)?;
    let x = per_segment(&mut b, &im, &[x, xm], &|b, m, t| {
        Ok(vec![b.gate_residual(t[0], t[1], m.mlp.gate)?])
    })?[0];
    let (ctx, cm) =
        b.gate_residual_norm_modulate(ctx, a_txt, tm.msa.gate, tm.mlp.norm(), DIT_EPS)?;
    let cm = mlp(&mut b, "txt_mlp", cm, d)?;
    let ctx = b.gate_residual(ctx, cm, tm.mlp.gate)?;

    b.output("hidden_states", x)?;
    b.output("encoder_hidden_states", ctx)?;
    Ok(b.finish())
}

/// The RoPE tables of one specialization (spec §2.5), made once per generation: image
/// positions from the (compile-time) grid, text positions `m + k` for the run-time text
/// length. The `rope_fold` pass turns this into per-axis constants.
pub fn rope(c: &TransformerConfig) -> Result<Graph> {
    let mut b = GraphBuilder::new("rope");
    let t = b.rope_tables(RopeSpec {
        theta: DIT_ROPE_THETA,
        axes_dims: c.axes_dims_rope,
        grid: [Dim::sym("gh"), Dim::sym("gw")],
        img_len: l_img(),
        txt_len: l_txt(),
        txt_offset: Dim::sym(TXT_ROPE_OFFSET),
    })?;
    for (i, n) in ["img_cos", "img_sin", "txt_cos", "txt_sin"]
        .iter()
        .enumerate()
    {
        b.output(n, t[i])?;
    }
    Ok(b.finish())
}

/// The timestep-only part of one block (a body of [`timestep_modulation`]'s scan):
/// `img_mod.1` and `txt_mod.1` of SiLU(temb) `[T, D]` → `[T, 6D]` each.
pub fn block_modulation(c: &TransformerConfig) -> Result<Graph> {
    let d = c.inner_dim();
    let mut b = GraphBuilder::new("block_modulation");
    let t = b.input("silu_temb", [t_(), Dim::Const(d)], DType::F32)?;
    let img = b.scope("img_mod", |b| b.linear("1", t, d, 6 * d, true))?;
    let txt = b.scope("txt_mod", |b| b.linear("1", t, d, 6 * d, true))?;
    b.output(IMG_MOD, img)?;
    b.output(TXT_MOD, txt)?;
    Ok(b.finish())
}

/// Everything the transformer computes from the timestep alone (spec §2.3: the timestep
/// embedding, every block's `img_mod`/`txt_mod` and `norm_out.linear`), for all `T`
/// timesteps of a schedule at once: it depends on no image, so it runs once per schedule
/// and its 6.8 B parameters need not stay beside the denoiser.
// timestep: [T] (≈σ) -> img_mod, txt_mod [num_layers, T, 6D], out_mod [T, 2D]
pub fn timestep_modulation(c: &TransformerConfig) -> Result<Graph> {
    let d = c.inner_dim();
    let block = block_modulation(c)?;
    let mut b = GraphBuilder::new("timestep_modulation");
    let ts = b.input("timestep", [t_()], DType::F32)?;

    // timestep: sinusoid of 1000·t, [cos, sin], f_k = exp(−ln(10000)·k/128)
    let half = TIMESTEP_CHANNELS / 2;
    // f32 arithmetic in diffusers' order (get_timestep_embedding): exp(−ln(10000)·k/128),
    // then (t·f)·1000
    let freqs: Vec<f32> = (0..half)
        .map(|k| (-(10000f32.ln()) * k as f32 / half as f32).exp())
        .collect();
    let temb = b.scope("time_text_embed", |b| {
        let f = b.const_tensor("timestep_freqs", &[1, half], freqs)?;
        let t = b.reshape(ts, [t_(), Dim::Const(1)])?; // [T, 1]
        let a = b.mul(t, f)?; // [T, 128]
        let a = b.mul_scalar(a, 1000.0)?;
        let (cs, sn) = (
            b.unary(graph_dsl::Unary::Cos, a)?,
            b.unary(graph_dsl::Unary::Sin, a)?,
        );
        let emb = b.concat(&[cs, sn], 1)?; // [T, 256], f32
        b.scope("timestep_embedder", |b| {
            // to the model dtype (the bias's: the weight may be quantized), as diffusers
            // casts to the hidden states'
            let (w1, b1) = b.scope("linear_1", |b| {
                Ok((
                    b.weight("weight", &[d, TIMESTEP_CHANNELS])?,
                    b.weight("bias", &[d])?,
                ))
            })?;
            let emb = b.cast_like(emb, b1)?;
            let h = b.node_named(
                "linear_1",
                graph_dsl::Op::Linear { bias: true },
                &[emb, w1, b1],
            )?[0];
            let h = b.silu(h)?;
            b.linear("linear_2", h, d, d, true) // [T, D]
        })
    })?;
    let t = b.silu(temb)?;
    let mods = b.scan(&block, "transformer_blocks", c.num_layers, [0, 0], &[t])?;
    b.output(IMG_MOD, mods[0])?; // [num_layers, T, 6D]
    b.output(TXT_MOD, mods[1])?;
    // norm_out (AdaLayerNormContinuous) of the same SiLU(temb): [T, 2D], scale then shift
    let e = b.linear("norm_out.linear", t, d, 2 * d, true)?;
    b.output(OUT_MOD, e)?;
    Ok(b.finish())
}

/// The whole transformer (spec §2.3) past the timestep: `img_in`, `txt_norm`/`txt_in`,
/// `num_layers` blocks in a loop (each given its modulation row), `norm_out`, `proj_out`.
// hidden_states: [B, L_img, 64]   encoder_hidden_states: [B, L_txt, 3584]
// img_mod, txt_mod: [num_layers, B, 6D]   out_mod: [B, 2D]   (timestep_modulation's, one step)
// -> [B, L_img, 64] velocity, packed
pub fn transformer(c: &TransformerConfig) -> Result<Graph> {
    transformer_with(c, "transformer", dual_stream_block(c)?, false, false, 1)
}

/// [`transformer`] on one rank's share of the image tokens, the sequence split over `parts`
/// ranks (sequence parallelism): `L_img` is the share's length (the caller binds it to the
/// image's `L_img / parts`), the hidden states and the image RoPE rows are the share's. In
/// every block the joint attention's keys and values are gathered over the ranks
/// ([`graph_dsl::Op::GatherSequence`]), the only op that mixes tokens; the velocity is
/// gathered at the end, so every rank gets the whole `[B, parts·L_img, 64]`.
pub fn transformer_split(c: &TransformerConfig, parts: usize) -> Result<Graph> {
    let block = dual_stream_block_with(c, "dual_stream_block", l_img(), false, parts)?;
    transformer_with(c, "transformer", block, false, false, parts)
}

/// The transformer of an edit (Qwen-Image-Edit, spec §5.1), in the shared module: the image
/// stream holds the generated image's tokens, then every reference image's (their lengths
/// and RoPE tables made at run time: `qwen_runtime::rope`), and only the first `L_out` tokens
/// (the generated image's) leave it: the other tokens are sliced off before `norm_out`, as
/// the pipeline slices the velocity (`norm_out` and `proj_out` work token by token).
// hidden_states: [B, L_out + L_ref, 64] (the references' L_ref tokens after the generated
// image's L_out) -> [B, L_out, 64]
pub fn edit_transformer(c: &TransformerConfig) -> Result<Graph> {
    edit_graph(c, "edit_transformer", "edit_dual_stream_block", false)
}

/// [`edit_transformer`] under names of its own, for the `cfg_batch` pass to split into both
/// CFG halves in one call (each half's text unpadded; the image stream, references included,
/// at batch 2N).
pub fn edit_transformer_cfg(c: &TransformerConfig) -> Result<Graph> {
    edit_graph(
        c,
        "edit_transformer_cfg",
        "edit_cfg_dual_stream_block",
        false,
    )
}

/// [`edit_transformer_zero_cond`] under names of its own, for the `cfg_batch` pass (as
/// [`edit_transformer_cfg`]).
pub fn edit_transformer_zero_cond_cfg(c: &TransformerConfig) -> Result<Graph> {
    edit_graph(
        c,
        "edit_transformer_zero_cond_cfg",
        "edit_zero_cond_cfg_dual_stream_block",
        true,
    )
}

/// An edit transformer graph named `name` around a block named `block`.
fn edit_graph(c: &TransformerConfig, name: &str, block: &str, zero_cond: bool) -> Result<Graph> {
    let seq = Dim::sym("L_out").add(&Dim::sym("L_ref"));
    let block = dual_stream_block_with(c, block, seq, zero_cond, 1)?;
    transformer_with(c, name, block, true, zero_cond, 1)
}

/// [`edit_transformer`] with Edit-2511's `zero_cond_t`: the references' image tokens take
/// the modulation of timestep 0 (`img_mod_refs`, the timestep modulation's image rows at
/// t = 0), the generated image's the step's (diffusers' `modulate_index`); the text and the
/// output norm the step's.
// as edit_transformer, plus img_mod_refs: [num_layers, B, 6D]
pub fn edit_transformer_zero_cond(c: &TransformerConfig) -> Result<Graph> {
    edit_graph(
        c,
        "edit_transformer_zero_cond",
        "edit_zero_cond_dual_stream_block",
        true,
    )
}

fn transformer_with(
    c: &TransformerConfig,
    name: &str,
    block: Graph,
    edit: bool,
    zero_cond: bool,
    seq_parts: usize,
) -> Result<Graph> {
    let (d, dh) = (c.inner_dim(), c.attention_head_dim);
    let mut b = GraphBuilder::new(name);
    let (out_len, ref_len) = (Dim::sym("L_out"), Dim::sym("L_ref"));
    let seq = if edit { out_len.add(&ref_len) } else { l_img() };
    let x = b.input(
        "hidden_states",
        [b_(), seq.clone(), Dim::Const(c.in_channels)],
        DType::F32,
    )?;
    let ctx = b.input(
        "encoder_hidden_states",
        [b_(), l_txt(), Dim::Const(c.joint_attention_dim)],
        DType::F32,
    )?;
    let layers = Dim::Const(c.num_layers);
    let mod_shape = [layers, b_(), Dim::Const(6 * d)];
    let img_mod = b.input(IMG_MOD, mod_shape.clone(), DType::F32)?;
    let txt_mod = b.input(TXT_MOD, mod_shape.clone(), DType::F32)?;
    let out_mod = b.input(OUT_MOD, [b_(), Dim::Const(2 * d)], DType::F32)?;
    let img_mod_refs = if zero_cond {
        Some(b.input(IMG_MOD_REFS, mod_shape.clone(), DType::F32)?)
    } else {
        None
    };
    let rope = rope_inputs(&mut b, dh, seq)?;

    let x = b.linear("img_in", x, c.in_channels, d, true)?; // [B, L_img, D]
    let ctx = b.rms_norm("txt_norm", ctx, c.joint_attention_dim, DIT_EPS)?;
    let ctx = b.linear("txt_in", ctx, c.joint_attention_dim, d, true)?; // [B, L_txt, D]

    let mut ins = vec![x, ctx, img_mod, txt_mod];
    ins.extend(img_mod_refs);
    ins.extend(rope);
    let sliced = if zero_cond { 3 } else { 2 };
    let out = b.scan(
        &block,
        "transformer_blocks",
        c.num_layers,
        [2, sliced],
        &ins,
    )?;
    let x = if edit {
        b.slice(out[0], 1, 0, out_len)?
    } else {
        out[0]
    };

    // norm_out (AdaLayerNormContinuous): scale first, then shift
    let e = b.reshape(out_mod, [b_(), Dim::Const(1), Dim::Const(2 * d)])?;
    let parts = b.chunk(e, 2, 2)?;
    let x = b.norm_modulate(x, parts[1], parts[0], DIT_EPS)?;
    let p = c.patch_size * c.patch_size * c.out_channels;
    let y = b.linear("proj_out", x, d, p, true)?; // [B, L_img, 64]
    let y = match seq_parts {
        1 => y,
        // every rank's share: [B, seq_parts·L_img, 64]
        _ => b.gather_sequence(y, 1, seq_parts)?,
    };
    b.output("velocity", y)?;
    Ok(b.finish())
}
