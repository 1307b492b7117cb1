//! RoPE folding: replace each `RopeTables` node (whose image grid must be known by now)
//! by per-axis constant tables — frame, row and column cos/sin, computed here as the
//! reference does (f32 angle `pos·ω`, then cos/sin) — plus a few broadcast/concat ops
//! that assemble the per-token table. The text positions `txt_offset + k` (the model's
//! rule, bound by the `specialize` pass) are made from an `arange` of the run-time text
//! length and the constant frequencies. The full per-token table is never embedded.

use crate::builder::{GraphBuilder, Tensor};
use crate::error::{DslError, Result};
use crate::ir::{Graph, Op, RopeSpec, Unary};
use crate::passes::{map_all, rewrite};
use crate::shape::Dim;

/// `ω_j = θ^(−2j/d)` for `j < d/2`, as f32.
pub fn freqs(theta: f64, d: usize) -> Vec<f32> {
    (0..d / 2)
        .map(|j| (1.0 / theta.powf((2 * j) as f64 / d as f64)) as f32)
        .collect()
}

/// cos and sin tables `[positions, d/2]` with the angle rounded to f32 first.
pub fn table(theta: f64, d: usize, positions: &[i64]) -> (Vec<f32>, Vec<f32>) {
    let w = freqs(theta, d);
    let mut c = Vec::with_capacity(positions.len() * w.len());
    let mut s = Vec::with_capacity(positions.len() * w.len());
    for &p in positions {
        for &f in &w {
            let a = (p as f32) * f;
            c.push((a as f64).cos() as f32);
            s.push((a as f64).sin() as f32);
        }
    }
    (c, s)
}

/// Image positions along an axis of `n` cells: `i − ⌈n/2⌉` (centered, spec §2.5).
pub fn centered(n: usize) -> Vec<i64> {
    let off = n.div_ceil(2) as i64;
    (0..n as i64).map(|i| i - off).collect()
}

fn fold(b: &mut GraphBuilder, name: &str, spec: &RopeSpec) -> Result<Vec<Tensor>> {
    let consts = (
        spec.grid[0].as_const(),
        spec.grid[1].as_const(),
        spec.txt_offset.as_const(),
    );
    let (gh, gw, m) = match consts {
        (Some(a), Some(c), Some(m)) => (a, c, m),
        _ => {
            return Err(DslError::Pass {
                pass: "rope_fold",
                node: name.to_string(),
                why: format!(
                    "the image grid {}x{} and the text offset {} must be specialized first",
                    spec.grid[0], spec.grid[1], spec.txt_offset
                ),
            })
        }
    };
    let [d0, d1, d2] = spec.axes_dims;
    let half = (d0 + d1 + d2) / 2;
    let l_img = Dim::Const(gh * gw);
    let grid = |d: usize| vec![Dim::Const(gh), Dim::Const(gw), Dim::Const(d)];
    let mut img = vec![];
    let (f_c, f_s) = table(spec.theta, d0, &[0]);
    let (r_c, r_s) = table(spec.theta, d1, &centered(gh));
    let (c_c, c_s) = table(spec.theta, d2, &centered(gw));
    for (part, (f, r, c)) in [("cos", (f_c, r_c, c_c)), ("sin", (f_s, r_s, c_s))] {
        let f = b.const_tensor(&format!("{name}.frame_{part}"), &[1, 1, d0 / 2], f)?;
        let r = b.const_tensor(&format!("{name}.row_{part}"), &[gh, 1, d1 / 2], r)?;
        let c = b.const_tensor(&format!("{name}.col_{part}"), &[1, gw, d2 / 2], c)?;
        let f = b.broadcast_to(f, grid(d0 / 2))?;
        let r = b.broadcast_to(r, grid(d1 / 2))?;
        let c = b.broadcast_to(c, grid(d2 / 2))?;
        let t = b.concat(&[f, r, c], 2)?;
        let t = b.reshape(t, vec![l_img.clone(), Dim::Const(half)])?; // [L_img, half]
        img.push(b.name(t, &format!("{name}.img_{part}")));
    }
    let mut w = freqs(spec.theta, d0);
    w.extend(freqs(spec.theta, d1));
    w.extend(freqs(spec.theta, d2));
    let w = b.const_tensor(&format!("{name}.freqs"), &[1, half], w)?;
    let pos = b.arange(Dim::Const(m), spec.txt_len.clone())?;
    let pos = b.reshape(pos, vec![spec.txt_len.clone(), Dim::Const(1)])?;
    let ang = b.mul(pos, w)?; // [L_txt, half]
    let tc = b.unary(Unary::Cos, ang)?;
    let ts = b.unary(Unary::Sin, ang)?;
    let tc = b.name(tc, &format!("{name}.txt_cos"));
    let ts = b.name(ts, &format!("{name}.txt_sin"));
    Ok(vec![img[0], img[1], tc, ts])
}

