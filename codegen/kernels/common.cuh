// Shared helpers of the fused kernels (the `header` of every kernel). Storage is T
// (__nv_bfloat16, __half or float); arithmetic is f32. A "pack" is 16 bytes of T.
template <typename T> struct alignas(16) QaPack { T v[16 / sizeof(T)]; };

__device__ inline float qa_f(float v) { return v; }
__device__ inline float qa_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline float qa_f(__half v) { return __half2float(v); }

template <typename T> __device__ inline T qa_t(float v);
template <> __device__ inline float qa_t<float>(float v) { return v; }
template <> __device__ inline __nv_bfloat16 qa_t<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ inline __half qa_t<__half>(float v) { return __float2half(v); }

// Loads/stores one pack of 16 / sizeof(T) values at p as f32: one 16-byte access where p
// is aligned (every array MLX allocates), value by value where it is not (a view).
template <typename T> __device__ inline void qa_load(const T* p, float* f) {
  constexpr int n = 16 / sizeof(T);
  if ((reinterpret_cast<size_t>(p) & 15) == 0) {
    QaPack<T> k = *reinterpret_cast<const QaPack<T>*>(p);
#pragma unroll
    for (int i = 0; i < n; ++i) f[i] = qa_f(k.v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < n; ++i) f[i] = qa_f(p[i]);
  }
}
template <typename T> __device__ inline void qa_store(T* p, const float* f) {
  constexpr int n = 16 / sizeof(T);
  if ((reinterpret_cast<size_t>(p) & 15) == 0) {
    QaPack<T> k;
#pragma unroll
    for (int i = 0; i < n; ++i) k.v[i] = qa_t<T>(f[i]);
    *reinterpret_cast<QaPack<T>*>(p) = k;
  } else {
#pragma unroll
    for (int i = 0; i < n; ++i) p[i] = qa_t<T>(f[i]);
  }
}

// Loads/stores N consecutive values at p as f32, as one access when N values of T fill
// 4, 8 or 16 bytes and p is aligned to that, value by value otherwise.
template <int N, typename T> struct alignas(N * sizeof(T)) QaVec { T v[N]; };
template <int N, typename T> __device__ inline void qa_load_n(const T* p, float* f) {
  constexpr int bytes = N * sizeof(T);
  if constexpr (bytes == 4 || bytes == 8 || bytes == 16) {
    if ((reinterpret_cast<size_t>(p) & (bytes - 1)) == 0) {
      QaVec<N, T> k = *reinterpret_cast<const QaVec<N, T>*>(p);
#pragma unroll
      for (int i = 0; i < N; ++i) f[i] = qa_f(k.v[i]);
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < N; ++i) f[i] = qa_f(p[i]);
}
template <int N, typename T> __device__ inline void qa_store_n(T* p, const float* f) {
  constexpr int bytes = N * sizeof(T);
  if constexpr (bytes == 4 || bytes == 8 || bytes == 16) {
    if ((reinterpret_cast<size_t>(p) & (bytes - 1)) == 0) {
      QaVec<N, T> k;
#pragma unroll
      for (int i = 0; i < N; ++i) k.v[i] = qa_t<T>(f[i]);
      *reinterpret_cast<QaVec<N, T>*>(p) = k;
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < N; ++i) p[i] = qa_t<T>(f[i]);
}

// Sum of v over the warp (every lane gets it).
__device__ inline float qa_warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of v over the thread block (blockDim.x a multiple of 32); `sh` holds 32 floats.
__device__ inline float qa_block_sum(float v, float* sh) {
  v = qa_warp_sum(v);
  __syncthreads();  // sh may still be read by an earlier call
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
  __syncthreads();
  float t = 0.f;
  for (int w = 0; w < int(blockDim.x >> 5); ++w) t += sh[w];
  return t;
}

// The LayerNorm + modulation of one row, as the row kernels split it: one block per row,
// one pack of VW values per thread (`v`, valid where `on`). Writes
// (v − mean) · rstd · (1 + scale) + shift to `out`; `scale`, `shift` and `out` point at this
// thread's pack.
template <int D, int VW, typename M, typename O>
__device__ inline void qa_norm_modulate_pack(float* v, bool on, const M* scale, const M* shift,
                                             O* out, float eps, float* sh) {
  float s = 0.f;
  if (on) {
#pragma unroll
    for (int i = 0; i < VW; ++i) s += v[i];
  }
  const float mean = qa_block_sum(s, sh) / D;
  float q = 0.f;
  if (on) {
#pragma unroll
    for (int i = 0; i < VW; ++i) { const float d = v[i] - mean; q += d * d; }
  }
  const float rstd = rsqrtf(qa_block_sum(q, sh) / D + eps);
  if (on) {
    float sc[VW], sf[VW];
    qa_load(scale, sc);
    qa_load(shift, sf);
#pragma unroll
    for (int i = 0; i < VW; ++i) v[i] = (v[i] - mean) * rstd * (1.f + sc[i]) + sf[i];
    qa_store(out, v);
  }
}

__device__ inline float qa_gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  return 0.5f * x * (1.f + tanhf(k * (x + 0.044715f * x * x * x)));
}
