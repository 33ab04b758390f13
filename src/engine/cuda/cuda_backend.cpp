// CUDA backend: cuDNN convolutions and pooling, cuBLAS GEMMs (linear layers and batched attention), and our own
// kernels (kernels.cu) for everything else. Tensors are dense row-major device buffers in the precision's element
// type (NCHW for feature maps); every product and sum accumulates in float32.
//
// A convolution followed by a ReLU runs as one cuDNN call, act(conv(x, w * scale) + residual + bias * scale +
// shift), the BatchNorm folded into the weights and bias (not in fp16, see make_conv2d): the same values as
// PyTorch's separate conv and BatchNorm up to float rounding (as cuDNN's algorithms already differ by). Everything
// else gets our epilogue kernel in PyTorch's order, (conv + bias) * scale + shift + residual, then the activation:
// cuDNN's fused call has ReLU and identity only (identity with one algorithm), and cuBLASLt's GELU epilogue is the
// tanh approximation where the models need erf.
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>

#include "clipdissect/device.h"
#include "clipdissect/error.h"
#include "engine/cuda/allocator.h"
#include "engine/cuda/convolution_counts.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/kernels.h"
#include "engine/cuda/pinned_allocator.h"
#include "engine/op_checks.h"

namespace clipdissect {
namespace cuda {
namespace {

// Largest cuDNN workspace an algorithm may ask for.
constexpr std::size_t kMaxConvWorkspace = std::size_t{1} << 30;

std::atomic<std::int64_t> fused_convolutions{0}, separate_convolutions{0};

class CudaStorage final : public TensorStorage {
 public:
  explicit CudaStorage(std::shared_ptr<void> data) : data_(std::move(data)) {}
  void* data() const { return data_.get(); }

 private:
  std::shared_ptr<void> data_;
};

void* data_of(const Tensor& t) {
  if (!t.defined()) fail("cuda backend: undefined tensor");
  auto* storage = dynamic_cast<CudaStorage*>(t.storage());
  if (!storage) fail("cuda backend: tensor belongs to another backend");
  return storage->data();
}

void expect_rank(const Tensor& t, int rank, const char* op) { op_checks::rank("cuda", t, rank, op); }

Element element_of(Precision precision) {
  switch (precision) {
    case Precision::F16: return Element::F16;
    case Precision::BF16: return Element::BF16;
    case Precision::F32: break;
  }
  return Element::F32;
}

cudnnDataType_t cudnn_type(Element element) {
  switch (element) {
    case Element::F16: return CUDNN_DATA_HALF;
    case Element::BF16: return CUDNN_DATA_BFLOAT16;
    case Element::F32: break;
  }
  return CUDNN_DATA_FLOAT;
}

cudaDataType_t blas_type(Element element) {
  switch (element) {
    case Element::F16: return CUDA_R_16F;
    case Element::BF16: return CUDA_R_16BF;
    case Element::F32: break;
  }
  return CUDA_R_32F;
}

Act act_of(Activation act) { return static_cast<Act>(static_cast<int>(act)); }

// RAII for cuDNN's NCHW tensor descriptors.
class TensorDesc {
 public:
  TensorDesc(Element element, std::int64_t n, std::int64_t c, std::int64_t h, std::int64_t w) {
    CLIPDISSECT_CUDA_CHECK(cudnnCreateTensorDescriptor(&desc_));
    CLIPDISSECT_CUDA_CHECK(cudnnSetTensor4dDescriptor(desc_, CUDNN_TENSOR_NCHW, cudnn_type(element), static_cast<int>(n),
                                                      static_cast<int>(c), static_cast<int>(h), static_cast<int>(w)));
  }
  ~TensorDesc() { cudnnDestroyTensorDescriptor(desc_); }
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
  cudnnTensorDescriptor_t get() const { return desc_; }

 private:
  cudnnTensorDescriptor_t desc_ = nullptr;
};

struct ConvAlgorithm {
  cudnnConvolutionFwdAlgo_t algo{};
  cudnnMathType_t math{};  // cuDNN runs an algorithm with the math type its heuristics reported for it
  std::size_t workspace = 0;
};

using InputShape = std::array<std::int64_t, 4>;
// The algorithm that ran for each input shape; none where no candidate did.
using AlgorithmChoice = std::map<InputShape, std::optional<ConvAlgorithm>>;

struct CudaConv final : ConvParams {
  Conv2dSpec spec;
  std::shared_ptr<void> weight;              // [O, I/G, K, K], element type
  std::shared_ptr<void> bias, scale, shift;  // float [O], each may be null
  // For the fused call with a ReLU (element type): weight * scale and bias * scale + shift per output channel.
  // Null for a convolution with neither bias nor scale and shift, and in fp16 for one with scale and shift.
  std::shared_ptr<void> fused_weight, fused_bias;
  cudnnFilterDescriptor_t filter = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  AlgorithmChoice algorithms;
  std::array<AlgorithmChoice, 2> fused_algorithms;  // without, with a residual (z read or not)

