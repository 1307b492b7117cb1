//! Shape rules of the collectives: ops between the processes of a group.

use super::{one, ty, Cx};
use crate::error::Result;
use crate::ir::{Op, TensorTy};
use crate::shape::Shape;

pub(super) fn infer(cx: &Cx) -> Result<Vec<TensorTy>> {
    match cx.op {
        Op::GatherSequence { axis, parts } => {
            cx.arity(1)?;
            let x = cx.s(0);
            if *parts == 0 {
                return Err(cx.attr("a sequence in 0 parts"));
            }
            if *axis >= x.rank() {
                return Err(cx.bad(x, format!("no axis {axis} to gather along")));
            }
            let mut out = x.0.clone();
            out[*axis] = out[*axis].mul(*parts);
            one(ty(Shape(out), cx.dt(0)))
        }
        op => unreachable!("{} is not a collective", op.name()),
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, Dim, DslError, GraphBuilder};

    #[test]
    fn gathers_multiply_the_axis_and_check_it() {
        let mut b = GraphBuilder::new("t");
        let x = b
            .input(
                "x",
                [Dim::sym("B"), Dim::Const(4), Dim::sym("L"), Dim::Const(8)],
                DType::BF16,
            )
            .unwrap();
        let y = b.gather_sequence(x, 2, 3).unwrap();
        assert_eq!(
            b.shape(y).0,
            vec![
                Dim::sym("B"),
                Dim::Const(4),
                Dim::sym("L").mul(3),
                Dim::Const(8)
            ]
        );
        assert_eq!(b.ty(y).dtype, DType::BF16);
        let e = b.gather_sequence(x, 4, 2).unwrap_err();
        assert!(matches!(e, DslError::BadShape { .. }), "{e}");
        let e = b.gather_sequence(x, 1, 0).unwrap_err();
        assert!(matches!(e, DslError::BadAttr { .. }), "{e}");
    }
}
