//! One `specialize!` line per resolution (see docs/adding-a-resolution.md). Every line
//! expands to a module with the same item names; only literal shapes differ. The list also
//! defines `for_each_resolution!`, from which the pipeline builds its `VARIANTS`: a line
//! here is all a resolution takes.

qwen_macros::specializations! {
    // What every resolution of a config shares (text encoder, VAE residual blocks,
    // helpers); the resolution modules re-export it from here.
    specialize!(shared);
    specialize!(shared, config = tiny);

    // The published model: both CFG halves in one transformer call, the image stream
    // batched, one unmasked attention call per half.
    specialize!(res = 1024, cfg = split);

    // The tiny test config at the block fixtures' resolution (W×H = 96×64), used by the
    // parity tests in tests/.
    specialize!(res = 96x64, config = tiny);

    // The same, with both CFG halves in one transformer call, each with its own text length
    // (`cfg = split`); pinned against the masked batch-2 reference in tests/.
    specialize!(res = 96x64, config = tiny, cfg = split);

    // The tiny config at the pipeline fixture's other resolution (64×64), CFG halves in one
    // call.
    specialize!(res = 64, config = tiny, cfg = split);
}
