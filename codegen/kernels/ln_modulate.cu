// out = LayerNorm(x) · (1 + scale) + shift over the last axis (LayerNorm without affine).
// x [B, L, D]; shift, scale [B, 1, D] or [B, L, D]; out [B, L, D]. One block per row, one
// pack per thread.
// Template: T, D, EPS_BITS (the f32 bits of the norm's eps: a constant, not a memory read). Launch: grid rows·TPR, block TPR = round_up(D / pack, 32).
constexpr int VW = 16 / sizeof(T);
__shared__ float sh[32];
const int row = blockIdx.x;
const int t = threadIdx.x;
const bool on = t < D / VW;
// modulation rows: one per sample ([B, 1, D]) or one per row ([B, L, D])
const size_t m = scale_shape[1] == 1 ? row / x_shape[1] : row;
float v[VW];
if (on) qa_load(x + (size_t)row * D + t * VW, v);
qa_norm_modulate_pack<D, VW>(v, on, scale + m * D + t * VW, shift + m * D + t * VW,
                             out + (size_t)row * D + t * VW, __int_as_float(EPS_BITS), sh);
