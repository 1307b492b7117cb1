// Joint attention inputs of one text and one image stream, straight from their QKV
// projections (no bias yet): for each stream, qkv + bias → q = RoPE(RMSNorm(q)·wq),
// k = RoPE(RMSNorm(k)·wk), v; written text first, then image, as q, k, v [B, H, LT + LI, DH].
// t_qkv [B, LT, 3·H·DH], i_qkv [B, LI, 3·H·DH]; t_bias, i_bias [3·H·DH]; t_wq, t_wk, i_wq,
// i_wk [DH]; t_cos, t_sin [LT, DH/2], i_cos, i_sin [LI, DH/2] f32; eps [1] f32. RoPE
// rotates interleaved pairs (2j, 2j+1). TPH = min(32, DH/2) threads per (b, l, h) row,
// each owning DH/TPH consecutive values.
// Template: T, H, DH. Launch: grid B·(LT + LI)·H·TPH, block 256.
const float EPS = eps[0];
constexpr int TPH = DH / 2 < 32 ? DH / 2 : 32;
constexpr int EPT = DH / TPH;
constexpr int W = 3 * H * DH;
const int LT = t_qkv_shape[1];
const int LI = i_qkv_shape[1];
const int L = LT + LI;
const size_t gt = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
const size_t r = gt / TPH;  // (b, l, h) row of the output
const int lane = int(gt % TPH);
const bool on = r < (size_t)i_qkv_shape[0] * L * H;
const int h = on ? int(r % H) : 0;
const size_t bl = on ? r / H : 0;  // b·L + l
const int l = int(bl % L);
const size_t b = bl / L;
const bool txt = l < LT;
const int ls = txt ? l : l - LT;  // the row within its stream
const int j0 = lane * EPT;
const T* src = (txt ? t_qkv + (b * LT + ls) * W : i_qkv + (b * LI + ls) * W) + (size_t)h * DH + j0;
const T* bias = (txt ? t_bias : i_bias) + (size_t)h * DH + j0;
const float* cs_row = (txt ? t_cos : i_cos) + (size_t)ls * (DH / 2);
const float* sn_row = (txt ? t_sin : i_sin) + (size_t)ls * (DH / 2);
const size_t dst = ((b * H + h) * L + l) * DH + j0;
for (int which = 0; which < 3; ++which) {
  float a[EPT];
  float ss = 0.f;
  if (on) {
#pragma unroll
    for (int i = 0; i < EPT; ++i) {
      const size_t off = (size_t)which * H * DH + i;
      a[i] = qa_f(qa_t<T>(qa_f(src[off]) + qa_f(bias[off])));
      ss += a[i] * a[i];
    }
  }
  if (which < 2) {
#pragma unroll
    for (int o = TPH / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float rs = rsqrtf(ss / DH + EPS);
    const T* w = which == 0 ? (txt ? t_wq : i_wq) : (txt ? t_wk : i_wk);
    if (on) {
#pragma unroll
      for (int i = 0; i < EPT; i += 2) {
        const float x0 = a[i] * rs * qa_f(w[j0 + i]);
        const float x1 = a[i + 1] * rs * qa_f(w[j0 + i + 1]);
        const float c = cs_row[(j0 + i) / 2];
        const float s = sn_row[(j0 + i) / 2];
        a[i] = x0 * c - x1 * s;
        a[i + 1] = x0 * s + x1 * c;
      }
    }
  }
  if (on) {
    T* o = which == 0 ? q : (which == 1 ? k : v);
#pragma unroll
    for (int i = 0; i < EPT; ++i) o[dst + i] = qa_t<T>(a[i]);
  }
}
