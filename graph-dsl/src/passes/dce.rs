//! Dead-code elimination: drop nodes no output needs, weights no node reads, and block
//! bodies no node calls. Inputs stay (they are the function's signature).

use std::collections::BTreeSet;

use crate::error::Result;
use crate::ir::{Graph, Op};

fn live_nodes(g: &Graph) -> BTreeSet<usize> {
    let mut live = BTreeSet::new();
    let mut stack: Vec<usize> = g.outputs.iter().map(|(_, v)| v.node).collect();
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            stack.extend(g.nodes[n].inputs.iter().map(|v| v.node));
        }
    }
    live
}

fn prune(g: &Graph) -> Result<Graph> {
    let live = live_nodes(g);
    let mut out = g.clone();
    // keep live nodes, renumbered in order
    let mut map = vec![usize::MAX; g.nodes.len()];
    out.nodes = vec![];
    for (i, n) in g.nodes.iter().enumerate() {
        if live.contains(&i) {
            map[i] = out.nodes.len();
            let mut n = n.clone();
            for v in &mut n.inputs {
                v.node = map[v.node];
            }
            out.nodes.push(n);
        }
    }
    for (_, v) in &mut out.outputs {
        v.node = map[v.node];
    }
    // keep weights read by a live node, renumbered in order
    let mut used: Vec<usize> = out
        .nodes
        .iter()
        .filter_map(|n| match n.op {
            Op::Weight(w) => Some(w),
            _ => None,
        })
        .collect();
    used.sort();
    used.dedup();
    out.weights = used.iter().map(|&w| g.weights[w].clone()).collect();
    for n in &mut out.nodes {
        if let Op::Weight(w) = &mut n.op {
            *w = used.binary_search(w).unwrap_or(*w);
        }
    }
    Ok(out)
}

/// Remove dead nodes, weights and blocks from `g` and its block bodies.
pub fn run(g: &Graph) -> Result<Graph> {
    let mut top = prune(g)?;
    let mut blocks = std::collections::BTreeMap::new();
    for (name, body) in &top.blocks {
        let mut with = body.clone();
        with.blocks = top.blocks.clone();
        let mut done = prune(&with)?;
        done.blocks.clear();
        blocks.insert(name.clone(), done);
    }
    // keep only called blocks (transitively)
    let mut called = BTreeSet::new();
    let mut stack = vec![&top];
    while let Some(g) = stack.pop() {
        for n in &g.nodes {
            if let Op::Call { block, .. } | Op::Repeat { block, .. } = &n.op {
                if called.insert(block.clone()) {
                    if let Some(b) = blocks.get(block) {
                        stack.push(b);
                    }
                }
            }
        }
    }
    blocks.retain(|k, _| called.contains(k));
    top.blocks = blocks;
    Ok(top)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, GraphBuilder};

    #[test]
    fn dead_nodes_and_weights_go() {
        let mut b = GraphBuilder::new("d");
        let x = b.input("x", [2usize, 4], DType::F32).unwrap();
        let y = b.linear("used", x, 4, 4, true).unwrap();
        let _dead = b.linear("unused", x, 4, 8, false).unwrap();
        b.output("y", y).unwrap();
        let g = b.finish();
        assert_eq!(g.weights.len(), 3);
        let d = run(&g).unwrap();
        let keys: Vec<&str> = d.weights.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, ["used.weight", "used.bias"]);
        assert_eq!(d.count_op("linear"), 1);
        assert_eq!(d.inputs.len(), 1);
    }

    #[test]
    fn a_concatenated_weight_stays_whole() {
        let mut b = GraphBuilder::new("d");
        let x = b.input("x", [2usize, 4], DType::F32).unwrap();
        let _dead = b.linear("unused", x, 4, 8, false).unwrap();
        let y = b
            .linear_cat("qk", &["q", "k"], x, 4, &[4, 2], true)
            .unwrap();
        b.output("y", y).unwrap();
        let d = run(&b.finish()).unwrap();
        let keys: Vec<&str> = d.weights.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, ["qk.weight", "qk.bias"]);
        assert_eq!(d.weights[0].parts.len(), 2);
        assert_eq!(d.ty(d.outputs[0].1).shape.to_string(), "[2, 6]");
    }
}
