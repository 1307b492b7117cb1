// out = GELU_tanh(x), elementwise; x [B, L, F] row-contiguous, F a multiple of a pack.
// Each thread takes two packs, p and p + half, both loaded before any math.
// Template: T. Launch: grid ceil(packs / 2) (rounded up to the block), block 256.
constexpr int VW = 16 / sizeof(T);
const size_t packs = (size_t)x_shape[0] * x_shape[1] * x_shape[2] / VW;
const size_t half = (packs + 1) / 2;
const size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
if (p < half) {
  const bool second = p + half < packs;
  float v[2][VW];
  qa_load(x + p * VW, v[0]);
  if (second) qa_load(x + (p + half) * VW, v[1]);
#pragma unroll
  for (int i = 0; i < VW; ++i) {
    v[0][i] = qa_gelu_tanh(v[0][i]);
    v[1][i] = qa_gelu_tanh(v[1][i]);
  }
  qa_store(out + p * VW, v[0]);
  if (second) qa_store(out + (p + half) * VW, v[1]);
}
