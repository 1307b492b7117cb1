//! Raw bindings to mlx-c 0.7.0, built for Linux against a prebuilt MLX.
//!
//! This crate stands in for the published `mlx-sys` 0.7.0 (which builds only on macOS)
//! through `[patch.crates-io]`; mlx-rs uses it unchanged. See `build.rs` for how mlx-c
//! is obtained and fixed, and the `DEP_MLX_LIBDIR` metadata it publishes.

#![allow(non_upper_case_globals)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(dead_code)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// mlx-rs seeds its default random state with macOS's `mach_approximate_time` (through
/// the `mach-sys` crate). Other targets have no such symbol; this provides it, in
/// nanoseconds since the Unix epoch. Code that wants reproducible numbers passes
/// explicit random keys and never reaches this.
#[cfg(not(target_vendor = "apple"))]
#[no_mangle]
pub extern "C" fn mach_approximate_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0)
}
