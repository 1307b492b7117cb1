//! Identifiers from graph names: deterministic and collision-free.

use std::collections::BTreeSet;

use proc_macro2::{Ident, Span};

/// `attn.to_out.0` → `attn_to_out_0`; leading digits get a `_`; keywords get an `r#`-free
/// suffix.
pub fn snake(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    while s.contains("__") {
        s = s.replace("__", "_");
    }
    let s = s.trim_matches('_').to_string();
    let s = if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("v_{s}")
    } else {
        s
    };
    if syn::parse_str::<Ident>(&s).is_err() {
        format!("{s}_")
    } else {
        s
    }
}

/// `dual_stream_block` → `DualStreamBlock`.
pub fn camel(name: &str) -> String {
    snake(name)
        .split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// An identifier.
pub fn ident(s: &str) -> Ident {
    Ident::new(s, Span::call_site())
}

/// Hands out unique identifiers.
#[derive(Debug, Default)]
pub struct Namer {
    used: BTreeSet<String>,
}

impl Namer {
    /// Reserve names that must not be handed out.
    pub fn reserve(&mut self, s: &str) {
        self.used.insert(s.to_string());
    }

    /// A unique snake-case identifier based on `base`.
    pub fn fresh(&mut self, base: &str) -> Ident {
        let base = snake(base);
        let mut cand = base.clone();
        let mut i = 1;
        while self.used.contains(&cand) {
            cand = format!("{base}_{i}");
            i += 1;
        }
        self.used.insert(cand.clone());
        ident(&cand)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizing() {
        assert_eq!(snake("attn.to_out.0"), "attn_to_out_0");
        assert_eq!(snake("L_txt"), "l_txt");
        assert_eq!(snake("0.weight"), "v_0_weight");
        assert_eq!(snake("type"), "type_");
        assert_eq!(camel("dual_stream_block"), "DualStreamBlock");
        let mut n = Namer::default();
        n.reserve("w");
        assert_eq!(n.fresh("w").to_string(), "w_1");
        assert_eq!(n.fresh("a.b").to_string(), "a_b");
        assert_eq!(n.fresh("a_b").to_string(), "a_b_1");
    }
}
