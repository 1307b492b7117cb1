//! Dims, shapes and dtypes.
//!
//! A [`Dim`] is a constant, a symbol (`"L_txt"`, `"B"`), or a small affine sum of symbols
//! (`L_txt+16`, made by concatenating a text and an image sequence). Specialization binds
//! symbols to numbers; what stays symbolic is read from an input's shape at run time.

use std::collections::BTreeMap;
use std::fmt;

/// One dimension of a shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    /// Known at compile time.
    Const(usize),
    /// A named size, bound by specialization or read from an input at run time.
    Sym(String),
    /// `konst + Σ coeff·sym` (normalized: at least one term, and not a plain symbol).
    Affine {
        terms: Vec<(String, i64)>,
        konst: i64,
    },
}

impl Dim {
    /// A symbolic dim.
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(name.to_string())
    }

    /// The constant value, if the dim is known.
    pub fn as_const(&self) -> Option<usize> {
        match self {
            Dim::Const(n) => Some(*n),
            _ => None,
        }
    }

    /// Symbols this dim mentions, sorted.
    pub fn symbols(&self) -> Vec<String> {
        match self {
            Dim::Const(_) => vec![],
            Dim::Sym(s) => vec![s.clone()],
            Dim::Affine { terms, .. } => terms.iter().map(|(s, _)| s.clone()).collect(),
        }
    }

    fn to_affine(&self) -> (BTreeMap<String, i64>, i64) {
        match self {
            Dim::Const(n) => (BTreeMap::new(), *n as i64),
            Dim::Sym(s) => (BTreeMap::from([(s.clone(), 1)]), 0),
            Dim::Affine { terms, konst } => (terms.iter().cloned().collect(), *konst),
        }
    }

    fn from_affine(terms: BTreeMap<String, i64>, konst: i64) -> Option<Dim> {
        let terms: Vec<(String, i64)> = terms.into_iter().filter(|(_, c)| *c != 0).collect();
        if terms.is_empty() {
            return usize::try_from(konst).ok().map(Dim::Const);
        }
        if terms.len() == 1 && terms[0].1 == 1 && konst == 0 {
            return Some(Dim::Sym(terms[0].0.clone()));
        }
        Some(Dim::Affine { terms, konst })
    }

    /// `self + other`.
    pub fn add(&self, other: &Dim) -> Dim {
        let (mut a, ka) = self.to_affine();
        let (b, kb) = other.to_affine();
        for (s, c) in b {
            *a.entry(s).or_insert(0) += c;
        }
        Dim::from_affine(a, ka + kb).expect("a sum of non-negative dims is non-negative")
    }

    /// `self - other`, or `None` if the result could be negative.
    pub fn sub(&self, other: &Dim) -> Option<Dim> {
        let (mut a, ka) = self.to_affine();
        let (b, kb) = other.to_affine();
        for (s, c) in b {
            *a.entry(s).or_insert(0) -= c;
        }
        if a.values().any(|c| *c < 0) {
            return None;
        }
        Dim::from_affine(a, ka - kb)
    }

    /// `self · k`.
    pub fn mul(&self, k: usize) -> Dim {
        let (a, ka) = self.to_affine();
        let a = a.into_iter().map(|(s, c)| (s, c * k as i64)).collect();
        Dim::from_affine(a, ka * k as i64).expect("non-negative")
    }

    /// `self / k` when it divides exactly (constants, or every coefficient).
    pub fn div_exact(&self, k: usize) -> Option<Dim> {
        let (a, ka) = self.to_affine();
        let k = k as i64;
        if k == 0 || ka % k != 0 || a.values().any(|c| c % k != 0) {
            return None;
        }
        Dim::from_affine(a.into_iter().map(|(s, c)| (s, c / k)).collect(), ka / k)
    }

    /// Replace bound symbols by their values.
    pub fn bind(&self, bindings: &BTreeMap<String, usize>) -> Dim {
        let (a, mut k) = self.to_affine();
        let mut rest = BTreeMap::new();
        for (s, c) in a {
            match bindings.get(&s) {
                Some(v) => k += c * *v as i64,
                None => {
                    rest.insert(s, c);
                }
            }
        }
        Dim::from_affine(rest, k).unwrap_or(Dim::Const(0))
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Const(n)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Dim {
        Dim::sym(s)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Const(n) => write!(f, "{n}"),
            Dim::Sym(s) => write!(f, "{s}"),
            Dim::Affine { terms, konst } => {
                let mut first = true;
                for (s, c) in terms {
                    let sign = if *c < 0 {
                        "-"
                    } else if first {
                        ""
                    } else {
                        "+"
                    };
                    let mag = c.abs();
                    if mag == 1 {
                        write!(f, "{sign}{s}")?;
                    } else {
                        write!(f, "{sign}{mag}*{s}")?;
                    }
                    first = false;
                }
                match konst.cmp(&0) {
                    std::cmp::Ordering::Greater => write!(f, "+{konst}"),
                    std::cmp::Ordering::Less => write!(f, "{konst}"),
                    std::cmp::Ordering::Equal => Ok(()),
                }
            }
        }
    }
}

