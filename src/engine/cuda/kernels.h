// Launchers of the CUDA backend's own kernels (kernels.cu). Tensors are dense row-major buffers of the
// backend's element type; every kernel reads and writes that type and computes in float32. Each launcher
// queues its kernel on `stream` and returns at once.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace clipdissect::cuda {

enum class Element { F32, F16, BF16 };
std::size_t element_size(Element element);

// Matches clipdissect::Activation's order (None, Relu, Gelu, QuickGelu).
enum class Act : int { None = 0, Relu = 1, Gelu = 2, QuickGelu = 3 };

void cast_from_float(Element element, void* dst, const float* src, std::int64_t count, cudaStream_t stream);
void cast_to_float(Element element, float* dst, const void* src, std::int64_t count, cudaStream_t stream);

// Over [N, C, plane]: y = act(((x + bias[c]) * scale[c] + shift[c]) + residual), each term skipped when its
// pointer is null: PyTorch's order of operations for conv + bias, BatchNorm, residual add and activation.
// y may alias x.
void channel_epilogue(Element element, void* y, const void* x, const float* bias, const float* scale,
                      const float* shift, const void* residual, Act act, std::int64_t count, std::int64_t channels,
                      std::int64_t plane, cudaStream_t stream);

// Over [rows, cols], in place: y = act(y + bias[col]) + residual (nn.Linear, activation, residual add).
void linear_epilogue(Element element, void* y, const float* bias, const void* residual, Act act, std::int64_t rows,
                     std::int64_t cols, cudaStream_t stream);

// LayerNorm of each row of x [rows, cols] with affine gamma, beta.
void layer_norm(Element element, void* y, const void* x, const float* gamma, const float* beta, float eps,
                std::int64_t rows, std::int64_t cols, cudaStream_t stream);

// out[r] = mean (or max, NaN propagating) of x[r, 0:plane], in float32, for r < rows.
void plane_summary(Element element, float* out, const void* x, std::int64_t rows, std::int64_t plane, bool max,
                   cudaStream_t stream);

// [N, C, HW] -> [N, HW, C].
void grid_to_tokens(Element element, void* y, const void* x, std::int64_t n, std::int64_t channels, std::int64_t plane,
                    cudaStream_t stream);
// [N, L, D] with first [D] (shared) or [N, D] -> [N, L + 1, D].
void prepend_token(Element element, void* y, const void* tokens, const void* first, bool shared, std::int64_t n,
                   std::int64_t length, std::int64_t dim, cudaStream_t stream);
// [N, L, D] -> [N, D], mean over L.
void mean_tokens(Element element, void* y, const void* x, std::int64_t n, std::int64_t length, std::int64_t dim,
                 cudaStream_t stream);
// y[n, l, :] = x[n, l, :] + positional[l, :].
void add_positional(Element element, void* y, const void* x, const void* positional, std::int64_t n,
                    std::int64_t length, std::int64_t dim, cudaStream_t stream);
// y[i, :] = table[rows[i], :] for i < count (embedding lookups and token selection).
void gather_rows(Element element, void* y, const void* table, const std::int64_t* rows, std::int64_t count,
                 std::int64_t dim, cudaStream_t stream);

// qkv [N, L, 3, H, hd] -> q, k, v each [N, H, L, hd].
void split_heads(Element element, void* q, void* k, void* v, const void* qkv, std::int64_t n, std::int64_t length,
                 int heads, std::int64_t head_dim, cudaStream_t stream);
// [N, H, L, hd] -> [N, L, H * hd].
void merge_heads(Element element, void* y, const void* x, std::int64_t n, std::int64_t length, int heads,
                 std::int64_t head_dim, cudaStream_t stream);
// In place over scores [N, H, L, L] (already scaled): + causal mask (-inf above the diagonal) + bias
// ([N or 1, H, L, L], null for none; bias_shared when its first dimension is 1), then softmax over the last axis.
void attention_softmax(Element element, void* scores, const void* bias, bool bias_shared, bool causal, std::int64_t n,
                       int heads, std::int64_t length, cudaStream_t stream);

}  // namespace clipdissect::cuda
