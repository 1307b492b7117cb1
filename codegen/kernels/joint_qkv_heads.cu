// Joint attention inputs of one text and one image stream, straight from their QKV
// projections (no bias yet): for each stream, qkv + bias → q = RoPE(RMSNorm(q)·wq),
// k = RoPE(RMSNorm(k)·wk), v; written text first, then image, as q, k, v [B, H, LT + LI, DH].
// t_qkv [B, LT, 3·H·DH], i_qkv [B, LI, 3·H·DH]; t_bias, i_bias [3·H·DH]; t_wq, t_wk, i_wq,
// i_wk [DH]; t_cos, t_sin [LT, DH/2], i_cos, i_sin [LI, DH/2] f32. RoPE
// rotates interleaved pairs (2j, 2j+1). TPH = min(32, DH/2) threads per (b, l, h) row,
// each owning EPT = DH/TPH consecutive values of q, k and v (all loaded before any math).
// Template: T, H, DH, EPS_BITS (the f32 bits of the norms' eps). Launch: grid B·(LT + LI)·H·TPH, block 256.
const float EPS = __int_as_float(EPS_BITS);
constexpr int TPH = DH / 2 < 32 ? DH / 2 : 32;
constexpr int EPT = DH / TPH;
constexpr int W = 3 * H * DH;
const int LT = t_qkv_shape[1];
const int LI = i_qkv_shape[1];
const int L = LT + LI;
const int gt = blockIdx.x * blockDim.x + threadIdx.x;
const int r = gt / TPH;  // (b, l, h) row of the output
const int lane = gt % TPH;
const bool on = r < i_qkv_shape[0] * L * H;
const int h = on ? r % H : 0;
const int bl = on ? r / H : 0;  // b·L + l
const int l = bl % L;
const int b = bl / L;
const bool txt = l < LT;
const int ls = txt ? l : l - LT;  // the row within its stream
const int j0 = lane * EPT;
const T* src = (txt ? t_qkv + ((size_t)b * LT + ls) * W : i_qkv + ((size_t)b * LI + ls) * W) + h * DH + j0;
const T* bias = (txt ? t_bias : i_bias) + h * DH + j0;
float a[3][EPT];
float ss[2] = {0.f, 0.f};
if (on) {
#pragma unroll
  for (int which = 0; which < 3; ++which) {
    float bv[EPT];
    qa_load_n<EPT>(src + which * H * DH, a[which]);
    qa_load_n<EPT>(bias + which * H * DH, bv);
#pragma unroll
    for (int i = 0; i < EPT; ++i) a[which][i] = qa_f(qa_t<T>(a[which][i] + bv[i]));
  }
#pragma unroll
  for (int i = 0; i < EPT; ++i) {
    ss[0] += a[0][i] * a[0][i];
    ss[1] += a[1][i] * a[1][i];
  }
}
#pragma unroll
for (int o = TPH / 2; o > 0; o >>= 1) {
  ss[0] += __shfl_xor_sync(0xffffffffu, ss[0], o);
  ss[1] += __shfl_xor_sync(0xffffffffu, ss[1], o);
}
if (on) {
  const float* cs_row = (txt ? t_cos : i_cos) + ls * (DH / 2) + j0 / 2;
  const float* sn_row = (txt ? t_sin : i_sin) + ls * (DH / 2) + j0 / 2;
  float c[EPT / 2], s[EPT / 2];
  qa_load_n<EPT / 2>(cs_row, c);
  qa_load_n<EPT / 2>(sn_row, s);
  const size_t dst = (((size_t)b * H + h) * L + l) * DH + j0;
#pragma unroll
  for (int which = 0; which < 2; ++which) {
    const float rs = rsqrtf(ss[which] / DH + EPS);
    float w[EPT];
    qa_load_n<EPT>((which == 0 ? (txt ? t_wq : i_wq) : (txt ? t_wk : i_wk)) + j0, w);
#pragma unroll
    for (int i = 0; i < EPT; i += 2) {
      const float x0 = a[which][i] * rs * w[i];
      const float x1 = a[which][i + 1] * rs * w[i + 1];
      a[which][i] = x0 * c[i / 2] - x1 * s[i / 2];
      a[which][i + 1] = x0 * s[i / 2] + x1 * c[i / 2];
    }
  }
  qa_store_n<EPT>(q + dst, a[0]);
  qa_store_n<EPT>(k + dst, a[1]);
  qa_store_n<EPT>(v + dst, a[2]);
}
