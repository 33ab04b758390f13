// The narrow interface between model code and compute. Models are written once against it; the CPU
// backend implements it with oneDNN, a CUDA backend can implement it with cuDNN/cuBLAS.
//
// Parameters are prepared once (reordered, BatchNorm folded) and owned by the backend as opaque
// handles. Every op takes and returns Tensors in the logical shapes documented per op; the storage
// layout is the backend's business.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "clipdissect/host_buffer.h"
#include "clipdissect/tensor.h"

namespace clipdissect {

enum class Activation { None, Relu, Gelu /* exact, erf */, QuickGelu /* x * sigmoid(1.702 x) */ };

// How a recorded layer output is summarised per image (the reference's get_activation).
enum class PoolMode { Avg, Max };

struct Conv2dSpec {
  int in_channels = 0;
  int out_channels = 0;
  int kernel = 1;
  int stride = 1;
  int padding = 0;
  int groups = 1;
};

class ConvParams {
 public:
  virtual ~ConvParams() = default;
};
class LinearParams {
 public:
  virtual ~LinearParams() = default;
};
class NormParams {
 public:
  virtual ~NormParams() = default;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // Host <-> backend. Host data is float32, row-major in the logical shape.
  virtual Tensor upload(std::span<const float> data, const Shape& shape) = 0;
  virtual std::vector<float> download(const Tensor& tensor) = 0;
  // Memory for data to upload (see HostBuffer), from any thread. upload() may still be reading it after it
  // returns: write into a buffer only before uploading from it; dropping it is always safe.
  virtual HostBuffer host_buffer(std::size_t floats) = 0;

  // weight [out, in/groups, k, k] and optional bias [out] (empty span: none). With `scale` and `shift` ([out],
  // optional), the convolution's output is followed by y * scale + shift per channel, fused into it: a
  // BatchNorm in inference mode applied in the same float operations as PyTorch applies it.
  virtual std::shared_ptr<ConvParams> make_conv2d(const Conv2dSpec& spec, std::span<const float> weight,
                                                  std::span<const float> bias, std::span<const float> scale = {},
                                                  std::span<const float> shift = {}) = 0;
  // weight [out, in] as PyTorch's nn.Linear; optional bias [out].
  virtual std::shared_ptr<LinearParams> make_linear(int in_features, int out_features, std::span<const float> weight,
                                                    std::span<const float> bias) = 0;

  // Per-channel y = x * scale + shift (a BatchNorm in inference mode), for [N, C, H, W].
  virtual std::shared_ptr<NormParams> make_channel_affine(std::span<const float> scale,
                                                          std::span<const float> shift) = 0;
  // LayerNorm over the last dimension with elementwise affine.
  virtual std::shared_ptr<NormParams> make_layer_norm(std::span<const float> gamma, std::span<const float> beta,
                                                      float eps) = 0;

  // [N, C, H, W] -> [N, O, H', W']: act((conv(x) + bias) * scale + shift + residual); residual may be null.
  // `raw` skips the per-channel affine and everything after it: the bare convolution, for recording it.
  virtual Tensor conv2d(const ConvParams& conv, const Tensor& x, const Tensor* residual, Activation act,
                        bool raw = false) = 0;
  // [N, C, H, W]: act(x * scale + shift) per channel.
  virtual Tensor channel_affine(const NormParams& affine, const Tensor& x, Activation act) = 0;
  // Elementwise act(x), any shape.
  virtual Tensor activate(const Tensor& x, Activation act) = 0;
  // [N, C, H, W] elementwise act(a + b).
  virtual Tensor add(const Tensor& a, const Tensor& b, Activation act) = 0;
  virtual Tensor max_pool2d(const Tensor& x, int kernel, int stride, int padding) = 0;
  // nn.AvgPool2d(kernel) with stride = kernel and no padding (CLIP's ModifiedResNet).
  virtual Tensor avg_pool2d(const Tensor& x, int kernel) = 0;
  // [N, C, H, W] -> [N, C]: mean over H, W (AdaptiveAvgPool2d(1) + flatten).
  virtual Tensor global_avg_pool(const Tensor& x) = 0;

  // [..., in] -> [..., out]: act(x W^T + b) + residual (residual of the output shape, may be null).
  virtual Tensor linear(const LinearParams& linear, const Tensor& x, Activation act, const Tensor* residual) = 0;
  // LayerNorm over the last dimension.
  virtual Tensor layer_norm(const NormParams& norm, const Tensor& x) = 0;

  // [N, C, H, W] -> [N, H*W, C] (patch grid to token sequence).
  virtual Tensor grid_to_tokens(const Tensor& x) = 0;
  // [N, L, D] with first [D] (shared) or [N, D] (per row) -> [N, L + 1, D].
  virtual Tensor prepend_token(const Tensor& tokens, const Tensor& first) = 0;
  // [N, L, D] -> [N, D]: the mean over L.
  virtual Tensor mean_tokens(const Tensor& tokens) = 0;
  // [N, L, D] + [L', D] with L' >= L: adds the first L rows to every sequence (positional embedding).
  virtual Tensor add_positional(const Tensor& tokens, const Tensor& positional) = 0;
  // [N, L, D] -> [N, D]: token positions[n] of sequence n.
  virtual Tensor select_tokens(const Tensor& tokens, std::span<const std::int64_t> positions) = 0;
  // table [V, D], ids [N * L] -> [N, L, D].
  virtual Tensor embedding(const Tensor& table, std::span<const std::int32_t> ids, std::int64_t batch,
                           std::int64_t length) = 0;
  // qkv [N, L, 3D] packed as PyTorch's in_proj (q, k, v) -> [N, L, D]; scaled dot-product attention
  // with `heads` heads, causal masking optional. `score_bias` ([N, heads, L, L], or [1, heads, L, L] shared
  // by the batch), when given, is added to the scaled scores before the softmax: relative position biases,
  // and padded keys masked with a large negative value.
  virtual Tensor attention(const Tensor& qkv, int heads, bool causal, const Tensor* score_bias = nullptr) = 0;
  // The same attention for the query at position 0 alone, unmasked: qkv [N, L, 3D] -> [N, D]. Query rows are
  // independent, so this is row 0 of attention(); a model whose output needs only the class token computes
  // its last block for that token.
  virtual Tensor first_token_attention(const Tensor& qkv, int heads) = 0;

  // Summary per image of a recorded output: [N, C, H, W] -> mean or max over H, W; [N, L, D] -> token 0
  // (both modes); [N, C] unchanged. Returned on the host, [N, C] row-major.
  virtual std::vector<float> summarize(const Tensor& x, PoolMode mode) = 0;

  virtual void set_threads(int threads) = 0;
};

std::unique_ptr<Backend> make_cpu_backend(int threads);

// For a program that runs dissections: the C library keeps freed heap memory for reuse instead of handing it
// back to the kernel, which would zero-fill the pages again on their next touch (decoding and resizing churn
// through megabytes per image; a quarter of preprocessing went to page faults). Process-wide, so the program
// decides: the CLI and the benchmarks call it first thing.
void keep_freed_heap_memory();

}  // namespace clipdissect
