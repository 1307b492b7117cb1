//! The graph IR: named nodes in topological order, declared inputs and weights, outputs,
//! and reusable block bodies.
//!
//! Node names are the checkpoint key paths of the module that made them
//! (`attn.to_q`, `img_mlp.net.2`), so generated code can keep them.

use std::collections::BTreeMap;

use crate::shape::{DType, Dim, Shape};

/// Index of a node in [`Graph::nodes`].
pub type NodeId = usize;

/// One output of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value {
    pub node: NodeId,
    pub out: usize,
}

/// Type of a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorTy {
    pub shape: Shape,
    pub dtype: DType,
}

impl std::fmt::Display for TensorTy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.shape, self.dtype)
    }
}

/// A graph input (an activation handed in by the caller).
#[derive(Debug, Clone, PartialEq)]
pub struct InputDecl {
    pub name: String,
    pub ty: TensorTy,
}

/// A change applied to a weight between the checkpoint and the generated code, recorded
/// by the graph (usually by a layout pass) and applied by the loader, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WeightXform {
    /// Keep index `index` of axis `axis` (the axis disappears).
    TakeAxis { axis: usize, index: usize },
    /// Permute axes.
    Permute(Vec<usize>),
    /// Reshape to these dims.
    Reshape(Vec<usize>),
}

impl WeightXform {
    /// Shape after the transform, if it applies.
    pub fn apply(&self, shape: &[usize]) -> Option<Vec<usize>> {
        match self {
            WeightXform::TakeAxis { axis, index } => (*axis < shape.len() && *index < shape[*axis])
                .then(|| {
                    let mut s = shape.to_vec();
                    s.remove(*axis);
                    s
                }),
            WeightXform::Permute(p) => {
                let mut seen = p.clone();
                seen.sort();
                (p.len() == shape.len() && seen == (0..p.len()).collect::<Vec<_>>())
                    .then(|| p.iter().map(|&i| shape[i]).collect())
            }
            WeightXform::Reshape(s) => {
                (s.iter().product::<usize>() == shape.iter().product::<usize>()).then(|| s.clone())
            }
        }
    }
}

/// A weight: its checkpoint key (relative to the block prefix inside a block body), its
/// shape and dtype as stored, and the transforms applied when loading.
///
/// A weight with `parts` is not stored under `key`: the loader reads each part (same
/// dtype, same trailing dims) and concatenates them along axis 0, in order, before the
/// transforms; `key` then only names the weight (and its field in generated code), and
/// `shape` is the concatenation's. Fused projections use it (e.g. `to_q`, `to_k`, `to_v`
/// weights `[d, d]` each as one `[3d, d]` weight).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightDecl {
    pub key: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// The stored tensors concatenated along axis 0 into this weight; empty: stored as is.
    pub parts: Vec<WeightPart>,
    pub xforms: Vec<WeightXform>,
}

/// One stored tensor of a concatenated weight: its checkpoint key (relative, as
/// [`WeightDecl::key`]) and stored shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WeightPart {
    pub key: String,
    pub shape: Vec<usize>,
}

impl WeightDecl {
    /// The stored tensors the loader reads: the parts of a concatenated weight, else the
    /// weight itself.
    pub fn stored(&self) -> Vec<WeightPart> {
        if self.parts.is_empty() {
            vec![WeightPart {
                key: self.key.clone(),
                shape: self.shape.clone(),
            }]
        } else {
            self.parts.clone()
        }
    }

    /// Whether the loader reads checkpoint key `key` for this weight.
    pub fn reads(&self, key: &str) -> bool {
        if self.parts.is_empty() {
            self.key == key
        } else {
            self.parts.iter().any(|p| p.key == key)
        }
    }

    /// The shape the generated code sees, after the transforms.
    pub fn loaded_shape(&self) -> Option<Vec<usize>> {
        self.xforms
            .iter()
            .try_fold(self.shape.clone(), |s, x| x.apply(&s))
    }
}

/// Attention masking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaskKind {
    None,
    Causal,
    /// A fourth input `[B, Lk]` bool: true = attend.
    KeyPadding,
    /// A fourth input `[Lq, Lk]` f32 added to the scores (0 = attend, −∞ = not): e.g. the
    /// vision tower's windows, built at bind time.
    Additive,
}

/// RoPE layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RopeLayout {
    /// Pairs `(x[2k], x[2k+1])` rotate together (Qwen-Image DiT, complex multiply).
    Interleaved,
    /// `x[k]` pairs with `x[k + d/2]` (Qwen2.5-VL text encoder).
    RotateHalf,
}

