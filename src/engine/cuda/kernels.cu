// The CUDA backend's own kernels: elementwise epilogues, normalisation, pooling, token reshuffles and the
// attention softmax. Memory-bound and simple: one thread per output element with grid-stride loops, or one
// block per row where a row is reduced. Every kernel computes in float32 whatever the storage type.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "engine/cuda/kernels.h"

namespace clipdissect::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Runs `launch(T{})` with T the storage type of `element`.
template <typename Launch>
void dispatch(Element element, Launch launch) {
  switch (element) {
    case Element::F32: launch(float{}); break;
    case Element::F16: launch(__half{}); break;
    case Element::BF16: launch(__nv_bfloat16{}); break;
  }
}

// Blocks for a grid-stride loop over `count` elements.
unsigned blocks_for(std::int64_t count) {
  return static_cast<unsigned>(std::clamp<std::int64_t>((count + kThreads - 1) / kThreads, 1, std::int64_t{1} << 20));
}

#define GRID_STRIDE(i, count) \
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < (count); i += std::int64_t{blockDim.x} * gridDim.x)

__device__ __forceinline__ float apply(Act act, float v) {
  switch (act) {
    case Act::Relu: return v < 0.f ? 0.f : v;  // NaN passes through, as torch.relu
    case Act::Gelu: return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    case Act::QuickGelu: return v / (1.f + expf(-1.702f * v));
    case Act::None: break;
  }
  return v;
}

// max that propagates NaN from either side (torch.amax).
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }

struct Sum {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct Max {
  __device__ float operator()(float a, float b) const { return nan_max(a, b); }
};

template <typename Op>
__device__ float warp_reduce(float v, Op op) {
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Reduces one value per thread over the block; every thread gets the result. blockDim.x: a multiple of 32.
template <typename Op>
__device__ float block_reduce(float v, Op op, float identity) {
  __shared__ float partial[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_reduce(v, op);
  __syncthreads();  // the previous call's readers of partial[0] are done
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x / 32) ? partial[lane] : identity;
    v = warp_reduce(v, op);
    if (lane == 0) partial[0] = v;
  }
  __syncthreads();
  return partial[0];
}

template <typename T>
__global__ void cast_from_float_kernel(T* dst, const float* src, std::int64_t count) {
  GRID_STRIDE(i, count) dst[i] = from_float<T>(src[i]);
}

template <typename T>
__global__ void cast_to_float_kernel(float* dst, const T* src, std::int64_t count) {
  GRID_STRIDE(i, count) dst[i] = to_float(src[i]);
}

template <typename T>
__global__ void channel_epilogue_kernel(T* y, const T* x, const float* bias, const float* scale, const float* shift,
                                        const T* residual, Act act, std::int64_t count, std::int64_t channels,
                                        std::int64_t plane) {
  GRID_STRIDE(i, count) {
    const std::int64_t c = (i / plane) % channels;
    float v = to_float(x[i]);
    if (bias) v += bias[c];
    if (scale) v *= scale[c];
    if (shift) v += shift[c];
    if (residual) v += to_float(residual[i]);
    y[i] = from_float<T>(apply(act, v));
  }
}

template <typename T>
__global__ void linear_epilogue_kernel(T* y, const float* bias, const T* residual, Act act, std::int64_t count,
                                       std::int64_t cols) {
  GRID_STRIDE(i, count) {
    float v = to_float(y[i]);
    if (bias) v += bias[i % cols];
    v = apply(act, v);
    if (residual) v += to_float(residual[i]);
    y[i] = from_float<T>(v);
  }
}

// One block per row: mean, then the variance around it (two passes, as exact as PyTorch's Welford in float).
template <typename T>
__global__ void layer_norm_kernel(T* y, const T* x, const float* gamma, const float* beta, float eps,
                                  std::int64_t cols) {
  const T* in = x + blockIdx.x * cols;
  T* out = y + blockIdx.x * cols;
  float sum = 0.f;
  for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) sum += to_float(in[c]);
  const float mean = block_reduce(sum, Sum{}, 0.f) / static_cast<float>(cols);
  float sq = 0.f;
  for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float d = to_float(in[c]) - mean;
    sq += d * d;
  }
  const float rstd = rsqrtf(block_reduce(sq, Sum{}, 0.f) / static_cast<float>(cols) + eps);
  for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x)
    out[c] = from_float<T>((to_float(in[c]) - mean) * rstd * gamma[c] + beta[c]);
}

