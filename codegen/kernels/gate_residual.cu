// out = x + gate · y. x, y [B, L, D]; gate [B, 1, D] (per sample) or [B, L, D] (per row). One pack per thread.
// Template: T, D. Launch: grid B·L·D / pack (rounded up to the block), block 256.
constexpr int VW = 16 / sizeof(T);
const size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
const size_t n = (size_t)x_shape[0] * x_shape[1] * D / VW;
if (p < n) {
  const size_t e = p * VW;
  const size_t row = e / D;
  const int col = int(e % D);
  const size_t m = gate_shape[1] == 1 ? row / x_shape[1] : row;  // per sample or per row
  float v[VW], yv[VW], g[VW];
  qa_load(x + e, v);
  qa_load(y + e, yv);
  qa_load(gate + m * D + col, g);
#pragma unroll
  for (int i = 0; i < VW; ++i) v[i] += g[i] * yv[i];
  qa_store(out + e, v);
}
