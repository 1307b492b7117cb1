//! Passes: separate, named steps over a [`Graph`], each in its own file with its own
//! tests, run in this order by [`run`]:
//!
//! 1. [`specialize`]: bind symbolic dims (resolution → every image-side shape);
//! 2. [`cfg_batch`]: decide how the two CFG halves share attention (no masks in the hot loop);
//! 3. [`rope_fold`]: RoPE tables → per-axis constants plus a few assembly ops;
//! 4. [`layout`]: single-frame causal 3-D convs → NHWC 2-D convs (weight changes recorded);
//! 5. [`dce`]: drop what no output needs.

pub mod cfg_batch;
pub mod dce;
pub mod layout;
pub mod rope_fold;
pub mod specialize;

use std::collections::BTreeMap;

use crate::builder::{GraphBuilder, Tensor};
use crate::error::Result;
use crate::ir::{Graph, Node};

pub use cfg_batch::{CfgJoin, CfgSymbols};

/// What the pipeline of passes is asked to do.
#[derive(Debug, Clone, Default)]
pub struct PassConfig {
    /// Symbol values (the model's: e.g. every image-side size of one resolution).
    pub bindings: BTreeMap<String, usize>,
    /// How CFG halves meet in attention.
    pub cfg: CfgJoin,
    /// The model's batch and text-length symbols (for `CfgJoin::SplitHalves`).
    pub cfg_symbols: CfgSymbols,
    /// Fold single-frame causal 3-D convs into 2-D convs (T = 1).
    pub single_frame: bool,
}

/// Run every pass in order.
pub fn run(g: &Graph, cfg: &PassConfig) -> Result<Graph> {
    let g = specialize::run(g, &cfg.bindings)?;
    let g = cfg_batch::run(&g, cfg.cfg, &cfg.cfg_symbols)?;
    let g = rope_fold::run(&g)?;
    let g = if cfg.single_frame {
        layout::run(&g)?
    } else {
        g
    };
    dce::run(&g)
}

/// Rebuild `g` node by node: `f` may replace a node (given its already-mapped inputs) by
/// new nodes and return their outputs; otherwise the node is copied. Every shape is
/// inferred again, so a pass that changes shapes gets them checked.
pub(crate) fn rewrite(
    g: &Graph,
    mut f: impl FnMut(&mut GraphBuilder, &Node, &[Tensor]) -> Result<Option<Vec<Tensor>>>,
) -> Result<Graph> {
    let mut b = GraphBuilder::shell(g);
    let mut map: Vec<Vec<Tensor>> = Vec::with_capacity(g.nodes.len());
    for node in &g.nodes {
        let ins: Vec<Tensor> = node.inputs.iter().map(|v| map[v.node][v.out]).collect();
        let outs = match f(&mut b, node, &ins)? {
            Some(outs) => outs,
            None => b.node_named(&node.name, node.op.clone(), &ins)?,
        };
        map.push(outs);
    }
    for (name, v) in &g.outputs {
        b.output(name, map[v.node][v.out])?;
    }
    Ok(b.finish())
}

/// Apply `f` to every block body and then to the graph itself (block bodies first, so a
/// caller's shapes are inferred against the rewritten bodies).
pub(crate) fn map_all(g: &Graph, mut f: impl FnMut(&Graph) -> Result<Graph>) -> Result<Graph> {
    let mut top = g.clone();
    let mut blocks = BTreeMap::new();
    for (name, body) in &g.blocks {
        // a body may call other bodies: let it see them while it is rewritten
        let mut with = body.clone();
        with.blocks = g.blocks.clone();
        let mut done = f(&with)?;
        done.blocks.clear();
        blocks.insert(name.clone(), done);
    }
    top.blocks = blocks;
    f(&top)
}