// One block per row.
template <typename T>
__global__ void plane_summary_kernel(float* out, const T* x, std::int64_t plane, bool max) {
  const T* in = x + blockIdx.x * plane;
  if (max) {
    float m = -INFINITY;
    for (std::int64_t j = threadIdx.x; j < plane; j += blockDim.x) m = nan_max(m, to_float(in[j]));
    m = block_reduce(m, Max{}, -INFINITY);
    if (threadIdx.x == 0) out[blockIdx.x] = m;
  } else {
    float sum = 0.f;
    for (std::int64_t j = threadIdx.x; j < plane; j += blockDim.x) sum += to_float(in[j]);
    sum = block_reduce(sum, Sum{}, 0.f);
    if (threadIdx.x == 0) out[blockIdx.x] = sum / static_cast<float>(plane);
  }
}

template <typename T>
__global__ void grid_to_tokens_kernel(T* y, const T* x, std::int64_t n, std::int64_t channels, std::int64_t plane) {
  GRID_STRIDE(i, n * plane * channels) {
    const std::int64_t c = i % channels, p = (i / channels) % plane, b = i / (channels * plane);
    y[i] = x[(b * channels + c) * plane + p];
  }
}

template <typename T>
__global__ void prepend_token_kernel(T* y, const T* tokens, const T* first, bool shared, std::int64_t n,
                                     std::int64_t length, std::int64_t dim) {
  GRID_STRIDE(i, n * (length + 1) * dim) {
    const std::int64_t d = i % dim, t = (i / dim) % (length + 1), b = i / (dim * (length + 1));
    y[i] = t == 0 ? first[shared ? d : b * dim + d] : tokens[(b * length + t - 1) * dim + d];
  }
}

template <typename T>
__global__ void mean_tokens_kernel(T* y, const T* x, std::int64_t n, std::int64_t length, std::int64_t dim) {
  GRID_STRIDE(i, n * dim) {
    const std::int64_t d = i % dim, b = i / dim;
    float sum = 0.f;
    for (std::int64_t t = 0; t < length; ++t) sum += to_float(x[(b * length + t) * dim + d]);
    y[i] = from_float<T>(sum / static_cast<float>(length));
  }
}

template <typename T>
__global__ void add_positional_kernel(T* y, const T* x, const T* positional, std::int64_t n, std::int64_t length,
                                      std::int64_t dim) {
  GRID_STRIDE(i, n * length * dim) y[i] = from_float<T>(to_float(x[i]) + to_float(positional[i % (length * dim)]));
}

template <typename T>
__global__ void gather_rows_kernel(T* y, const T* table, const std::int64_t* rows, std::int64_t count, std::int64_t dim) {
  GRID_STRIDE(i, count * dim) y[i] = table[rows[i / dim] * dim + i % dim];
}

template <typename T>
__global__ void split_heads_kernel(T* q, T* k, T* v, const T* qkv, std::int64_t n, std::int64_t length, int heads,
                                   std::int64_t head_dim) {
  GRID_STRIDE(i, n * length * 3 * heads * head_dim) {
    const std::int64_t e = i % head_dim, h = (i / head_dim) % heads, which = (i / (head_dim * heads)) % 3;
    const std::int64_t t = (i / (head_dim * heads * 3)) % length, b = i / (head_dim * heads * 3 * length);
    T* dst = which == 0 ? q : which == 1 ? k : v;
    dst[((b * heads + h) * length + t) * head_dim + e] = qkv[i];
  }
}

template <typename T>
__global__ void merge_heads_kernel(T* y, const T* x, std::int64_t n, std::int64_t length, int heads,
                                   std::int64_t head_dim) {
  GRID_STRIDE(i, n * length * heads * head_dim) {
    const std::int64_t e = i % head_dim, h = (i / head_dim) % heads, t = (i / (head_dim * heads)) % length;
    const std::int64_t b = i / (head_dim * heads * length);
    y[i] = x[((b * heads + h) * length + t) * head_dim + e];
  }
}

