//! The VAE decoder pieces (`AutoencoderKLQwenImage`, spec §4), written as the PyTorch model
//! is: NTHWC with causal 3-D convs. The `layout` pass folds the single frame away, so the
//! generated code runs NHWC 2-D convs.

use graph_dsl::{DType, Dim, Graph, GraphBuilder, Result};

/// `QwenImageResidualBlock(cin → cout)` (spec §4.2): `conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))
/// + shortcut(x)`, the shortcut a 1×1×1 conv when `cin ≠ cout`.
///
/// The spatial size stays symbolic (`hf`, `wf`): the block has no reshape, so its code is
/// the same at every resolution and stage.
// x: [B, 1, hf, wf, cin] -> [B, 1, hf, wf, cout]
pub fn residual_block(name: &str, cin: usize, cout: usize) -> Result<Graph> {
    let mut b = GraphBuilder::new(name);
    let shape = [
        Dim::sym("B"),
        Dim::Const(1),
        Dim::sym("hf"),
        Dim::sym("wf"),
        Dim::Const(cin),
    ];
    let x = b.input("x", shape, DType::F32)?;
    let sc = if cin != cout {
        b.causal_conv3d("conv_shortcut", x, cin, cout, 1, true)?
    } else {
        x
    };
    let y = b.channel_l2_norm("norm1", x, &[cin, 1, 1, 1])?;
    let y = b.silu(y)?;
    let y = b.causal_conv3d("conv1", y, cin, cout, 3, true)?;
    let y = b.channel_l2_norm("norm2", y, &[cout, 1, 1, 1])?;
    let y = b.silu(y)?;
    let y = b.causal_conv3d("conv2", y, cout, cout, 3, true)?;
    let y = b.add(y, sc)?;
    b.output("y", y)?;
    Ok(b.finish())
}
