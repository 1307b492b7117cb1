// h = x + gate · y, then out = LayerNorm(h) · (1 + scale) + shift (h as stored, in T).
// x, y [B, L, D]; gate, shift, scale [B, 1, D] or all [B, L, D]; outputs h, out [B, L, D]; eps [1] f32.
// One warp per row, PPT = D / (32 · pack) lane-interleaved packs per lane, as ln_modulate.
// Template: T, D (a multiple of 32 packs). Launch: grid rows · 32 (rounded up to the
// block), block 256.
constexpr int VW = 16 / sizeof(T);
constexpr int PPT = D / (32 * VW);
const float EPS = eps[0];
const int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
const int lane = threadIdx.x % 32;
if (row < x_shape[0] * x_shape[1]) {
  // modulation rows: one per sample ([B, 1, D]) or one per row ([B, L, D])
  const int m = scale_shape[1] == 1 ? row / x_shape[1] : row;
  float v[PPT][VW];
  float s = 0.f;
#pragma unroll
  for (int p = 0; p < PPT; ++p) {
    const int col = (p * 32 + lane) * VW;
    float yv[VW], g[VW];
    qa_load(x + (size_t)row * D + col, v[p]);
    qa_load(y + (size_t)row * D + col, yv);
    qa_load(gate + (size_t)m * D + col, g);
#pragma unroll
    for (int i = 0; i < VW; ++i) v[p][i] = qa_f(qa_t<T>(v[p][i] + g[i] * yv[i]));
    qa_store(h + (size_t)row * D + col, v[p]);
#pragma unroll
    for (int i = 0; i < VW; ++i) s += v[p][i];
  }
  const float mean = qa_warp_sum(s) / D;
  float q = 0.f;
#pragma unroll
  for (int p = 0; p < PPT; ++p)
#pragma unroll
    for (int i = 0; i < VW; ++i) { const float d = v[p][i] - mean; q += d * d; }
  const float rstd = rsqrtf(qa_warp_sum(q) / D + EPS);
#pragma unroll
  for (int p = 0; p < PPT; ++p) {
    const int col = (p * 32 + lane) * VW;
    float sc[VW], sf[VW];
    qa_load(scale + (size_t)m * D + col, sc);
    qa_load(shift + (size_t)m * D + col, sf);
#pragma unroll
    for (int i = 0; i < VW; ++i) v[p][i] = (v[p][i] - mean) * rstd * (1.f + sc[i]) + sf[i];
    qa_store(out + (size_t)row * D + col, v[p]);
  }
}