// One block per score row (n, h, t): the masked, biased scores, their max, the sum of exponentials, then
// the probabilities. The row is re-read rather than staged: rows are short and stay in L1. NaN propagates.
template <typename T>
__global__ void attention_softmax_kernel(T* scores, const T* bias, bool bias_shared, bool causal, int heads,
                                         std::int64_t length) {
  const std::int64_t row = blockIdx.x;
  const std::int64_t t = row % length, h = (row / length) % heads, b = row / (length * heads);
  T* s = scores + row * length;
  const T* bias_row = bias ? bias + (((bias_shared ? 0 : b) * heads + h) * length + t) * length : nullptr;
  const auto logit = [&](std::int64_t j) {
    float v = to_float(s[j]);
    if (causal && j > t) v += -INFINITY;  // added, as PyTorch's mask is: a NaN score stays NaN
    if (bias_row) v += to_float(bias_row[j]);
    return v;
  };
  float m = -INFINITY;
  for (std::int64_t j = threadIdx.x; j < length; j += blockDim.x) m = nan_max(m, logit(j));
  m = block_reduce(m, Max{}, -INFINITY);
  float sum = 0.f;
  for (std::int64_t j = threadIdx.x; j < length; j += blockDim.x) sum += expf(logit(j) - m);
  sum = block_reduce(sum, Sum{}, 0.f);
  // Each thread overwrites only the scores it read itself.
  for (std::int64_t j = threadIdx.x; j < length; j += blockDim.x) s[j] = from_float<T>(expf(logit(j) - m) / sum);
}

// Threads per block for one-block-per-row kernels: enough warps for the row, at most 256.
unsigned row_threads(std::int64_t cols) {
  return static_cast<unsigned>(std::clamp<std::int64_t>((cols + 31) / 32 * 32, 32, kThreads));
}

}  // namespace

std::size_t element_size(Element element) { return element == Element::F32 ? 4 : 2; }

void cast_from_float(Element element, void* dst, const float* src, std::int64_t count, cudaStream_t stream) {
  dispatch(element, [&](auto tag) {
    using T = decltype(tag);
    cast_from_float_kernel<<<blocks_for(count), kThreads, 0, stream>>>(static_cast<T*>(dst), src, count);
  });
}

void cast_to_float(Element element, float* dst, const void* src, std::int64_t count, cudaStream_t stream) {
  dispatch(element, [&](auto tag) {
    using T = decltype(tag);
    cast_to_float_kernel<<<blocks_for(count), kThreads, 0, stream>>>(dst, static_cast<const T*>(src), count);
  });
}

void channel_epilogue(Element element, void* y, const void* x, const float* bias, const float* scale,
                      const float* shift, const void* residual, Act act, std::int64_t count, std::int64_t channels,
                      std::int64_t plane, cudaStream_t stream) {
  dispatch(element, [&](auto tag) {
    using T = decltype(tag);
    channel_epilogue_kernel<<<blocks_for(count), kThreads, 0, stream>>>(
        static_cast<T*>(y), static_cast<const T*>(x), bias, scale, shift, static_cast<const T*>(residual), act, count,
        channels, plane);
  });
}

void linear_epilogue(Element element, void* y, const float* bias, const void* residual, Act act, std::int64_t rows,
                     std::int64_t cols, cudaStream_t stream) {
  dispatch(element, [&](auto tag) {
    using T = decltype(tag);
    linear_epilogue_kernel<<<blocks_for(rows * cols), kThreads, 0, stream>>>(
        static_cast<T*>(y), bias, static_cast<const T*>(residual), act, rows * cols, cols);
  });
}

void layer_norm(Element element, void* y, const void* x, const float* gamma, const float* beta, float eps,
                std::int64_t rows, std::int64_t cols, cudaStream_t stream) {
  if (rows == 0) return;  // a grid of zero blocks is an invalid launch
  dispatch(element, [&](auto tag) {
    using T = decltype(tag);
    layer_norm_kernel<<<static_cast<unsigned>(rows), row_threads(cols), 0, stream>>>(
        static_cast<T*>(y), static_cast<const T*>(x), gamma, beta, eps, cols);
  });
}

