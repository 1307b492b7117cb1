//! A module generated against a shared module imports what the shared one has (after
//! checking it is the same body) and emits only the rest.

use graph_codegen::{generate_string, CodegenError, Shared, Spec};
use graph_dsl::{DType, Dim, Graph, GraphBuilder};

fn body(width: usize) -> Graph {
    let mut b = GraphBuilder::new("blk");
    let x = b
        .input("x", [Dim::sym("B"), Dim::Const(width)], DType::F32)
        .unwrap();
    let y = b.linear("fc", x, width, width, true).unwrap();
    b.output("y", y).unwrap();
    b.finish()
}

fn user(width: usize) -> Graph {
    let mut b = GraphBuilder::new("net");
    let x = b
        .input("x", [Dim::sym("B"), Dim::Const(width)], DType::F32)
        .unwrap();
    let y = b.repeat(&body(width), "layers", 4, 1, &[x]).unwrap();
    b.output("y", y[0]).unwrap();
    b.finish()
}

fn spec(shared: Option<Shared>) -> Spec {
    Spec {
        module: "m".into(),
        title: "test".into(),
        consts: vec![],
        shared,
        extra: Default::default(),
    }
}

#[test]
fn shared_bodies_are_imported_not_emitted() {
    let sh = Shared {
        path: "super::common".into(),
        graphs: vec![body(8)],
    };
    let code = generate_string(&spec(Some(sh)), &[user(8)]).unwrap();
    assert!(code.contains("pub use super::common::blk;"), "{code}");
    assert!(
        code.contains("pub use super::common::BlkWeights;"),
        "{code}"
    );
    assert!(code.contains("pub use super::common::LoadError;"), "{code}");
    assert!(!code.contains("pub fn blk("), "{code}");
    assert!(code.contains("pub fn net("), "{code}");
    let alone = generate_string(&spec(None), &[user(8)]).unwrap();
    assert!(alone.contains("pub fn blk("));
}

#[test]
fn a_body_that_differs_from_the_shared_one_is_an_error() {
    let sh = Shared {
        path: "super::common".into(),
        graphs: vec![body(4)],
    };
    let e = graph_codegen::generate(&spec(Some(sh)), &[user(8)]).unwrap_err();
    assert!(
        matches!(e, CodegenError::NotShared(ref n) if n == "blk"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "graph `blk` differs from the shared module's graph of that name"
    );
}