  ~CudaConv() override {
    if (filter) cudnnDestroyFilterDescriptor(filter);
    if (conv) cudnnDestroyConvolutionDescriptor(conv);
  }
};

struct CudaLinear final : LinearParams {
  int in = 0, out = 0;
  std::shared_ptr<void> weight;  // [out, in], element type
  std::shared_ptr<void> bias;    // float [out] or null
};

struct CudaNorm final : NormParams {
  std::shared_ptr<void> scale, shift;  // float [channels]
  float eps = 0;                       // LayerNorm only
  int channels = 0;
};

const float* floats(const std::shared_ptr<void>& p) { return static_cast<const float*>(p.get()); }

// weight [O, ...] with output channel o's values times scale[o] (a BatchNorm's scale folded into the weights).
std::vector<float> scaled_weight(std::span<const float> weight, std::span<const float> scale) {
  std::vector<float> out(weight.begin(), weight.end());
  const std::size_t per_channel = out.size() / scale.size();
  for (std::size_t i = 0; i < out.size(); ++i) out[i] *= scale[i / per_channel];
  return out;
}

// bias * scale + shift per channel, no bias counting as zero: the bias once the scale is in the weights.
std::vector<float> folded_bias(std::span<const float> bias, std::span<const float> scale,
                               std::span<const float> shift) {
  std::vector<float> out(scale.size());
  for (std::size_t o = 0; o < out.size(); ++o) out[o] = (bias.empty() ? 0.f : bias[o]) * scale[o] + shift[o];
  return out;
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, Precision precision)
      : precision_(precision),
        element_(element_of(precision)),
        allocator_(open_device(device)),
        pinned_(PinnedAllocator::for_device(device)) {
    stream_ = allocator_->compute_stream();
    CLIPDISSECT_CUDA_CHECK(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking));
    CLIPDISSECT_CUDA_CHECK(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming));
    CLIPDISSECT_CUDA_CHECK(cublasCreate(&blas_));
    CLIPDISSECT_CUDA_CHECK(cublasSetStream(blas_, stream_));
    CLIPDISSECT_CUDA_CHECK(cudnnCreate(&dnn_));
    CLIPDISSECT_CUDA_CHECK(cudnnSetStream(dnn_, stream_));
    CLIPDISSECT_CUDA_CHECK(cudnnCreateActivationDescriptor(&relu_));
    // NaN not propagated, as PyTorch's and ONNX Runtime's fused calls set it (and as oneDNN's ReLU on the CPU).
    CLIPDISSECT_CUDA_CHECK(cudnnSetActivationDescriptor(relu_, CUDNN_ACTIVATION_RELU, CUDNN_NOT_PROPAGATE_NAN, 0.0));
  }

  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    cudaStreamSynchronize(copy_stream_);
    cudnnDestroyActivationDescriptor(relu_);
    cudnnDestroy(dnn_);
    cublasDestroy(blas_);
    cudaEventDestroy(copied_);
    cudaStreamDestroy(copy_stream_);
    if (staging_) cudaFreeHost(staging_);
  }

  std::string name() const override {
    return fmt::format("cuda:{} {}", allocator_->device(), precision_name(precision_));
  }
  void set_threads(int) override {}

  // On the copy stream, so the transfer overlaps queued compute work: straight from a host_buffer() (page-
  // locked), other memory through a page-locked staging buffer.
  Tensor upload(std::span<const float> data, const Shape& shape) override {
    if (static_cast<std::int64_t>(data.size()) != shape_numel(shape))
      fail("cuda backend: upload of {} values into shape {}", data.size(), shape_to_string(shape));
    const std::size_t bytes = data.size_bytes();
    std::shared_ptr<void> floats_on_device = allocator_->allocate(bytes, copy_stream_);
    if (cudaEvent_t read = pinned_->read_event(data.data(), bytes)) {
      // The buffer has one event: this copy also waits for an earlier one from it (another backend's copy
      // stream), so that recording the event again still covers both.
      CLIPDISSECT_CUDA_CHECK(cudaStreamWaitEvent(copy_stream_, read, 0));
      CLIPDISSECT_CUDA_CHECK(
          cudaMemcpyAsync(floats_on_device.get(), data.data(), bytes, cudaMemcpyHostToDevice, copy_stream_));
      CLIPDISSECT_CUDA_CHECK(cudaEventRecord(read, copy_stream_));  // the buffer's reuse waits for it
    } else {
      CLIPDISSECT_CUDA_CHECK(cudaEventSynchronize(copied_));  // the previous upload has left the staging buffer
      if (bytes > staging_bytes_) {
        if (staging_) CLIPDISSECT_CUDA_CHECK(cudaFreeHost(staging_));
        staging_ = nullptr;
        CLIPDISSECT_CUDA_CHECK(cudaHostAlloc(&staging_, bytes, cudaHostAllocDefault));
        staging_bytes_ = bytes;
      }
      std::memcpy(staging_, data.data(), bytes);
      CLIPDISSECT_CUDA_CHECK(
          cudaMemcpyAsync(floats_on_device.get(), staging_, bytes, cudaMemcpyHostToDevice, copy_stream_));
    }
    CLIPDISSECT_CUDA_CHECK(cudaEventRecord(copied_, copy_stream_));
    CLIPDISSECT_CUDA_CHECK(cudaStreamWaitEvent(stream_, copied_, 0));
    if (element_ == Element::F32) return Tensor(shape, std::make_shared<CudaStorage>(std::move(floats_on_device)));
    Tensor out = empty(shape);
    cast_from_float(element_, data_of(out), static_cast<const float*>(floats_on_device.get()), out.numel(), stream_);
    check_launch("cast_from_float");
    return out;
  }

  std::vector<float> download(const Tensor& tensor) override {
    return to_host(data_of(tensor), tensor.numel(), element_);
  }

  HostBuffer host_buffer(std::size_t floats) override {
    return HostBuffer(pinned_->allocate(floats * sizeof(float)), floats);
  }

  std::shared_ptr<ConvParams> make_conv2d(const Conv2dSpec& spec, std::span<const float> weight,
                                          std::span<const float> bias, std::span<const float> scale,
                                          std::span<const float> shift) override {
    op_checks::conv_weight("cuda", spec, weight.size(), bias.size());
    auto conv = std::make_shared<CudaConv>();
    conv->spec = spec;
    conv->weight = to_device(weight);
    conv->bias = bias.empty() ? nullptr : floats_on_device(bias);
    if (!scale.empty() || !shift.empty()) {
      conv->scale = channels_on_device(scale, spec.out_channels, "conv scale");
      conv->shift = channels_on_device(shift, spec.out_channels, "conv shift");
      // Not in fp16: a weight times a small BatchNorm scale can fall below its smallest normal value (6.1e-5)
      // and lose precision that the separate BatchNorm keeps; bf16 and fp32 have float32's exponent range.
      if (element_ != Element::F16) {
        conv->fused_weight = to_device(scaled_weight(weight, scale));
        conv->fused_bias = to_device(folded_bias(bias, scale, shift));
      }
    } else if (!bias.empty()) {
      conv->fused_weight = conv->weight;
      conv->fused_bias = to_device(bias);
    }
    CLIPDISSECT_CUDA_CHECK(cudnnCreateFilterDescriptor(&conv->filter));
    CLIPDISSECT_CUDA_CHECK(cudnnSetFilter4dDescriptor(conv->filter, cudnn_type(element_), CUDNN_TENSOR_NCHW,
                                                      spec.out_channels, spec.in_channels / spec.groups, spec.kernel,
                                                      spec.kernel));
    CLIPDISSECT_CUDA_CHECK(cudnnCreateConvolutionDescriptor(&conv->conv));
    CLIPDISSECT_CUDA_CHECK(cudnnSetConvolution2dDescriptor(conv->conv, spec.padding, spec.padding, spec.stride,
                                                           spec.stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                                           CUDNN_DATA_FLOAT));
    CLIPDISSECT_CUDA_CHECK(cudnnSetConvolutionGroupCount(conv->conv, spec.groups));
    CLIPDISSECT_CUDA_CHECK(cudnnSetConvolutionMathType(conv->conv, allowed_math()));
    return conv;
  }

  std::shared_ptr<LinearParams> make_linear(int in_features, int out_features, std::span<const float> weight,
                                            std::span<const float> bias) override {
    op_checks::linear_weight("cuda", in_features, out_features, weight.size(), bias.size());
    auto linear = std::make_shared<CudaLinear>();
    linear->in = in_features;
    linear->out = out_features;
    linear->weight = to_device(weight);
    linear->bias = bias.empty() ? nullptr : floats_on_device(bias);
    return linear;
  }

  std::shared_ptr<NormParams> make_channel_affine(std::span<const float> scale, std::span<const float> shift) override {
    auto affine = std::make_shared<CudaNorm>();
    affine->channels = static_cast<int>(scale.size());
    affine->scale = channels_on_device(scale, affine->channels, "channel scale");
    affine->shift = channels_on_device(shift, affine->channels, "channel shift");
    return affine;
  }

  std::shared_ptr<NormParams> make_layer_norm(std::span<const float> gamma, std::span<const float> beta,
                                              float eps) override {
    if (gamma.size() != beta.size())
      fail("cuda backend: norm weight has {} values but bias {}", gamma.size(), beta.size());
    auto norm = std::make_shared<CudaNorm>();
    norm->channels = static_cast<int>(gamma.size());
    norm->eps = eps;
    norm->scale = floats_on_device(gamma);
    norm->shift = floats_on_device(beta);
    return norm;
  }

  Tensor conv2d(const ConvParams& params, const Tensor& x, const Tensor* residual, Activation act,
                bool raw) override {
    auto& conv = const_cast<CudaConv&>(static_cast<const CudaConv&>(params));
    const Conv2dSpec& s = conv.spec;
    const Shape out_shape = op_checks::conv2d_output("cuda", s, x, residual, act, raw);
    const std::int64_t oh = out_shape[2], ow = out_shape[3];
    const TensorDesc x_desc(element_, x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    const TensorDesc y_desc(element_, out_shape[0], out_shape[1], oh, ow);
    Tensor out = empty(out_shape);
    if (!raw && act == Activation::Relu && conv.fused_bias && convolve_fused(conv, x, x_desc, y_desc, residual, out)) {
      ++fused_convolutions;
      return out;
    }
    convolve(conv, x, x_desc, y_desc, out);
    ++separate_convolutions;
    const bool affine = !raw && conv.scale;
    if (conv.bias || affine || residual || act != Activation::None) {
      channel_epilogue(element_, data_of(out), data_of(out), floats(conv.bias), affine ? floats(conv.scale) : nullptr,
                       affine ? floats(conv.shift) : nullptr, residual ? data_of(*residual) : nullptr, act_of(act),
                       out.numel(), s.out_channels, oh * ow, stream_);
      check_launch("channel_epilogue");
    }
    return out;
  }

  Tensor channel_affine(const NormParams& params, const Tensor& x, Activation act) override {
    const auto& affine = static_cast<const CudaNorm&>(params);
    if (x.rank() != 4 || x.dim(1) != affine.channels)
      fail("cuda backend: channel_affine expects [N, {}, H, W], got {}", affine.channels, shape_to_string(x.shape()));
    Tensor out = empty(x.shape());
    channel_epilogue(element_, data_of(out), data_of(x), nullptr, floats(affine.scale), floats(affine.shift), nullptr,
                     act_of(act), x.numel(), x.dim(1), x.dim(2) * x.dim(3), stream_);
    check_launch("channel_epilogue");
    return out;
  }

  Tensor activate(const Tensor& x, Activation act) override {
    if (act == Activation::None) return x;
    return elementwise(x, nullptr, act);
  }

  Tensor add(const Tensor& a, const Tensor& b, Activation act) override {
    if (a.shape() != b.shape())
      fail("cuda backend: add of {} and {}", shape_to_string(a.shape()), shape_to_string(b.shape()));
    return elementwise(a, &b, act);
  }

  Tensor max_pool2d(const Tensor& x, int kernel, int stride, int padding) override {
    return pool(x, CUDNN_POOLING_MAX, kernel, stride, padding, "max_pool2d");
  }

  Tensor avg_pool2d(const Tensor& x, int kernel) override {
    return pool(x, CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING, kernel, kernel, 0, "avg_pool2d");
  }

  Tensor global_avg_pool(const Tensor& x) override {
    expect_rank(x, 4, "global_avg_pool");
    const Shape shape{x.dim(0), x.dim(1)};
    std::shared_ptr<void> means = plane_summaries(x, PoolMode::Avg);
    if (element_ == Element::F32) return Tensor(shape, std::make_shared<CudaStorage>(std::move(means)));
    Tensor out = empty(shape);
    cast_from_float(element_, data_of(out), floats(means), out.numel(), stream_);
    check_launch("cast_from_float");
    return out;
  }

  Tensor linear(const LinearParams& params, const Tensor& x, Activation act, const Tensor* residual) override {
    const auto& linear = static_cast<const CudaLinear&>(params);
    const std::int64_t rows = x.numel() / linear.in;
    Tensor out = empty(op_checks::linear_output("cuda", linear.in, linear.out, x, residual));
    // Row-major y = x W^T is column-major y^T = W x^T: W is stored [out, in], i.e. column-major W^T.
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, linear.out, rows, linear.in, 1.f, linear.weight.get(), linear.in, 0, data_of(x),
         linear.in, 0, data_of(out), linear.out, 0, 1);
    if (linear.bias || residual || act != Activation::None) {
      linear_epilogue(element_, data_of(out), floats(linear.bias), residual ? data_of(*residual) : nullptr, act_of(act),
                      rows, linear.out, stream_);
      check_launch("linear_epilogue");
    }
    return out;
  }

  Tensor layer_norm(const NormParams& params, const Tensor& x) override {
    const auto& norm = static_cast<const CudaNorm&>(params);
    if (x.rank() < 1 || x.dim(-1) != norm.channels)
      fail("cuda backend: layer_norm expects [..., {}], got {}", norm.channels, shape_to_string(x.shape()));
    Tensor out = empty(x.shape());
    cuda::layer_norm(element_, data_of(out), data_of(x), floats(norm.scale), floats(norm.shift), norm.eps,
                     x.numel() / norm.channels, norm.channels, stream_);
    check_launch("layer_norm");
    return out;
  }

  Tensor grid_to_tokens(const Tensor& x) override {
    expect_rank(x, 4, "grid_to_tokens");
    Tensor out = empty({x.dim(0), x.dim(2) * x.dim(3), x.dim(1)});
    cuda::grid_to_tokens(element_, data_of(out), data_of(x), x.dim(0), x.dim(1), x.dim(2) * x.dim(3), stream_);
    check_launch("grid_to_tokens");
    return out;
  }

  Tensor prepend_token(const Tensor& tokens, const Tensor& first) override {
    op_checks::prepend("cuda", tokens, first);
    const std::int64_t n = tokens.dim(0), l = tokens.dim(1), d = tokens.dim(2);
    Tensor out = empty({n, l + 1, d});
    cuda::prepend_token(element_, data_of(out), data_of(tokens), data_of(first), first.rank() == 1, n, l, d, stream_);
    check_launch("prepend_token");
    return out;
  }

  Tensor mean_tokens(const Tensor& tokens) override {
    expect_rank(tokens, 3, "mean_tokens");
    Tensor out = empty({tokens.dim(0), tokens.dim(2)});
    cuda::mean_tokens(element_, data_of(out), data_of(tokens), tokens.dim(0), tokens.dim(1), tokens.dim(2), stream_);
    check_launch("mean_tokens");
    return out;
  }

  Tensor add_positional(const Tensor& tokens, const Tensor& positional) override {
    op_checks::positional("cuda", tokens, positional);
    const std::int64_t n = tokens.dim(0), l = tokens.dim(1), d = tokens.dim(2);
    Tensor out = empty(tokens.shape());
    cuda::add_positional(element_, data_of(out), data_of(tokens), data_of(positional), n, l, d, stream_);
    check_launch("add_positional");
    return out;
  }

  Tensor select_tokens(const Tensor& tokens, std::span<const std::int64_t> positions) override {
    return gather(tokens, op_checks::token_rows("cuda", tokens, positions), {tokens.dim(0), tokens.dim(2)});
  }

  Tensor embedding(const Tensor& table, std::span<const std::int32_t> ids, std::int64_t batch,
                   std::int64_t length) override {
    expect_rank(table, 2, "embedding");
    op_checks::token_ids("cuda", ids, table.dim(0), batch, length);
    return gather(table, std::vector<std::int64_t>(ids.begin(), ids.end()), {batch, length, table.dim(1)});
  }

  // q, k, v split into [N, H, L, hd] blocks, then two strided batched GEMMs around our softmax kernel.
  Tensor attention(const Tensor& qkv, int heads, bool causal, const Tensor* score_bias) override {
    const auto [n, l, d, hd] = op_checks::attention("cuda", qkv, heads, score_bias);
    const Shape head_shape{n, heads, l, hd};
    Tensor q = empty(head_shape), k = empty(head_shape), v = empty(head_shape);
    split_heads(element_, data_of(q), data_of(k), data_of(v), data_of(qkv), n, l, heads, hd, stream_);
    check_launch("split_heads");
    // Per (n, h), row-major scores = q k^T, i.e. column-major scores^T = k q^T.
    Tensor scores = empty({n, heads, l, l});
    const int batch = static_cast<int>(n * heads);
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, l, l, hd, 1.f / std::sqrt(static_cast<float>(hd)), data_of(k), hd, l * hd,
         data_of(q), hd, l * hd, data_of(scores), l, l * l, batch);
    attention_softmax(element_, data_of(scores), score_bias ? data_of(*score_bias) : nullptr,
                      score_bias && score_bias->dim(0) == 1, causal, n, heads, l, stream_);
    check_launch("attention_softmax");
    // Row-major context = p v, i.e. column-major context^T = v^T p^T.
    Tensor context = empty(head_shape);
    gemm(CUBLAS_OP_N, CUBLAS_OP_N, hd, l, l, 1.f, data_of(v), hd, l * hd, data_of(scores), l, l * l,
         data_of(context), hd, l * hd, batch);
    Tensor out = empty({n, l, d});
    merge_heads(element_, data_of(out), data_of(context), n, l, heads, hd, stream_);
    check_launch("merge_heads");
    return out;
  }

  // Every query row, then row 0: on the GPU the other rows cost little next to the rest of the block.
  Tensor first_token_attention(const Tensor& qkv, int heads) override {
    const Tensor all = attention(qkv, heads, false, nullptr);
    return select_tokens(all, std::vector<std::int64_t>(all.dim(0), 0));
  }

  std::vector<float> summarize(const Tensor& x, PoolMode mode) override {
    if (x.rank() == 2) return download(x);
    if (x.rank() == 3) {  // [N, L, D]: the class token, in both modes
      std::vector<std::int64_t> rows(x.dim(0));
      for (std::int64_t i = 0; i < x.dim(0); ++i) rows[i] = i * x.dim(1);
      return download(gather(x, rows, {x.dim(0), x.dim(2)}));
    }
    expect_rank(x, 4, "summarize");
    return to_host(plane_summaries(x, mode).get(), x.dim(0) * x.dim(1), Element::F32);
  }

 private:
  Tensor empty(const Shape& shape) {
    const std::size_t bytes = static_cast<std::size_t>(shape_numel(shape)) * element_size(element_);
    return Tensor(shape, std::make_shared<CudaStorage>(allocator_->allocate(bytes, stream_)));
  }

  // act(x + other) elementwise (other may be null), as a channel epilogue over one channel.
  Tensor elementwise(const Tensor& x, const Tensor* other, Activation act) {
    Tensor out = empty(x.shape());
    channel_epilogue(element_, data_of(out), data_of(x), nullptr, nullptr, nullptr, other ? data_of(*other) : nullptr,
                     act_of(act), x.numel(), 1, std::max<std::int64_t>(1, x.numel()), stream_);
    check_launch("channel_epilogue");
    return out;
  }

  // cuDNN pooling of [N, C, H, W]; max pooling propagates NaN, as PyTorch's.
  Tensor pool(const Tensor& x, cudnnPoolingMode_t mode, int kernel, int stride, int padding, const char* op) {
    expect_rank(x, 4, op);
    const int oh = pooled_size(x.dim(2), kernel, stride, padding), ow = pooled_size(x.dim(3), kernel, stride, padding);
    Tensor out = empty({x.dim(0), x.dim(1), oh, ow});
    cudnnPoolingDescriptor_t pooling = nullptr;
    CLIPDISSECT_CUDA_CHECK(cudnnCreatePoolingDescriptor(&pooling));
    const std::unique_ptr<cudnnPoolingStruct, decltype(&cudnnDestroyPoolingDescriptor)> owned(
        pooling, cudnnDestroyPoolingDescriptor);
    CLIPDISSECT_CUDA_CHECK(cudnnSetPooling2dDescriptor(pooling, mode, CUDNN_PROPAGATE_NAN, kernel, kernel, padding,
                                                       padding, stride, stride));
    const TensorDesc x_desc(element_, x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    const TensorDesc y_desc(element_, x.dim(0), x.dim(1), oh, ow);
    const float one = 1.f, zero = 0.f;
    CLIPDISSECT_CUDA_CHECK(
        cudnnPoolingForward(dnn_, pooling, &one, x_desc.get(), data_of(x), &zero, y_desc.get(), data_of(out)));
    return out;
  }

  static int pooled_size(std::int64_t size, int kernel, int stride, int padding) {
    if (kernel < 1 || stride < 1 || padding < 0 || size + 2 * padding < kernel)
      fail("cuda backend: pooling window {} (stride {}, padding {}) does not fit a size of {}", kernel, stride,
           padding, size);
    return static_cast<int>((size + 2 * padding - kernel) / stride + 1);
  }

  // Float32 [N * C] means or maxima over each plane of [N, C, H, W].
  std::shared_ptr<void> plane_summaries(const Tensor& x, PoolMode mode) {
    const std::int64_t rows = x.dim(0) * x.dim(1);
    std::shared_ptr<void> out = allocator_->allocate(static_cast<std::size_t>(rows) * sizeof(float), stream_);
    plane_summary(element_, static_cast<float*>(out.get()), data_of(x), rows, x.dim(2) * x.dim(3),
                  mode == PoolMode::Max, stream_);
    check_launch("plane_summary");
    return out;
  }

  Tensor gather(const Tensor& table, const std::vector<std::int64_t>& rows, const Shape& shape) {
    Tensor out = empty(shape);
    if (rows.empty()) return out;
    // Through a page-locked block: an asynchronous copy from pageable memory may still read it after returning
    // (the runtime only "may" stage it first), and `rows` is often a temporary.
    const std::size_t bytes = rows.size() * sizeof(std::int64_t);
    const std::shared_ptr<void> staged = pinned_->allocate(bytes);
    std::memcpy(staged.get(), rows.data(), bytes);
    std::shared_ptr<void> indices = allocator_->allocate(bytes, stream_);
    CLIPDISSECT_CUDA_CHECK(cudaMemcpyAsync(indices.get(), staged.get(), bytes, cudaMemcpyHostToDevice, stream_));
    CLIPDISSECT_CUDA_CHECK(cudaEventRecord(pinned_->read_event(staged.get(), bytes), stream_));  // before reuse
    gather_rows(element_, data_of(out), data_of(table), static_cast<const std::int64_t*>(indices.get()),
                static_cast<std::int64_t>(rows.size()), table.dim(-1), stream_);
    check_launch("gather_rows");
    return out;
  }

  std::vector<float> to_host(const void* device_data, std::int64_t count, Element element) {
    std::vector<float> host(count);
    std::shared_ptr<void> converted;
    if (element != Element::F32) {
      converted = allocator_->allocate(static_cast<std::size_t>(count) * sizeof(float), stream_);
      cast_to_float(element, static_cast<float*>(converted.get()), device_data, count, stream_);
      check_launch("cast_to_float");
      device_data = converted.get();
    }
    CLIPDISSECT_CUDA_CHECK(
        cudaMemcpyAsync(host.data(), device_data, host.size() * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    CLIPDISSECT_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return host;
  }

  std::shared_ptr<void> floats_on_device(std::span<const float> values) {
    std::shared_ptr<void> out = allocator_->allocate(values.size_bytes(), stream_);
    CLIPDISSECT_CUDA_CHECK(cudaMemcpyAsync(out.get(), values.data(), values.size_bytes(), cudaMemcpyHostToDevice, stream_));
    CLIPDISSECT_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return out;
  }

  // Weights in the element type.
  std::shared_ptr<void> to_device(std::span<const float> values) {
    std::shared_ptr<void> as_float = floats_on_device(values);
    if (element_ == Element::F32) return as_float;
    std::shared_ptr<void> out = allocator_->allocate(values.size() * element_size(element_), stream_);
    cast_from_float(element_, out.get(), floats(as_float), static_cast<std::int64_t>(values.size()), stream_);
    check_launch("cast_from_float");
    return out;
  }

  std::shared_ptr<void> channels_on_device(std::span<const float> values, int channels, const char* what) {
    if (static_cast<int>(values.size()) != channels)
      fail("cuda backend: {} has {} values, expected {}", what, values.size(), channels);
    return floats_on_device(values);
  }

  // fp32 stays fp32 (no TF32, which the default math type allows: the CPU comparison is within 1e-3);
  // fp16 and bf16 use the tensor cores.
  cudnnMathType_t allowed_math() const { return element_ == Element::F32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH; }

  // Runs `attempt(algorithm)`, a cuDNN call, with the algorithm kept in `kept` for x's shape; on the shape's first
  // call, with cuDNN's ranked candidates in turn until one succeeds (the heuristics can rank first an algorithm
  // that the call then rejects for the shape) and keeps that one, or that none ran. The last status.
  template <typename Attempt>
  cudnnStatus_t run_ranked(CudaConv& conv, AlgorithmChoice& kept, const Tensor& x, const TensorDesc& x_desc,
                           const TensorDesc& y_desc, Attempt attempt) {
    const InputShape shape{x.dim(0), x.dim(1), x.dim(2), x.dim(3)};
    if (const auto found = kept.find(shape); found != kept.end())
      return found->second ? attempt(*found->second) : CUDNN_STATUS_NOT_SUPPORTED;
    cudnnStatus_t last = CUDNN_STATUS_NOT_SUPPORTED;
    for (const ConvAlgorithm& candidate : conv_candidates(conv, x_desc, y_desc)) {
      last = attempt(candidate);
      if (last == CUDNN_STATUS_SUCCESS) {
        kept[shape] = candidate;
        return last;
      }
      (void)cudaGetLastError();  // a rejected launch must not surface at our next kernel's check_launch
    }
    kept[shape] = std::nullopt;
    return last;
  }

  // Workspace for `algorithm`, with its math type set on the convolution (conv_candidates checked that it can be).
  std::shared_ptr<void> workspace_for(CudaConv& conv, const ConvAlgorithm& algorithm) {
    CLIPDISSECT_CUDA_CHECK(cudnnSetConvolutionMathType(conv.conv, algorithm.math));
    return allocator_->allocate(algorithm.workspace, stream_);
  }

  // The bare convolution of x into out.
  void convolve(CudaConv& conv, const Tensor& x, const TensorDesc& x_desc, const TensorDesc& y_desc, Tensor& out) {
    const cudnnStatus_t status = run_ranked(conv, conv.algorithms, x, x_desc, y_desc, [&](const ConvAlgorithm& a) {
      const std::shared_ptr<void> workspace = workspace_for(conv, a);
      const float one = 1.f, zero = 0.f;
      return cudnnConvolutionForward(dnn_, &one, x_desc.get(), data_of(x), conv.filter, conv.weight.get(), conv.conv,
                                     a.algo, workspace.get(), a.workspace, &zero, y_desc.get(), data_of(out));
    });
    if (status != CUDNN_STATUS_SUCCESS)
      fail("cuda backend: no cuDNN convolution algorithm ran for input {} and a {}x{} kernel ({} -> {} channels, {} "
           "groups) in {} (last status: {})",
           shape_to_string(x.shape()), conv.spec.kernel, conv.spec.kernel, conv.spec.in_channels,
           conv.spec.out_channels, conv.spec.groups, precision_name(precision_), cudnnGetErrorString(status));
  }

  // out = relu(conv(x, fused weight) + residual + fused bias) in one call; false where cuDNN runs no fused
  // algorithm for the shape (or precision), and conv2d then takes the separate path.
  bool convolve_fused(CudaConv& conv, const Tensor& x, const TensorDesc& x_desc, const TensorDesc& y_desc,
                      const Tensor* residual, Tensor& out) {
    const TensorDesc bias_desc(element_, 1, conv.spec.out_channels, 1, 1);
    return run_ranked(conv, conv.fused_algorithms[residual != nullptr], x, x_desc, y_desc, [&](const ConvAlgorithm& a) {
             const std::shared_ptr<void> workspace = workspace_for(conv, a);
             // Without a residual, alpha2 = 0 and z is the output itself (not read), as PyTorch's conv + ReLU.
             const float one = 1.f, alpha2 = residual ? 1.f : 0.f;
             return cudnnConvolutionBiasActivationForward(
                 dnn_, &one, x_desc.get(), data_of(x), conv.filter, conv.fused_weight.get(), conv.conv, a.algo,
                 workspace.get(), a.workspace, &alpha2, y_desc.get(), residual ? data_of(*residual) : data_of(out),
                 bias_desc.get(), conv.fused_bias.get(), relu_, y_desc.get(), data_of(out));
           }) == CUDNN_STATUS_SUCCESS;
  }

  // cuDNN's heuristics' ranking, without the algorithms that need more than the workspace limit or, in fp32,
  // tensor cores.
  std::vector<ConvAlgorithm> conv_candidates(CudaConv& conv, const TensorDesc& x_desc, const TensorDesc& y_desc) {
    CLIPDISSECT_CUDA_CHECK(cudnnSetConvolutionMathType(conv.conv, allowed_math()));
    int most = 0;
    CLIPDISSECT_CUDA_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(dnn_, &most));
    std::vector<cudnnConvolutionFwdAlgoPerf_t> ranked(static_cast<std::size_t>(std::max(most, 1)));
    int returned = 0;
    CLIPDISSECT_CUDA_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(dnn_, x_desc.get(), conv.filter, conv.conv,
                                                                  y_desc.get(), static_cast<int>(ranked.size()),
                                                                  &returned, ranked.data()));
    std::vector<ConvAlgorithm> candidates;
    for (int i = 0; i < returned; ++i) {
      const cudnnConvolutionFwdAlgoPerf_t& c = ranked[i];
      if (c.status != CUDNN_STATUS_SUCCESS) continue;
      const bool tensor_cores = c.mathType == CUDNN_TENSOR_OP_MATH || c.mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
      if (element_ == Element::F32 && tensor_cores) continue;
      const cudnnMathType_t math = element_ == Element::F32 ? CUDNN_FMA_MATH : c.mathType;
      std::size_t workspace = 0;
      if (cudnnSetConvolutionMathType(conv.conv, math) != CUDNN_STATUS_SUCCESS ||
          cudnnGetConvolutionForwardWorkspaceSize(dnn_, x_desc.get(), conv.filter, conv.conv, y_desc.get(), c.algo,
                                                  &workspace) != CUDNN_STATUS_SUCCESS ||
          workspace > kMaxConvWorkspace)
        continue;
      candidates.push_back(ConvAlgorithm{c.algo, math, workspace});
    }
    return candidates;
  }

  // Column-major C = alpha op(A) op(B), `batch` times with the given strides (elements), in the element type
  // with float32 accumulation (no TF32 for fp32: cuBLAS's default math mode).
  void gemm(cublasOperation_t op_a, cublasOperation_t op_b, std::int64_t m, std::int64_t n, std::int64_t k,
            float alpha, const void* a, std::int64_t lda, std::int64_t stride_a, const void* b, std::int64_t ldb,
            std::int64_t stride_b, void* c, std::int64_t ldc, std::int64_t stride_c, int batch) {
    const float beta = 0.f;
    const cudaDataType_t type = blas_type(element_);
    CLIPDISSECT_CUDA_CHECK(cublasGemmStridedBatchedEx(
        blas_, op_a, op_b, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), &alpha, a, type,
        static_cast<int>(lda), stride_a, b, type, static_cast<int>(ldb), stride_b, &beta, c, type,
        static_cast<int>(ldc), stride_c, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  Precision precision_;
  Element element_;
  std::shared_ptr<CachingAllocator> allocator_;
  std::shared_ptr<PinnedAllocator> pinned_;
  cudaStream_t stream_ = nullptr;  // owned by the allocator
  cudaStream_t copy_stream_ = nullptr;
  cudaEvent_t copied_ = nullptr;  // the last upload's copy is done (it has left the staging buffer)
  void* staging_ = nullptr;       // pinned
  std::size_t staging_bytes_ = 0;
  cublasHandle_t blas_ = nullptr;
  cudnnHandle_t dnn_ = nullptr;
  cudnnActivationDescriptor_t relu_ = nullptr;
};

}  // namespace

ConvolutionCounts convolution_counts() { return {fused_convolutions.load(), separate_convolutions.load()}; }

}  // namespace cuda

bool cuda_compiled() { return true; }

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // not sticky, but leave no error behind for the next call
    return 0;
  }
  return count;
}

std::unique_ptr<Backend> make_cuda_backend(int device, Precision precision) {
  return std::make_unique<cuda::CudaBackend>(device, precision);
}

}  // namespace clipdissect