/// Fold every `RopeTables` node of `g` and its blocks.
pub fn run(g: &Graph) -> Result<Graph> {
    map_all(g, |g| {
        rewrite(g, |b, node, _| match &node.op {
            Op::RopeTables(spec) => fold(b, &node.name, spec).map(Some),
            _ => Ok(None),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::specialize;
    use crate::GraphBuilder;

    fn rope_graph() -> Graph {
        let mut b = GraphBuilder::new("rope");
        let t = b
            .rope_tables(RopeSpec {
                theta: 10000.0,
                axes_dims: [16, 56, 56],
                grid: [Dim::sym("gh"), Dim::sym("gw")],
                img_len: Dim::sym("L_img"),
                txt_len: Dim::sym("L_txt"),
                txt_offset: Dim::sym("m"),
            })
            .unwrap();
        for (i, n) in ["img_cos", "img_sin", "txt_cos", "txt_sin"]
            .iter()
            .enumerate()
        {
            b.output(n, t[i]).unwrap();
        }
        b.finish()
    }

    #[test]
    fn positions_are_centered() {
        assert_eq!(centered(4), vec![-2, -1, 0, 1]);
        assert_eq!(centered(5), vec![-3, -2, -1, 0, 1]);
    }

    #[test]
    fn folding_needs_a_specialized_grid() {
        let e = run(&rope_graph()).unwrap_err();
        assert!(e.to_string().contains("must be specialized first"), "{e}");
    }

    #[test]
    fn folding_embeds_per_axis_tables_only() {
        // a 1024x512 image: grid 64x32, 2048 tokens, text from m = max(64/2, 32/2) = 32
        let bindings = [("gh", 64), ("gw", 32), ("L_img", 2048), ("m", 32)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        let g = specialize::run(&rope_graph(), &bindings).unwrap();
        let g = run(&g).unwrap();
        assert_eq!(g.count_op("rope_tables"), 0);
        // frame, row, col × (cos, sin) + the text frequencies: 64×(1 + 28/... ) values, not 4096×64
        let consts: usize = g
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::ConstTensor { data, .. } => Some(data.len()),
                _ => None,
            })
            .sum();
        assert_eq!(consts, 2 * (8 + 64 * 28 + 32 * 28) + 64);
        assert_eq!(g.ty(g.outputs[0].1).shape.to_string(), "[2048, 64]");
        assert_eq!(g.ty(g.outputs[2].1).shape.to_string(), "[L_txt, 64]");
        // text positions start at m = max(64/2, 32/2) = 32
        let start = g.nodes.iter().find_map(|n| match &n.op {
            Op::Arange { start, .. } => Some(start.clone()),
            _ => None,
        });
        assert_eq!(start, Some(Dim::Const(32)));
    }

    #[test]
    fn row_table_matches_formula() {
        let (c, s) = table(10000.0, 56, &[-3]);
        let w1 = 10000f64.powf(-2.0 / 56.0);
        assert!((c[1] as f64 - (-3.0 * w1).cos()).abs() < 1e-6);
        assert!((s[1] as f64 - (-3.0 * w1).sin()).abs() < 1e-6);
        assert_eq!(c[0], (-3f64).cos() as f32);
    }
}