/// Unary elementwise ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unary {
    Neg,
    Exp,
    Sqrt,
    Rsqrt,
    Square,
    Sin,
    Cos,
    Tanh,
    Sigmoid,
    Silu,
    GeluTanh,
    /// GELU with the error function (PyTorch's `nn.GELU()`).
    Gelu,
}

/// Binary elementwise ops (broadcasting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

/// Reductions over one axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reduce {
    Sum,
    Mean,
    Max,
}

/// Operations. Inputs are listed per op; all shapes are checked by [`crate::ops::infer`].
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Graph input number `.0`.
    Input(usize),
    /// Weight number `.0`.
    Weight(usize),
    /// A scalar constant (broadcasts).
    Scalar(f64),
    /// A small constant tensor (f32 data, row-major).
    ConstTensor {
        shape: Vec<usize>,
        data: Vec<f32>,
    },
    /// `start, start+1, …` of length `len`, as f32: `[len]`.
    Arange {
        start: Dim,
        len: Dim,
    },

    // --- linear algebra ---
    /// `x @ w^T (+ b)`; inputs x `[.., in]`, w `[out, in]`, (b `[out]`).
    Linear {
        bias: bool,
    },
    /// `a @ b` (batched, broadcasting leading dims).
    MatMul,
    /// `table[ids]`; inputs table `[V, D]`, ids `[..]` integer → `[.., D]`.
    Embedding,

    // --- norms ---
    /// `x·rsqrt(mean(x²)+eps)(·w)` over the last axis; inputs x, (w `[C]`).
    RmsNorm {
        eps: f64,
        affine: bool,
    },
    /// LayerNorm over the last axis without affine parameters.
    LayerNorm {
        eps: f64,
    },
    /// The VAE's channel L2 norm: `x / max(‖x‖₂, eps) · √C · gamma` over the last axis;
    /// inputs x, gamma `[C]`.
    ChannelL2Norm {
        eps: f64,
    },

    // --- attention ---
    /// Scaled-dot-product attention; inputs q `[B, Hq, Lq, D]`, k, v `[B, Hkv, Lk, D]`
    /// (Hq a multiple of Hkv: GQA), and for `KeyPadding` a mask `[B, Lk]`.
    Sdpa {
        scale: f64,
        mask: MaskKind,
    },
    /// Rotary embedding; inputs x `[B, L, H, D]`, cos and sin `[L, D/2]`.
    Rope {
        layout: RopeLayout,
    },

    // --- fused: one kernel where the device has one (CUDA), plain ops elsewhere ---
    /// `LayerNorm(x)·(1 + scale) + shift` over the last axis (LayerNorm without affine);
    /// inputs x `[B, L, D]`, shift and scale `[B, 1, D]` (per sample) or `[B, L, D]` (per
    /// row, as the packed text stream of `cfg_batch` has them); the same for gates below.
    NormModulate {
        eps: f64,
    },
    /// `x + gate·y`; inputs x, y `[B, L, D]`, gate `[B, 1, D]`.
    GateResidual,
    /// [`Op::GateResidual`], then [`Op::NormModulate`] of its result; inputs x, y, gate,
    /// shift, scale; outputs the sum and its modulated norm.
    GateResidualNormModulate {
        eps: f64,
    },
    /// Joint-attention heads of a text and an image stream, straight from their QKV
    /// projections (bias not yet added): per stream `qkv + bias`, q and k RMS-normed (weights
    /// `[Dh]`) and rotated by interleaved RoPE (cos, sin `[L, Dh/2]`), v as is; text rows
    /// first. Inputs per stream, text then image: qkv `[B, L, 3·H·Dh]`, bias `[3·H·Dh]`,
    /// q norm, k norm, cos, sin; outputs q, k, v `[B, H, L_text + L_image, Dh]`.
    JointQkvHeads {
        heads: usize,
        eps: f64,
    },

    // --- elementwise ---
    Unary(Unary),
    Binary(Binary),
    Softmax {
        axis: isize,
    },
    Reduce {
        kind: Reduce,
        axis: isize,
        keep_dims: bool,
    },
    Cast(DType),
    /// Cast input 0 to the dtype input 1 has at run time (e.g. the compute dtype of the
    /// weights, which the graph does not fix).
    CastLike,
    Clamp {
        min: f64,
        max: f64,
    },

    // --- convolution (NHWC, weights OHWI) ---
    /// inputs x `[B, H, W, Cin]`, w `[Cout, kh, kw, Cin]`, (b `[Cout]`); padding is
    /// `[(top, bottom), (left, right)]`.
    Conv2d {
        stride: [usize; 2],
        padding: [(usize, usize); 2],
        bias: bool,
    },
    /// A causal 3-D conv as written by PyTorch models; inputs x `[B, T, H, W, Cin]`,
    /// w `[Cout, Cin, kt, kh, kw]` (checkpoint layout), (b). Spatial padding `pad` on H
    /// and W, temporal padding `kt-1` in front. Only the layout pass makes it runnable.
    CausalConv3d {
        pad: usize,
        bias: bool,
    },
    /// Nearest-neighbour 2× upsampling of `[B, H, W, C]`.
    Upsample2x,

    // --- shapes ---
    Reshape(Vec<Dim>),
    Transpose(Vec<usize>),
    BroadcastTo(Vec<Dim>),
    Concat {
        axis: usize,
    },
    /// `x[.., start..end, ..]` along `axis`.
    Slice {
        axis: usize,
        start: Dim,
        end: Dim,
    },

    // --- structure ---
    /// Call block `block` once with weights under `prefix`; the outputs are the block's.
    Call {
        block: String,
        prefix: String,
    },
    /// Call block `block` `count` times with weights under `prefix.{i}` (a scan over the
    /// layers). Inputs: the first `carry` are replaced by the first `carry` outputs after
    /// each call (which must match them); the next `sliced` have a leading `[count]` axis
    /// and call `i` gets row `i` of each; the rest are passed unchanged to every call.
    /// Outputs: the carried values after the last call, then each other output of the
    /// block stacked over the calls, `[count, ..]`.
    Repeat {
        block: String,
        prefix: String,
        count: usize,
        carry: usize,
        sliced: usize,
    },

    // --- collectives: between the processes of a group (one per GPU) ---
    /// The shares of one sequence split over `parts` ranks, gathered along `axis` in rank
    /// order: every rank of the group holds its `[.., n, ..]` share and gets the whole
    /// `[.., parts·n, ..]` (sequence parallelism: each rank's queries attend to every
    /// rank's keys). In a group of `parts · G` ranks, the `G` runs of `parts` consecutive
    /// ranks gather among themselves (e.g. one CFG half each); the runtime does the
    /// collective (`qwen_runtime::distributed::gather_sequence`).
    GatherSequence {
        axis: usize,
        parts: usize,
    },

    /// Per-token RoPE tables before folding: outputs img cos, img sin `[L_img, Σd/2]`,
    /// txt cos, txt sin `[L_txt, Σd/2]`. Only [`crate::passes::rope_fold`] lowers it.
    RopeTables(RopeSpec),
}

