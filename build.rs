//! Points the test binaries of this package at the libmlx that `mlx-sys`
//! linked (`DEP_MLX_LIBDIR`). RUNPATH (`--enable-new-dtags`) lets LD_LIBRARY_PATH
//! override it, which is how the same binary runs against the CUDA libmlx.
fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        println!("cargo::rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{dir}");
    }
}
