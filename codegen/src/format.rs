//! The only place that formats generated code.

use proc_macro2::TokenStream;

use crate::error::Result;

/// Pretty-print a token stream holding a whole file (items).
pub fn format(tokens: TokenStream) -> Result<String> {
    let file: syn::File = syn::parse2(tokens)?;
    Ok(prettyplease::unparse(&file))
}