/// What a 3-axis (frame, row, column) RoPE over an image grid and a text needs to know:
/// image positions are centered on the grid (`i − ⌈n/2⌉` per axis), text positions are
/// `txt_offset + k` on every axis (Qwen-Image: spec §2.5).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    pub theta: f64,
    /// Per-axis dims (frame, height, width), e.g. `[16, 56, 56]`.
    pub axes_dims: [usize; 3],
    /// The packed grid (rows, cols) of the image; must be constant to fold.
    pub grid: [Dim; 2],
    /// Image tokens, `rows·cols`.
    pub img_len: Dim,
    /// Text length (usually runtime).
    pub txt_len: Dim,
    /// The first text position (a model's rule, e.g. Qwen-Image's `max(gh/2, gw/2)`); must
    /// be constant to fold.
    pub txt_offset: Dim,
}

/// The families ops are grouped in: one file each for shape inference
/// (`graph-dsl/src/ops/`) and lowering (`codegen/src/emit/ops/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpFamily {
    Sources,
    Linear,
    Norm,
    Attention,
    Fused,
    Elementwise,
    Conv,
    Shape,
    Collective,
    Blocks,
}

impl Op {
    /// The op's family (the one place that decides it).
    pub fn family(&self) -> OpFamily {
        match self {
            Op::Input(_)
            | Op::Weight(_)
            | Op::Scalar(_)
            | Op::ConstTensor { .. }
            | Op::Arange { .. } => OpFamily::Sources,
            Op::Linear { .. } | Op::MatMul | Op::Embedding => OpFamily::Linear,
            Op::RmsNorm { .. } | Op::LayerNorm { .. } | Op::ChannelL2Norm { .. } => OpFamily::Norm,
            Op::Sdpa { .. } | Op::Rope { .. } | Op::RopeTables(_) => OpFamily::Attention,
            Op::NormModulate { .. }
            | Op::GateResidual
            | Op::GateResidualNormModulate { .. }
            | Op::JointQkvHeads { .. } => OpFamily::Fused,
            Op::Unary(_)
            | Op::Binary(_)
            | Op::Softmax { .. }
            | Op::Reduce { .. }
            | Op::Cast(_)
            | Op::CastLike
            | Op::Clamp { .. } => OpFamily::Elementwise,
            Op::Conv2d { .. } | Op::CausalConv3d { .. } | Op::Upsample2x => OpFamily::Conv,
            Op::Reshape(_)
            | Op::Transpose(_)
            | Op::BroadcastTo(_)
            | Op::Concat { .. }
            | Op::Slice { .. } => OpFamily::Shape,
            Op::GatherSequence { .. } => OpFamily::Collective,
            Op::Call { .. } | Op::Repeat { .. } => OpFamily::Blocks,
        }
    }

