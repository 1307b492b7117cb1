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
    // batched, one unmasked attention call per half. diffusers' default size first, then the
    // seven sizes Qwen-Image was trained for (`--res 1:1`, `16:9`, … as diffusers rounds
    // them to multiples of 16: 1140 → 1136), then 512² and 2048². Each line adds ~0.8 s to a
    // release build of qwen-run and ~0.2 MB to the binary, plus ~1.1 s and ~0.07 MB for its
    // four to six VAE tile decoders (2-core machine, 2026-11-30: rebuilding the qwen crate took 26.3 s
    // before the tile decoders and 41.8 s after, the binary 12.8 → 13.8 MB).
    specialize!(res = 1024, cfg = split);
    specialize!(res = 1328, cfg = split);
    specialize!(res = 1664x928, cfg = split);
    specialize!(res = 928x1664, cfg = split);
    specialize!(res = 1472x1136, cfg = split);
    specialize!(res = 1136x1472, cfg = split);
    specialize!(res = 1584x1056, cfg = split);
    specialize!(res = 1056x1584, cfg = split);
    specialize!(res = 512, cfg = split);
    specialize!(res = 2048, cfg = split);

    // 1024² with one text per transformer call: what runs without a negative pass
    // (`--lightning`), batch 1, where the joint module would run a second half for nothing;
    // and what each GPU of `--gpus 2` runs (one CFG half each), there and at 2048².
    specialize!(res = 1024);
    specialize!(res = 2048);

    // The image tokens split over two ranks (sequence parallelism, one text per call):
    // `--gpus 2` without CFG (Lightning); `--gpus 4` with CFG, the two CFG halves on two GPUs
    // each.
    specialize!(res = 1024, sp = 2);
    specialize!(res = 2048, sp = 2);

    // The tiny test config at the block fixtures' resolution (W×H = 96×64), used by the
    // parity tests in tests/.
    specialize!(res = 96x64, config = tiny);

    // The same, with both CFG halves in one transformer call, each with its own text length
    // (`cfg = split`); pinned against the masked batch-2 reference in tests/.
    specialize!(res = 96x64, config = tiny, cfg = split);

    // The tiny config at the pipeline fixture's other resolution (64×64), CFG halves in one
    // call.
    specialize!(res = 64, config = tiny, cfg = split);

    // The same with the image tokens split over two ranks: the sequence-parallel tests (two
    // and four processes on MLX's ring).
    specialize!(res = 64, config = tiny, sp = 2);
}
