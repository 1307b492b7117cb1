//! The builder model code calls: typed tensor handles, one method per op, names scoped
//! like checkpoint keys, shapes checked as each node is added.

use std::collections::BTreeMap;

use crate::error::{DslError, Result};
use crate::ir::{
    Binary, Graph, InputDecl, MaskKind, Node, Op, Reduce, RopeLayout, RopeSpec, TensorTy, Unary,
    Value, WeightDecl, WeightPart, WeightXform,
};
use crate::ops::infer;
use crate::shape::{DType, Dim, Shape};

/// A handle to a value of the graph being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tensor(pub Value);

/// Builds one [`Graph`].
#[derive(Debug)]
pub struct GraphBuilder {
    g: Graph,
    scope: Vec<String>,
    names: BTreeMap<String, usize>,
}

/// One stream's part of [`GraphBuilder::joint_qkv_heads`]: its QKV projection without bias
/// `[B, L, 3·H·Dh]`, the bias `[3·H·Dh]`, the q and k norm weights `[Dh]`, RoPE cos and sin
/// `[L, Dh/2]`.
#[derive(Debug, Clone, Copy)]
pub struct QkvStream {
    pub qkv: Tensor,
    pub bias: Tensor,
    pub norms: [Tensor; 2],
    pub rope: [Tensor; 2],
}