    /// A label for auto-named nodes: the op name, or the specific unary/binary op.
    pub fn label(&self) -> &'static str {
        match self {
            Op::Unary(u) => match u {
                Unary::Neg => "neg",
                Unary::Exp => "exp",
                Unary::Sqrt => "sqrt",
                Unary::Rsqrt => "rsqrt",
                Unary::Square => "square",
                Unary::Sin => "sin",
                Unary::Cos => "cos",
                Unary::Tanh => "tanh",
                Unary::Sigmoid => "sigmoid",
                Unary::Silu => "silu",
                Unary::GeluTanh => "gelu",
                Unary::Gelu => "gelu_erf",
            },
            Op::Binary(b) => match b {
                Binary::Add => "add",
                Binary::Sub => "sub",
                Binary::Mul => "mul",
                Binary::Div => "div",
                Binary::Max => "max",
                Binary::Min => "min",
            },
            _ => self.name(),
        }
    }

    /// Short name for messages and docs.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input(_) => "input",
            Op::Weight(_) => "weight",
            Op::Scalar(_) => "scalar",
            Op::ConstTensor { .. } => "const_tensor",
            Op::Arange { .. } => "arange",
            Op::Linear { .. } => "linear",
            Op::MatMul => "matmul",
            Op::Embedding => "embedding",
            Op::RmsNorm { .. } => "rms_norm",
            Op::LayerNorm { .. } => "layer_norm",
            Op::ChannelL2Norm { .. } => "channel_l2_norm",
            Op::Sdpa { .. } => "sdpa",
            Op::Rope { .. } => "rope",
            Op::NormModulate { .. } => "norm_modulate",
            Op::GateResidual => "gate_residual",
            Op::GateResidualNormModulate { .. } => "gate_residual_norm_modulate",
            Op::JointQkvHeads { .. } => "joint_qkv_heads",
            Op::Unary(_) => "unary",
            Op::Binary(_) => "binary",
            Op::Softmax { .. } => "softmax",
            Op::Reduce { .. } => "reduce",
            Op::Cast(_) => "cast",
            Op::CastLike => "cast_like",
            Op::Clamp { .. } => "clamp",
            Op::Conv2d { .. } => "conv2d",
            Op::CausalConv3d { .. } => "causal_conv3d",
            Op::Upsample2x => "upsample2x",
            Op::Reshape(_) => "reshape",
            Op::Transpose(_) => "transpose",
            Op::BroadcastTo(_) => "broadcast_to",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::GatherSequence { .. } => "gather_sequence",
            Op::Call { .. } => "call",
            Op::Repeat { .. } => "repeat",
            Op::RopeTables(_) => "rope_tables",
        }
    }
}

/// A node: op, input values, name, inferred output types.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<Value>,
    pub outputs: Vec<TensorTy>,
}

/// A graph (a component or a block body).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Graph {
    pub name: String,
    pub inputs: Vec<InputDecl>,
    pub weights: Vec<WeightDecl>,
    pub nodes: Vec<Node>,
    pub outputs: Vec<(String, Value)>,
    /// Block bodies used by `Call`/`Repeat` nodes (nested blocks live in the top graph).
    pub blocks: BTreeMap<String, Graph>,
}

impl Graph {
    /// Type of a value.
    pub fn ty(&self, v: Value) -> &TensorTy {
        &self.nodes[v.node].outputs[v.out]
    }

    /// Number of nodes with this op name (handy in tests).
    pub fn count_op(&self, name: &str) -> usize {
        self.nodes.iter().filter(|n| n.op.name() == name).count()
    }

    /// Every block body, this graph's and nested, by name.
    pub fn all_blocks(&self) -> impl Iterator<Item = (&String, &Graph)> {
        self.blocks.iter()
    }
}
