// out = LayerNorm(x) · (1 + scale) + shift over the last axis (LayerNorm without affine).
// x [B, L, D]; shift, scale [B, 1, D] or [B, L, D]; out [B, L, D]. One block per row, one pack per thread.
// Template: T, D; input eps [1] f32. Launch: grid rows·TPR, block TPR = round_up(D / pack, 32).
const float EPS = eps[0];
constexpr int VW = 16 / sizeof(T);
__shared__ float sh[32];
const int row = blockIdx.x;
const int t = threadIdx.x;
const bool on = t < D / VW;
// modulation rows: one per sample ([B, 1, D]) or one per row ([B, L, D])
const int m = scale_shape[1] == 1 ? row / x_shape[1] : row;
float v[VW];
float s = 0.f;
if (on) {
  qa_load(x + (size_t)row * D + t * VW, v);
#pragma unroll
  for (int i = 0; i < VW; ++i) s += v[i];
}
const float mean = qa_block_sum(s, sh) / D;
float q = 0.f;
if (on) {
#pragma unroll
  for (int i = 0; i < VW; ++i) { const float d = v[i] - mean; q += d * d; }
}
const float rstd = rsqrtf(qa_block_sum(q, sh) / D + EPS);
if (on) {
  float sc[VW], sf[VW];
  qa_load(scale + (size_t)m * D + t * VW, sc);
  qa_load(shift + (size_t)m * D + t * VW, sf);
#pragma unroll
  for (int i = 0; i < VW; ++i) v[i] = (v[i] - mean) * rstd * (1.f + sc[i]) + sf[i];
  qa_store(out + (size_t)row * D + t * VW, v);
}