void plane_summary(Element element, float* out, const void* x, std::int64_t rows, std::int64_t plane, bool max,
                   cudaStream_t stream) {
  if (rows == 0) return;  // a grid of zero blocks is an invalid launch
  dispatch(element, [&](auto tag) {
    using T = decltype(tag);
    plane_summary_kernel<<<static_cast<unsigned>(rows), row_threads(plane), 0, stream>>>(
        out, static_cast<const T*>(x), plane, max);
  });
}

void grid_to_tokens(Element element, void* y, const void* x, std::int64_t n, std::int64_t channels, std::int64_t plane,
                    cudaStream_t stream) {
  dispatch(element, [&](auto tag) {
    using T = decltype(tag);
    grid_to_tokens_kernel<<<blocks_for(n * channels * plane), kThreads, 0, stream>>>(
        static_cast<T*>(y), static_cast<const T*>(x), n, channels, plane);
  });
}

void prepend_token(Element element, void* y, const void* tokens, const void* first, bool shared, std::int64_t n,
                   std::int64_t length, std::int64_t dim, cudaStream_t stream) {
  dispatch(element, [&](auto tag) {
    using T = decltype(tag);
    prepend_token_kernel<<<blocks_for(n * (length + 1) * dim), kThreads, 0, stream>>>(
        static_cast<T*>(y), static_cast<const T*>(tokens), static_cast<const T*>(first), shared, n, length, dim);
  });
}

void mean_tokens(Element element, void* y, const void* x, std::int64_t n, std::int64_t length, std::int64_t dim,
                 cudaStream_t stream) {
  dispatch(element, [&](auto tag) {
    using T = decltype(tag);
    mean_tokens_kernel<<<blocks_for(n * dim), kThreads, 0, stream>>>(static_cast<T*>(y), static_cast<const T*>(x), n,
                                                                      length, dim);
  });
}

void add_positional(Element element, void* y, const void* x, const void* positional, std::int64_t n,
                    std::int64_t length, std::int64_t dim, cudaStream_t stream) {
  dispatch(element, [&](auto tag) {
    using T = decltype(tag);
    add_positional_kernel<<<blocks_for(n * length * dim), kThreads, 0, stream>>>(
        static_cast<T*>(y), static_cast<const T*>(x), static_cast<const T*>(positional), n, length, dim);
  });
}

void gather_rows(Element element, void* y, const void* table, const std::int64_t* rows, std::int64_t count,
                 std::int64_t dim, cudaStream_t stream) {
  dispatch(element, [&](auto tag) {
    using T = decltype(tag);
    gather_rows_kernel<<<blocks_for(count * dim), kThreads, 0, stream>>>(static_cast<T*>(y),
                                                                          static_cast<const T*>(table), rows, count, dim);
  });
}

void split_heads(Element element, void* q, void* k, void* v, const void* qkv, std::int64_t n, std::int64_t length,
                 int heads, std::int64_t head_dim, cudaStream_t stream) {
  dispatch(element, [&](auto tag) {
    using T = decltype(tag);
    split_heads_kernel<<<blocks_for(n * length * 3 * heads * head_dim), kThreads, 0, stream>>>(
        static_cast<T*>(q), static_cast<T*>(k), static_cast<T*>(v), static_cast<const T*>(qkv), n, length, heads,
        head_dim);
  });
}

void merge_heads(Element element, void* y, const void* x, std::int64_t n, std::int64_t length, int heads,
                 std::int64_t head_dim, cudaStream_t stream) {
  dispatch(element, [&](auto tag) {
    using T = decltype(tag);
    merge_heads_kernel<<<blocks_for(n * length * heads * head_dim), kThreads, 0, stream>>>(
        static_cast<T*>(y), static_cast<const T*>(x), n, length, heads, head_dim);
  });
}

void attention_softmax(Element element, void* scores, const void* bias, bool bias_shared, bool causal, std::int64_t n,
                       int heads, std::int64_t length, cudaStream_t stream) {
  if (n * heads * length == 0) return;  // a grid of zero blocks is an invalid launch
  dispatch(element, [&](auto tag) {
    using T = decltype(tag);
    attention_softmax_kernel<<<static_cast<unsigned>(n * heads * length), row_threads(length), 0, stream>>>(
        static_cast<T*>(scores), static_cast<const T*>(bias), bias_shared, causal, heads, length);
  });
}

}  // namespace clipdissect::cuda