/// A tensor shape: a list of dims.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    /// The number of axes.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// The dims.
    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    /// The last dim.
    pub fn last(&self) -> Option<&Dim> {
        self.0.last()
    }

    /// Every dim known?
    pub fn is_const(&self) -> bool {
        self.0.iter().all(|d| d.as_const().is_some())
    }

    /// The dims as numbers, if all are known.
    pub fn as_const(&self) -> Option<Vec<usize>> {
        self.0.iter().map(Dim::as_const).collect()
    }

    /// Bind symbols.
    pub fn bind(&self, bindings: &BTreeMap<String, usize>) -> Shape {
        Shape(self.0.iter().map(|d| d.bind(bindings)).collect())
    }

    /// Symbols mentioned, sorted and deduplicated.
    pub fn symbols(&self) -> Vec<String> {
        let mut v: Vec<String> = self.0.iter().flat_map(Dim::symbols).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Product of all dims if known.
    pub fn numel(&self) -> Option<usize> {
        self.as_const().map(|v| v.iter().product())
    }

    /// Normalize a possibly negative axis.
    pub fn axis(&self, axis: isize) -> Option<usize> {
        let r = self.rank() as isize;
        let a = if axis < 0 { axis + r } else { axis };
        (0..r).contains(&a).then_some(a as usize)
    }
}

impl<D: Into<Dim>, const N: usize> From<[D; N]> for Shape {
    fn from(v: [D; N]) -> Shape {
        Shape(v.into_iter().map(Into::into).collect())
    }
}

impl From<Vec<Dim>> for Shape {
    fn from(v: Vec<Dim>) -> Shape {
        Shape(v)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

/// Element types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    U32,
    Bool,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::Bool => "bool",
        };
        f.write_str(s)
    }
}

/// Numpy-style broadcasting of two shapes; `None` if they do not broadcast.
pub fn broadcast(a: &Shape, b: &Shape) -> Option<Shape> {
    let r = a.rank().max(b.rank());
    let one = Dim::Const(1);
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        let da = if i + a.rank() >= r {
            &a.0[i + a.rank() - r]
        } else {
            &one
        };
        let db = if i + b.rank() >= r {
            &b.0[i + b.rank() - r]
        } else {
            &one
        };
        let d = if da == db || *db == one {
            da.clone()
        } else if *da == one {
            db.clone()
        } else {
            return None;
        };
        out.push(d);
    }
    Some(Shape(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_arithmetic_normalizes() {
        let t = Dim::sym("L_txt");
        let s = t.add(&Dim::Const(16));
        assert_eq!(s.to_string(), "L_txt+16");
        assert_eq!(s.sub(&t), Some(Dim::Const(16)));
        assert_eq!(s.sub(&Dim::Const(16)), Some(t.clone()));
        assert_eq!(Dim::Const(3).sub(&Dim::Const(4)), None);
        assert_eq!(t.mul(2).to_string(), "2*L_txt");
        assert_eq!(t.mul(2).div_exact(2), Some(t.clone()));
        assert_eq!(t.div_exact(2), None);
        let b = BTreeMap::from([("L_txt".to_string(), 7)]);
        assert_eq!(s.bind(&b), Dim::Const(23));
    }

    #[test]
    fn broadcasting() {
        let a = Shape::from([Dim::sym("B"), Dim::Const(1), Dim::Const(8)]);
        let b = Shape::from([Dim::sym("L"), Dim::Const(8)]);
        assert_eq!(broadcast(&a, &b).unwrap().to_string(), "[B, L, 8]");
        let c = Shape::from([4usize, 9]);
        assert!(broadcast(&b, &c).is_none());
    }
}
