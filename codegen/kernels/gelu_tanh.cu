// out = GELU_tanh(x), elementwise; x [B, L, F] row-contiguous, F a multiple of a pack.
// Template: T. Launch: grid size / pack (rounded up to the block), block 256.
constexpr int VW = 16 / sizeof(T);
const size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
const size_t n = (size_t)x_shape[0] * x_shape[1] * x_shape[2];
if (p < n / VW) {
  float v[VW];
  qa_load(x + p * VW, v);
#pragma unroll
  for (int i = 0; i < VW; ++i) v[i] = qa_gelu_tanh(v[i]);
  qa_store(out + p * VW, v);
}
