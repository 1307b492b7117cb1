// The fused QKV projection's output to attention heads: qkv [B, L, 3·H·DH] →
// q = RoPE(RMSNorm(q)·wq), k = RoPE(RMSNorm(k)·wk), v, each [B, H, L, DH].
// wq, wk [DH]; rope_cos, rope_sin [L, DH/2] f32; RoPE rotates interleaved pairs (2j, 2j+1).
// TPH = min(32, DH/2) threads per (b, l, h) row, each owning DH/TPH consecutive values.
// Template: T, H, DH; input eps [1] f32. Launch: grid B·L·H·TPH, block 256.
const float EPS = eps[0];
constexpr int TPH = DH / 2 < 32 ? DH / 2 : 32;
constexpr int EPT = DH / TPH;
const int L = qkv_shape[1];
const size_t gt = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
const size_t r = gt / TPH;  // (b, l, h) row
const int lane = int(gt % TPH);
const bool on = r < (size_t)qkv_shape[0] * L * H;
const int h = on ? int(r % H) : 0;
const size_t bl = on ? r / H : 0;  // b·L + l
const int l = int(bl % L);
const size_t b = bl / L;
const int j0 = lane * EPT;
const T* src = qkv + bl * (3 * H * DH) + (size_t)h * DH + j0;
const size_t dst = ((b * H + h) * L + l) * DH + j0;
for (int which = 0; which < 3; ++which) {
  float a[EPT];
  float ss = 0.f;
  if (on) {
#pragma unroll
    for (int i = 0; i < EPT; ++i) { a[i] = qa_f(src[(size_t)which * H * DH + i]); ss += a[i] * a[i]; }
  }
  if (which < 2) {
#pragma unroll
    for (int o = TPH / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float rs = rsqrtf(ss / DH + EPS);
    const T* w = which == 0 ? wq : wk;
    if (on) {
#pragma unroll
      for (int i = 0; i < EPT; i += 2) {
        const float x0 = a[i] * rs * qa_f(w[j0 + i]);
        const float x1 = a[i + 1] * rs * qa_f(w[j0 + i + 1]);
        const float cs = rope_cos[(size_t)l * (DH / 2) + (j0 + i) / 2];
        const float sn = rope_sin[(size_t)l * (DH / 2) + (j0 + i) / 2];
        a[i] = x0 * cs - x1 * sn;
        a[i + 1] = x0 * sn + x1 * cs;
      }
    }
  }
  if (on) {
    T* o = which == 0 ? q : (which == 1 ? k : v);
#pragma unroll
    for (int i = 0; i < EPT; ++i) o[dst + i] = qa_t<T>(a[i]);
  }
}