impl GraphBuilder {
    /// Start a graph.
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            g: Graph {
                name: name.to_string(),
                ..Graph::default()
            },
            scope: vec![],
            names: BTreeMap::new(),
        }
    }

    /// A builder over `g`'s name, inputs, weights and blocks, with no nodes yet: passes
    /// re-add nodes one by one (shapes are inferred again).
    pub(crate) fn shell(g: &Graph) -> Self {
        GraphBuilder {
            g: Graph {
                name: g.name.clone(),
                inputs: g.inputs.clone(),
                weights: g.weights.clone(),
                nodes: vec![],
                outputs: vec![],
                blocks: g.blocks.clone(),
            },
            scope: vec![],
            names: BTreeMap::new(),
        }
    }

    /// Take `g`'s weights and block bodies (passes that rebuild inputs themselves).
    pub(crate) fn adopt_weights_and_blocks(&mut self, g: &Graph) {
        self.g.weights = g.weights.clone();
        self.g.blocks = g.blocks.clone();
    }

    /// A registered block body.
    pub fn block(&self, name: &str) -> Option<&Graph> {
        self.g.blocks.get(name)
    }

    // ---- scoping and names ----

    /// Run `f` with `name` appended to the key prefix (`attn` → `attn.to_q`).
    pub fn scope<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.scope.push(name.to_string());
        let r = f(self);
        self.scope.pop();
        r
    }

    /// The scoped key of `name`.
    pub fn key(&self, name: &str) -> String {
        let mut parts: Vec<&str> = self.scope.iter().map(String::as_str).collect();
        if !name.is_empty() {
            parts.push(name);
        }
        parts.join(".")
    }

    fn unique(&mut self, base: String) -> String {
        let n = self.names.entry(base.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            base
        } else {
            format!("{base}_{}", *n - 1)
        }
    }

    /// The shape of a tensor.
    pub fn shape(&self, t: Tensor) -> &Shape {
        &self.g.ty(t.0).shape
    }

    /// The type of a tensor.
    pub fn ty(&self, t: Tensor) -> &TensorTy {
        self.g.ty(t.0)
    }

    /// Rename the node that made `t` (for readable generated code).
    /// The name of the node that makes `t`.
    pub fn name_of(&self, t: Tensor) -> &str {
        &self.g.nodes[t.0.node].name
    }

    pub fn name(&mut self, t: Tensor, name: &str) -> Tensor {
        let n = self.unique(self.key(name));
        self.g.nodes[t.0.node].name = n;
        t
    }

    /// Add a node with an explicit (scoped) name.
    pub fn node_named(&mut self, name: &str, op: Op, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let name = self.unique(self.key(name));
        let tys: Vec<TensorTy> = inputs.iter().map(|t| self.g.ty(t.0).clone()).collect();
        let outputs = infer(&self.g, &name, &op, &tys)?;
        let id = self.g.nodes.len();
        let n = outputs.len();
        self.g.nodes.push(Node {
            name,
            op,
            inputs: inputs.iter().map(|t| t.0).collect(),
            outputs,
        });
        Ok((0..n).map(|out| Tensor(Value { node: id, out })).collect())
    }

    fn node(&mut self, op: Op, inputs: &[Tensor]) -> Result<Tensor> {
        let base = op.label();
        Ok(self.node_named(base, op, inputs)?[0])
    }

    // ---- leaves ----

    /// A graph input.
    pub fn input(&mut self, name: &str, shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
        if self.g.inputs.iter().any(|i| i.name == name) {
            return Err(DslError::DuplicateName {
                graph: self.g.name.clone(),
                name: name.to_string(),
            });
        }
        let idx = self.g.inputs.len();
        self.g.inputs.push(InputDecl {
            name: name.to_string(),
            ty: TensorTy {
                shape: shape.into(),
                dtype,
            },
        });
        Ok(self.node_named(name, Op::Input(idx), &[])?[0])
    }

    /// A weight under the scoped key `name`, stored with `shape` and `dtype`, loaded
    /// through `xforms`.
    pub fn weight_x(
        &mut self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        xforms: Vec<WeightXform>,
    ) -> Result<Tensor> {
        self.declare(WeightDecl {
            key: self.key(name),
            shape: shape.to_vec(),
            dtype,
            parts: vec![],
            xforms,
        })?;
        Ok(self.node_named(name, Op::Weight(self.g.weights.len() - 1), &[])?[0])
    }

    /// A weight named by the scoped key `name` (not a checkpoint key) made at load time by
    /// concatenating the stored tensors `parts` (scoped keys, stored shapes; same trailing
    /// dims) along axis 0, in order.
    pub fn weight_cat(
        &mut self,
        name: &str,
        parts: &[(&str, &[usize])],
        dtype: DType,
    ) -> Result<Tensor> {
        let key = self.key(name);
        let bad = |why: String| DslError::BadAttr {
            node: key.clone(),
            op: "weight",
            why,
        };
        let first = parts
            .first()
            .ok_or_else(|| bad("a concatenated weight needs parts".into()))?;
        if first.1.is_empty() {
            return Err(bad(format!("part `{}` is a scalar", first.0)));
        }
        let mut shape = first.1.to_vec();
        for (k, s) in &parts[1..] {
            if s.len() != shape.len() || s[1..] != shape[1..] {
                return Err(bad(format!(
                    "part `{k}` {s:?} does not concatenate with {:?} along axis 0",
                    first.1
                )));
            }
            shape[0] += s[0];
        }
        let parts = parts
            .iter()
            .map(|(k, s)| WeightPart {
                key: self.key(k),
                shape: s.to_vec(),
            })
            .collect();
        self.declare(WeightDecl {
            key,
            shape,
            dtype,
            parts,
            xforms: vec![],
        })?;
        Ok(self.node_named(name, Op::Weight(self.g.weights.len() - 1), &[])?[0])
    }

    /// Add `decl` unless its key, or a checkpoint key it reads, is already declared.
    fn declare(&mut self, decl: WeightDecl) -> Result<()> {
        let mut keys = vec![decl.key.clone()];
        keys.extend(decl.parts.iter().map(|p| p.key.clone()));
        for (i, k) in keys.iter().enumerate() {
            let taken =
                keys[..i].contains(k) || self.g.weights.iter().any(|w| w.key == *k || w.reads(k));
            if taken {
                return Err(DslError::DuplicateName {
                    graph: self.g.name.clone(),
                    name: k.clone(),
                });
            }
        }
        self.g.weights.push(decl);
        Ok(())
    }

    /// A bf16 weight used as stored.
    pub fn weight(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.weight_x(name, shape, DType::BF16, vec![])
    }

    /// `[x, name.weight, name.bias?]`: a layer's input followed by its parameters, the
    /// weight `[out, ...]` (with its load-time transforms) and, if `bias`, a bias `[out]`.
    fn layer_inputs(
        &mut self,
        name: &str,
        x: Tensor,
        weight_shape: &[usize],
        xforms: Vec<WeightXform>,
        bias: bool,
    ) -> Result<Vec<Tensor>> {
        let mut ins = vec![x];
        self.scope(name, |b| {
            ins.push(b.weight_x("weight", weight_shape, DType::BF16, xforms)?);
            if bias {
                ins.push(b.weight("bias", &weight_shape[..1])?);
            }
            Ok(())
        })?;
        Ok(ins)
    }

    /// A scalar constant.
    pub fn scalar(&mut self, v: f64) -> Result<Tensor> {
        self.node(Op::Scalar(v), &[])
    }

    /// A small constant f32 tensor.
    pub fn const_tensor(&mut self, name: &str, shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        Ok(self.node_named(
            name,
            Op::ConstTensor {
                shape: shape.to_vec(),
                data,
            },
            &[],
        )?[0])
    }

    /// `start, start+1, …` (`len` values) as f32.
    pub fn arange(&mut self, start: impl Into<Dim>, len: impl Into<Dim>) -> Result<Tensor> {
        self.node(
            Op::Arange {
                start: start.into(),
                len: len.into(),
            },
            &[],
        )
    }

    // ---- linear algebra ----

    /// `x @ W^T + b` with weights `name.weight` `[out, in]` and `name.bias` `[out]`.
    pub fn linear(
        &mut self,
        name: &str,
        x: Tensor,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Tensor> {
        let ins = self.layer_inputs(name, x, &[d_out, d_in], vec![], bias)?;
        Ok(self.node_named(name, Op::Linear { bias }, &ins)?[0])
    }

    /// A linear whose weight is stored in another shape of the same size (e.g. a conv
    /// over whole patches: `[out, C, T, P, P]`), reshaped to `[out, in]` at load.
    pub fn linear_stored(
        &mut self,
        name: &str,
        x: Tensor,
        stored: &[usize],
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Tensor> {
        let reshape = vec![WeightXform::Reshape(vec![d_out, d_in])];
        let ins = self.layer_inputs(name, x, stored, reshape, bias)?;
        Ok(self.node_named(name, Op::Linear { bias }, &ins)?[0])
    }

    /// Several linears over the same input as one: `x @ W^T + b` with `name.weight`
    /// `[Σouts, in]` made at load time from the stored `parts[i].weight` `[outs[i], in]`
    /// concatenated along the output axis (and `name.bias` from the `parts[i].bias`), so
    /// one matmul gives `[.., Σouts]` (split it with [`Self::split`]). The checkpoint keys
    /// stay the parts'; `name` names the node and the weights.
    pub fn linear_cat(
        &mut self,
        name: &str,
        parts: &[&str],
        x: Tensor,
        d_in: usize,
        outs: &[usize],
        bias: bool,
    ) -> Result<Tensor> {
        if parts.len() != outs.len() {
            return Err(DslError::BadAttr {
                node: self.key(name),
                op: "linear",
                why: format!("{} parts but {} output sizes", parts.len(), outs.len()),
            });
        }
        let mut ins = vec![x];
        let params: &[&str] = if bias {
            &["weight", "bias"]
        } else {
            &["weight"]
        };
        for &what in params {
            let keys: Vec<String> = parts.iter().map(|p| format!("{p}.{what}")).collect();
            let shapes: Vec<Vec<usize>> = outs
                .iter()
                .map(|&o| {
                    if what == "weight" {
                        vec![o, d_in]
                    } else {
                        vec![o]
                    }
                })
                .collect();
            let ps: Vec<(&str, &[usize])> = keys
                .iter()
                .map(String::as_str)
                .zip(shapes.iter().map(Vec::as_slice))
                .collect();
            ins.push(self.weight_cat(&format!("{name}.{what}"), &ps, DType::BF16)?);
        }
        Ok(self.node_named(name, Op::Linear { bias }, &ins)?[0])
    }

    /// Batched matrix product.
    pub fn matmul(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.node(Op::MatMul, &[a, b])
    }

    /// Rows `ids` of the table `name.weight` `[vocab, dim]`.
    pub fn embedding(
        &mut self,
        name: &str,
        ids: Tensor,
        vocab: usize,
        dim: usize,
    ) -> Result<Tensor> {
        let table = self.scope(name, |b| b.weight("weight", &[vocab, dim]))?;
        Ok(self.node_named(name, Op::Embedding, &[table, ids])?[0])
    }

    /// Rows `ids` of a computed `[N, D]` value (what [`Self::embedding`] does with a weight).
    pub fn take_rows(&mut self, table: Tensor, ids: Tensor) -> Result<Tensor> {
        self.node(Op::Embedding, &[table, ids])
    }

    // ---- norms ----

    /// RMSNorm over the last axis with weight `name.weight` `[dim]`.
    pub fn rms_norm(&mut self, name: &str, x: Tensor, dim: usize, eps: f64) -> Result<Tensor> {
        let w = self.scope(name, |b| b.weight("weight", &[dim]))?;
        Ok(self.node_named(name, Op::RmsNorm { eps, affine: true }, &[x, w])?[0])
    }

    /// LayerNorm over the last axis, no affine.
    pub fn layer_norm(&mut self, x: Tensor, eps: f64) -> Result<Tensor> {
        self.node(Op::LayerNorm { eps }, &[x])
    }

    /// `LayerNorm(x)·(1 + scale) + shift` over the last axis (no affine), as one op;
    /// x `[B, L, D]`, shift and scale `[B, 1, D]`.
    pub fn norm_modulate(
        &mut self,
        x: Tensor,
        shift: Tensor,
        scale: Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        self.node(Op::NormModulate { eps }, &[x, shift, scale])
    }

    /// `x + gate·y` as one op; x, y `[B, L, D]`, gate `[B, 1, D]`.
    pub fn gate_residual(&mut self, x: Tensor, y: Tensor, gate: Tensor) -> Result<Tensor> {
        self.node(Op::GateResidual, &[x, y, gate])
    }

    /// `h = x + gate·y` and `LayerNorm(h)·(1 + scale) + shift`, as one op: `(h, modulated)`.
    pub fn gate_residual_norm_modulate(
        &mut self,
        x: Tensor,
        y: Tensor,
        gate: Tensor,
        [shift, scale]: [Tensor; 2],
        eps: f64,
    ) -> Result<(Tensor, Tensor)> {
        let op = Op::GateResidualNormModulate { eps };
        let o = self.node_named(op.label(), op, &[x, y, gate, shift, scale])?;
        Ok((o[0], o[1]))
    }

    /// Joint-attention heads `[B, H, L_text + L_image, Dh]` (q, k, v) of a text and an image
    /// stream ([`Op::JointQkvHeads`]), text rows first.
    pub fn joint_qkv_heads(
        &mut self,
        heads: usize,
        [txt, img]: [QkvStream; 2],
        eps: f64,
    ) -> Result<[Tensor; 3]> {
        let op = Op::JointQkvHeads { heads, eps };
        let mut ins = vec![];
        for s in [txt, img] {
            ins.extend([s.qkv, s.bias, s.norms[0], s.norms[1], s.rope[0], s.rope[1]]);
        }
        let o = self.node_named(op.label(), op, &ins)?;
        Ok([o[0], o[1], o[2]])
    }

    /// The VAE's channel L2 norm with `name.gamma` stored as `gamma_shape` (e.g. `[C,1,1,1]`).
    pub fn channel_l2_norm(
        &mut self,
        name: &str,
        x: Tensor,
        gamma_shape: &[usize],
    ) -> Result<Tensor> {
        let c = gamma_shape.first().copied().unwrap_or(0);
        let xf = if gamma_shape.len() == 1 {
            vec![]
        } else {
            vec![WeightXform::Reshape(vec![c])]
        };
        let g = self.scope(name, |b| b.weight_x("gamma", gamma_shape, DType::BF16, xf))?;
        Ok(self.node_named(name, Op::ChannelL2Norm { eps: 1e-12 }, &[x, g])?[0])
    }

    // ---- attention ----

    /// Attention over `[B, H, L, D]` tensors.
    pub fn sdpa(
        &mut self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        scale: f64,
        mask: MaskKind,
        key_mask: Option<Tensor>,
    ) -> Result<Tensor> {
        let mut ins = vec![q, k, v];
        ins.extend(key_mask);
        self.node(Op::Sdpa { scale, mask }, &ins)
    }

    /// Rotary embedding of `[B, L, H, D]` with `[L, D/2]` tables.
    pub fn rope(
        &mut self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        layout: RopeLayout,
    ) -> Result<Tensor> {
        self.node(Op::Rope { layout }, &[x, cos, sin])
    }

    /// The 3-axis RoPE tables (img cos, img sin, txt cos, txt sin), folded to constants by
    /// the `rope_fold` pass.
    pub fn rope_tables(&mut self, spec: RopeSpec) -> Result<[Tensor; 4]> {
        let v = self.node_named("rope", Op::RopeTables(spec), &[])?;
        Ok([v[0], v[1], v[2], v[3]])
    }

    // ---- elementwise ----

    /// A unary op.
    pub fn unary(&mut self, op: Unary, x: Tensor) -> Result<Tensor> {
        self.node(Op::Unary(op), &[x])
    }
    /// SiLU.
    pub fn silu(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary(Unary::Silu, x)
    }
    /// GELU, tanh approximation.
    pub fn gelu_tanh(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary(Unary::GeluTanh, x)
    }
    /// GELU with the error function.
    pub fn gelu(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary(Unary::Gelu, x)
    }
    /// A binary op with broadcasting.
    pub fn binary(&mut self, op: Binary, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.node(Op::Binary(op), &[a, b])
    }
    /// `a + b`.
    pub fn add(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary(Binary::Add, a, b)
    }
    /// `a - b`.
    pub fn sub(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary(Binary::Sub, a, b)
    }
    /// `a · b`.
    pub fn mul(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary(Binary::Mul, a, b)
    }
    /// `a / b`.
    pub fn div(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary(Binary::Div, a, b)
    }
    /// `x + v`.
    pub fn add_scalar(&mut self, x: Tensor, v: f64) -> Result<Tensor> {
        let s = self.scalar(v)?;
        self.add(x, s)
    }
    /// `x · v`.
    pub fn mul_scalar(&mut self, x: Tensor, v: f64) -> Result<Tensor> {
        let s = self.scalar(v)?;
        self.mul(x, s)
    }
    /// Softmax along `axis`.
    pub fn softmax(&mut self, x: Tensor, axis: isize) -> Result<Tensor> {
        self.node(Op::Softmax { axis }, &[x])
    }
    /// A reduction.
    pub fn reduce(
        &mut self,
        kind: Reduce,
        x: Tensor,
        axis: isize,
        keep_dims: bool,
    ) -> Result<Tensor> {
        self.node(
            Op::Reduce {
                kind,
                axis,
                keep_dims,
            },
            &[x],
        )
    }
    /// Cast.
    pub fn cast(&mut self, x: Tensor, dtype: DType) -> Result<Tensor> {
        self.node(Op::Cast(dtype), &[x])
    }
    /// Cast `x` to whatever dtype `like` has at run time.
    pub fn cast_like(&mut self, x: Tensor, like: Tensor) -> Result<Tensor> {
        self.node(Op::CastLike, &[x, like])
    }
    /// Clamp to `[min, max]`.
    pub fn clamp(&mut self, x: Tensor, min: f64, max: f64) -> Result<Tensor> {
        self.node(Op::Clamp { min, max }, &[x])
    }

    // ---- convolution ----

    /// NHWC 2-D conv; weight `name.weight` stored OIHW `[cout, cin, k, k]` (PyTorch), loaded
    /// as OHWI; optional `name.bias`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        &mut self,
        name: &str,
        x: Tensor,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: [(usize, usize); 2],
        bias: bool,
    ) -> Result<Tensor> {
        let ohwi = vec![WeightXform::Permute(vec![0, 2, 3, 1])];
        let ins = self.layer_inputs(name, x, &[cout, cin, k, k], ohwi, bias)?;
        Ok(self.node_named(
            name,
            Op::Conv2d {
                stride: [stride; 2],
                padding,
                bias,
            },
            &ins,
        )?[0])
    }

    /// A causal 3-D conv as in PyTorch: weight `[cout, cin, k, k, k]`, spatial padding
    /// `k/2`, input `[B, T, H, W, C]`.
    pub fn causal_conv3d(
        &mut self,
        name: &str,
        x: Tensor,
        cin: usize,
        cout: usize,
        k: usize,
        bias: bool,
    ) -> Result<Tensor> {
        let ins = self.layer_inputs(name, x, &[cout, cin, k, k, k], vec![], bias)?;
        Ok(self.node_named(name, Op::CausalConv3d { pad: k / 2, bias }, &ins)?[0])
    }

    /// Nearest 2× upsampling of NHWC.
    pub fn upsample2x(&mut self, x: Tensor) -> Result<Tensor> {
        self.node(Op::Upsample2x, &[x])
    }

    // ---- shapes ----

    /// Reshape.
    pub fn reshape(&mut self, x: Tensor, dims: impl Into<Shape>) -> Result<Tensor> {
        self.node(Op::Reshape(dims.into().0), &[x])
    }
    /// Permute axes.
    pub fn transpose(&mut self, x: Tensor, perm: &[usize]) -> Result<Tensor> {
        self.node(Op::Transpose(perm.to_vec()), &[x])
    }
    /// Broadcast.
    pub fn broadcast_to(&mut self, x: Tensor, dims: impl Into<Shape>) -> Result<Tensor> {
        self.node(Op::BroadcastTo(dims.into().0), &[x])
    }
    /// Concatenate along `axis`.
    pub fn concat(&mut self, xs: &[Tensor], axis: usize) -> Result<Tensor> {
        self.node(Op::Concat { axis }, xs)
    }
    /// `x[.., start..end, ..]`.
    pub fn slice(
        &mut self,
        x: Tensor,
        axis: usize,
        start: impl Into<Dim>,
        end: impl Into<Dim>,
    ) -> Result<Tensor> {
        self.node(
            Op::Slice {
                axis,
                start: start.into(),
                end: end.into(),
            },
            &[x],
        )
    }
    /// The shares of a sequence split over `parts` ranks, gathered along `axis`
    /// ([`Op::GatherSequence`]): `[.., n, ..]` → `[.., parts·n, ..]`.
    pub fn gather_sequence(&mut self, x: Tensor, axis: usize, parts: usize) -> Result<Tensor> {
        self.node(Op::GatherSequence { axis, parts }, &[x])
    }
    /// Split along `axis` into pieces of the given sizes.
    pub fn split(&mut self, x: Tensor, axis: usize, sizes: &[Dim]) -> Result<Vec<Tensor>> {
        let mut start = Dim::Const(0);
        let mut out = vec![];
        for s in sizes {
            let end = start.add(s);
            out.push(self.slice(x, axis, start.clone(), end.clone())?);
            start = end;
        }
        let total = &self.shape(x).0[axis];
        if *total != start {
            return Err(DslError::BadAttr {
                node: self.key("split"),
                op: "split",
                why: format!(
                    "sizes add up to {start}, axis {axis} of {} is {total}",
                    self.shape(x)
                ),
            });
        }
        Ok(out)
    }
    /// Split along `axis` into `n` equal pieces.
    pub fn chunk(&mut self, x: Tensor, n: usize, axis: usize) -> Result<Vec<Tensor>> {
        let d = self
            .shape(x)
            .0
            .get(axis)
            .cloned()
            .ok_or_else(|| DslError::BadAttr {
                node: self.key("chunk"),
                op: "chunk",
                why: format!("axis {axis} out of range"),
            })?;
        let piece = d.div_exact(n).ok_or_else(|| DslError::NotDivisible {
            what: format!("{} axis {axis} ({d})", self.key("chunk")),
            value: d.as_const().unwrap_or(0),
            by: n,
        })?;
        self.split(x, axis, &vec![piece; n])
    }

    // ---- blocks ----

    fn register(&mut self, block: &Graph) -> Result<()> {
        for (n, b) in &block.blocks {
            self.register_named(n, b)?;
        }
        let mut body = block.clone();
        body.blocks.clear();
        self.register_named(&block.name, &body)
    }

    fn register_named(&mut self, name: &str, body: &Graph) -> Result<()> {
        match self.g.blocks.get(name) {
            Some(prev) if prev != body => Err(DuplicateBlock(name).into()),
            Some(_) => Ok(()),
            None => {
                self.g.blocks.insert(name.to_string(), body.clone());
                Ok(())
            }
        }
    }

    /// Call a block once with weights under the scoped `prefix`.
    pub fn call(&mut self, block: &Graph, prefix: &str, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.register(block)?;
        let prefix = self.key(prefix);
        self.node_named(
            &block.name,
            Op::Call {
                block: block.name.clone(),
                prefix,
            },
            inputs,
        )
    }

    /// Call a block `count` times with weights under `prefix.{i}`, carrying the first
    /// `carry` inputs through.
    pub fn repeat(
        &mut self,
        block: &Graph,
        prefix: &str,
        count: usize,
        carry: usize,
        inputs: &[Tensor],
    ) -> Result<Vec<Tensor>> {
        self.scan(block, prefix, count, [carry, 0], inputs)
    }

    /// Call a block `count` times with weights under `prefix.{i}` ([`Op::Repeat`]): of the
    /// inputs, the first `carry` are carried through, the next `sliced` (`[count, ..]`)
    /// give call `i` their row `i`, the rest go to every call; the outputs are the carried
    /// values, then every other block output stacked over the calls (`[count, ..]`).
    pub fn scan(
        &mut self,
        block: &Graph,
        prefix: &str,
        count: usize,
        [carry, sliced]: [usize; 2],
        inputs: &[Tensor],
    ) -> Result<Vec<Tensor>> {
        self.register(block)?;
        let prefix = self.key(prefix);
        self.node_named(
            prefix
                .rsplit('.')
                .next()
                .unwrap_or(&prefix)
                .to_string()
                .as_str(),
            Op::Repeat {
                block: block.name.clone(),
                prefix,
                count,
                carry,
                sliced,
            },
            inputs,
        )
    }

    // ---- finish ----

    /// Mark an output.
    pub fn output(&mut self, name: &str, t: Tensor) -> Result<()> {
        if self.g.outputs.iter().any(|(n, _)| n == name) {
            return Err(DslError::DuplicateName {
                graph: self.g.name.clone(),
                name: name.to_string(),
            });
        }
        self.g.outputs.push((name.to_string(), t.0));
        Ok(())
    }

    /// The finished graph.
    pub fn finish(self) -> Graph {
        self.g
    }
}

struct DuplicateBlock<'a>(&'a str);

impl From<DuplicateBlock<'_>> for DslError {
    fn from(d: DuplicateBlock<'_>) -> DslError {
        DslError::DuplicateName {
            graph: "<blocks>".into(),
            name: d.0.to_string(),
        }
    }
}
