//! Parse and validate `specialize!` arguments, collecting every problem.

use proc_macro2::Span;
use syn::parse::ParseStream;
use syn::{Ident, LitInt, Token};

/// Option keywords.
pub const RES: &str = "res";
pub const CONFIG: &str = "config";
pub const CFG: &str = "cfg";
pub const SHARED: &str = "shared";
pub const SP: &str = "sp";
const OPTIONS: &str = "res, config, cfg, sp, shared";

/// Parsed arguments (what could be parsed) and every error found.
pub struct Args {
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Whether `res` was written as one number (square).
    pub square: bool,
    pub res_span: Span,
    pub tiny: bool,
    pub split: bool,
    /// `sp = N`: the image tokens split over N ranks (sequence parallelism); 1 without it.
    pub parts: usize,
    /// `specialize!(shared)`: the resolution-independent module of a config.
    pub shared: bool,
    pub errors: Vec<syn::Error>,
}

impl Args {
    /// The module name, e.g. `res1024`, `res96x64_tiny`.
    pub fn module(&self) -> Option<String> {
        if self.shared {
            return Some(if self.tiny {
                "shared_tiny".into()
            } else {
                "shared".into()
            });
        }
        let (w, h) = (self.width?, self.height?);
        let mut s = if self.square {
            format!("res{w}")
        } else {
            format!("res{w}x{h}")
        };
        if self.tiny {
            s.push_str("_tiny");
        }
        if self.split {
            s.push_str("_split");
        }
        if self.parts > 1 {
            s.push_str(&format!("_sp{}", self.parts));
        }
        Some(s)
    }
}

fn check16(lit: &LitInt, v: usize, errors: &mut Vec<syn::Error>) {
    if v == 0 || v % 16 != 0 {
        errors.push(syn::Error::new_spanned(
            lit,
            format!("res must be a multiple of 16 (VAE ×8, patch ×2); got {v}"),
        ));
    }
}

/// `res = 1024` / `res = 1664x928`: (width, height, square).
fn parse_res(lit: &LitInt, errors: &mut Vec<syn::Error>) -> Option<(usize, usize, bool)> {
    let Ok(w) = lit.base10_parse::<usize>() else {
        errors.push(syn::Error::new_spanned(
            lit,
            "res must be a number such as 1024 or 1664x928",
        ));
        return None;
    };
    let suffix = lit.suffix();
    if suffix.is_empty() {
        check16(lit, w, errors);
        return Some((w, w, true));
    }
    match suffix
        .strip_prefix('x')
        .and_then(|h| h.parse::<usize>().ok())
    {
        Some(h) => {
            let before = errors.len();
            check16(lit, w, errors);
            if errors.len() == before {
                check16(lit, h, errors);
            }
            Some((w, h, false))
        }
        None => {
            errors.push(syn::Error::new_spanned(
                lit,
                format!("res must be `N` or `WxH` (width x height, e.g. 1664x928); got `{lit}`"),
            ));
            None
        }
    }
}

/// Parse the argument list; only a token-level syntax error is returned as `Err`.
pub fn parse(input: ParseStream) -> syn::Result<Args> {
    let mut a = Args {
        width: None,
        height: None,
        square: true,
        res_span: Span::call_site(),
        tiny: false,
        split: false,
        parts: 1,
        shared: false,
        errors: vec![],
    };
    let mut cfg_span = None;
    let mut sp_span = None;
    let mut seen: Vec<String> = vec![];
    while !input.is_empty() {
        let key: Ident = input.parse()?;
        let k = key.to_string();
        if seen.contains(&k) {
            a.errors.push(syn::Error::new_spanned(
                &key,
                format!("duplicate option `{k}`"),
            ));
        }
        seen.push(k.clone());
        if k == SHARED && !input.peek(Token![=]) {
            a.shared = true;
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
            continue;
        }
        input.parse::<Token![=]>()?;
        match k.as_str() {
            RES => {
                let lit: LitInt = input.parse()?;
                a.res_span = lit.span();
                if let Some((w, h, sq)) = parse_res(&lit, &mut a.errors) {
                    if a.width.is_none() {
                        (a.width, a.height, a.square) = (Some(w), Some(h), sq);
                    }
                }
            }
            CONFIG => {
                let v: Ident = input.parse()?;
                match v.to_string().as_str() {
                    "real" => {}
                    "tiny" => a.tiny = true,
                    other => a.errors.push(syn::Error::new_spanned(
                        &v,
                        format!("unknown config `{other}`; expected `real` or `tiny`"),
                    )),
                }
            }
            CFG => {
                let v: Ident = input.parse()?;
                cfg_span = Some(key.span());
                match v.to_string().as_str() {
                    "batched" => {}
                    "split" => a.split = true,
                    other => a.errors.push(syn::Error::new_spanned(
                        &v,
                        format!("unknown cfg `{other}`; expected `batched` or `split`"),
                    )),
                }
            }
            SP => {
                let lit: LitInt = input.parse()?;
                sp_span = Some(key.span());
                match lit.base10_parse::<usize>() {
                    Ok(n) if n >= 2 => a.parts = n,
                    _ => a.errors.push(syn::Error::new_spanned(
                        &lit,
                        "sp must be a number of ranks, 2 or more (one process is the default)",
                    )),
                }
            }
            other => {
                // skip the value, whatever it is, and report the key
                let _: proc_macro2::TokenTree = input.parse()?;
                a.errors.push(syn::Error::new_spanned(
                    &key,
                    format!("unknown option `{other}`; expected one of {OPTIONS}"),
                ));
            }
        }
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    if a.shared {
        if seen.iter().any(|k| k == RES) {
            a.errors.push(syn::Error::new(
                a.res_span,
                "`shared` is the resolution-independent module; it takes no `res`",
            ));
        }
        if let Some(s) = cfg_span {
            a.errors.push(syn::Error::new(
                s,
                "`cfg` concerns the transformer, which is not in the `shared` module",
            ));
        }
        if let Some(s) = sp_span {
            a.errors.push(syn::Error::new(
                s,
                "`sp` concerns the transformer, which is not in the `shared` module",
            ));
        }
    } else if let (Some(s), true) = (sp_span, a.split) {
        a.errors.push(syn::Error::new(
            s,
            "a sequence split over ranks runs one text per call: `sp` takes no `cfg = split`",
        ));
    }
    if !a.shared && !seen.iter().any(|k| k == RES) {
        a.errors.push(syn::Error::new(
            Span::call_site(),
            "missing `res = …` (e.g. `specialize!(res = 1024)`)",
        ));
    }
    Ok(a)
}
