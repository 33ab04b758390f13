// CPU backend on oneDNN. Convolution outputs stay in the blocked layout oneDNN picks, so a chain of
// convolutions, pools and residual adds runs without reorders; token tensors ([N, L, D]) are plain
// row-major and go through oneDNN matmul, layer norm and softmax.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>

#include <oneapi/dnnl/dnnl.hpp>

#include "clipdissect/backend.h"
#include "clipdissect/error.h"
#include "engine/host_allocator.h"
#include "engine/op_checks.h"

namespace clipdissect {
namespace {

using dnnl::memory;
using Dims = memory::dims;
using Tag = memory::format_tag;
constexpr auto kF32 = memory::data_type::f32;

class CpuStorage final : public TensorStorage {
 public:
  // `mem` describes the data in `block`, which it does not own.
  CpuStorage(memory mem, std::shared_ptr<void> block) : mem_(std::move(mem)), block_(std::move(block)) {}
  const memory& mem() const { return mem_; }
  const std::shared_ptr<void>& block() const { return block_; }

 private:
  memory mem_;
  std::shared_ptr<void> block_;
};

Tag plain_tag(std::size_t rank) {
  switch (rank) {
    case 1: return Tag::a;
    case 2: return Tag::ab;
    case 3: return Tag::abc;
    case 4: return Tag::abcd;
    case 5: return Tag::abcde;
    default: fail("cpu backend: tensors of rank {} are not supported", rank);
  }
}

memory::desc plain_desc(const Shape& shape) { return {Dims(shape.begin(), shape.end()), kF32, plain_tag(shape.size())}; }

const memory& mem_of(const Tensor& t) {
  if (!t.defined()) fail("cpu backend: undefined tensor");
  auto* storage = dynamic_cast<CpuStorage*>(t.storage());
  if (!storage) fail("cpu backend: tensor belongs to another backend");
  return storage->mem();
}

Dims dims2(std::int64_t a, std::int64_t b) { return {a, b}; }

dnnl::algorithm eltwise_algorithm(Activation act) {
  switch (act) {
    case Activation::Relu: return dnnl::algorithm::eltwise_relu;
    case Activation::Gelu: return dnnl::algorithm::eltwise_gelu_erf;
    case Activation::QuickGelu: return dnnl::algorithm::eltwise_swish;
    case Activation::None: break;
  }
  fail("cpu backend: no eltwise algorithm for Activation::None");
}

// swish(x) = x * sigmoid(alpha x) is QuickGELU with alpha = 1.702.
float eltwise_alpha(Activation act) { return act == Activation::QuickGelu ? 1.702f : 0.f; }

void append_activation(dnnl::post_ops& ops, Activation act) {
  if (act != Activation::None) ops.append_eltwise(1.f, eltwise_algorithm(act), eltwise_alpha(act), 0.f);
}

struct CpuConv final : ConvParams {
  Conv2dSpec spec;
  memory weights_plain;  // [O, I/G, K, K] or [G, O/G, I/G, K, K]
  memory bias;           // [O], zeros when the checkpoint has none
  memory scale, shift;   // [1, O, 1, 1] per-channel affine after the convolution, or empty
  std::mutex mutex;
  std::vector<std::pair<memory::desc, memory>> weights_by_layout;  // reordered copies, one per layout asked for
};

struct CpuLinear final : LinearParams {
  int in = 0, out = 0;
  memory weights;  // logical [in, out], stored as PyTorch's [out, in] (format ba)
  memory bias;     // [1, out] or empty
};

struct CpuNorm final : NormParams {
  memory scale, shift;  // LayerNorm: [D]; channel affine: [1, C, 1, 1]
  float eps = 0;        // LayerNorm only
  int channels = 0;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads)
      : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_), allocator_(std::make_shared<HostAllocator>(kCacheLimit)) {
    set_threads(threads);
  }

  std::string name() const override { return "cpu"; }

  void set_threads(int threads) override {
    if (threads > 0) omp_set_num_threads(threads);
  }

  Tensor upload(std::span<const float> data, const Shape& shape) override {
    if (static_cast<std::int64_t>(data.size()) != shape_numel(shape))
      fail("cpu backend: upload of {} values into shape {}", data.size(), shape_to_string(shape));
    Tensor t = empty(shape);
    std::memcpy(data_of(t), data.data(), data.size() * sizeof(float));
    return t;
  }

  // From the pool the tensors use, so that batch after batch the same pages serve.
  HostBuffer host_buffer(std::size_t floats) override {
    return HostBuffer(allocator_->allocate(floats * sizeof(float)), floats);
  }

  std::vector<float> download(const Tensor& tensor) override {
    Tensor plain = to_plain(tensor);
    const float* p = data_of(plain);
    return {p, p + plain.numel()};
  }

  std::shared_ptr<ConvParams> make_conv2d(const Conv2dSpec& spec, std::span<const float> weight,
                                          std::span<const float> bias, std::span<const float> scale,
                                          std::span<const float> shift) override {
    op_checks::conv_weight("cpu", spec, weight.size(), bias.size());
    auto conv = std::make_shared<CpuConv>();
    conv->spec = spec;
    conv->weights_plain = memory({conv_weight_dims(spec), kF32, spec.groups > 1 ? Tag::goihw : Tag::oihw}, engine_);
    std::memcpy(conv->weights_plain.get_data_handle(), weight.data(), weight.size_bytes());
    conv->bias = memory({{spec.out_channels}, kF32, Tag::a}, engine_);
    auto* b = static_cast<float*>(conv->bias.get_data_handle());
    if (bias.empty()) std::fill_n(b, spec.out_channels, 0.f);
    else std::copy(bias.begin(), bias.end(), b);
    if (!scale.empty() || !shift.empty()) {
      conv->scale = channel_memory(scale, spec.out_channels, "conv scale");
      conv->shift = channel_memory(shift, spec.out_channels, "conv shift");
    }
    return conv;
  }

  std::shared_ptr<LinearParams> make_linear(int in_features, int out_features, std::span<const float> weight,
                                            std::span<const float> bias) override {
    op_checks::linear_weight("cpu", in_features, out_features, weight.size(), bias.size());
    auto linear = std::make_shared<CpuLinear>();
    linear->in = in_features;
    linear->out = out_features;
    linear->weights = memory({dims2(in_features, out_features), kF32, Tag::ba}, engine_);
    std::memcpy(linear->weights.get_data_handle(), weight.data(), weight.size_bytes());
    if (!bias.empty()) {
      linear->bias = memory({dims2(1, out_features), kF32, Tag::ab}, engine_);
      std::memcpy(linear->bias.get_data_handle(), bias.data(), bias.size_bytes());
    }
    return linear;
  }

  std::shared_ptr<NormParams> make_channel_affine(std::span<const float> scale, std::span<const float> shift) override {
    auto affine = std::make_shared<CpuNorm>();
    affine->channels = static_cast<int>(scale.size());
    affine->scale = channel_memory(scale, affine->channels, "channel scale");
    affine->shift = channel_memory(shift, affine->channels, "channel shift");
    return affine;
  }

  std::shared_ptr<NormParams> make_layer_norm(std::span<const float> gamma, std::span<const float> beta,
                                              float eps) override {
    return make_norm(gamma, beta, eps);
  }

  Tensor conv2d(const ConvParams& params, const Tensor& x, const Tensor* residual, Activation act,
               bool raw) override {
    auto& conv = const_cast<CpuConv&>(static_cast<const CpuConv&>(params));
    const Conv2dSpec& s = conv.spec;
    const Shape out_shape = op_checks::conv2d_output("cpu", s, x, residual, act, raw);

    const memory::desc src_any(Dims(x.shape().begin(), x.shape().end()), kF32, Tag::any);
    const memory::desc dst_any(Dims(out_shape.begin(), out_shape.end()), kF32, Tag::any);
    // (conv + bias) * scale + shift, + residual, then the activation: PyTorch's order of float operations.
    dnnl::post_ops ops;
    const bool affine = !raw && conv.scale.get(true) != nullptr;
    if (affine) {
      ops.append_binary(dnnl::algorithm::binary_mul, conv.scale.get_desc());
      ops.append_binary(dnnl::algorithm::binary_add, conv.shift.get_desc());
    }
    memory res;
    if (residual) {
      res = mem_of(*residual);
      ops.append_binary(dnnl::algorithm::binary_add, res.get_desc());
    }
    append_activation(ops, act);
    dnnl::primitive_attr attr;
    attr.set_post_ops(ops);
    const Dims stride{s.stride, s.stride}, pad{s.padding, s.padding};
    dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                         src_any, conv_weights_desc(s, Tag::any), conv.bias.get_desc(), dst_any,
                                         stride, pad, pad);
    dnnl::convolution_forward::primitive_desc pd(desc, attr, engine_);

    const Tensor src = as_layout(x, pd.src_desc());
    Tensor out = new_tensor(out_shape, pd.dst_desc());
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, mem_of(src)},
                                         {DNNL_ARG_WEIGHTS, conv_weights(conv, pd.weights_desc())},
                                         {DNNL_ARG_BIAS, conv.bias},
                                         {DNNL_ARG_DST, mem_of(out)}};
    if (affine) {
      args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, conv.scale);
      args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(1) | DNNL_ARG_SRC_1, conv.shift);
    }
    if (residual) args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(affine ? 2 : 0) | DNNL_ARG_SRC_1, res);
    dnnl::convolution_forward(pd).execute(stream_, args);
    stream_.wait();
    return out;
  }

  Tensor channel_affine(const NormParams& params, const Tensor& x, Activation act) override {
    const auto& affine = static_cast<const CpuNorm&>(params);
    if (x.rank() != 4 || x.dim(1) != affine.channels)
      fail("cpu backend: channel_affine expects [N, {}, H, W], got {}", affine.channels, shape_to_string(x.shape()));
    // A plain loop over the row-major layout: oneDNN's binary op with a per-channel operand has no fast
    // kernel for blocked layouts (it falls back to its reference code, ~100x slower).
    const Tensor src = to_plain(x);
    Tensor out = empty(x.shape());
    const float* in = data_of(src);
    float* y = data_of(out);
    const auto* scale = static_cast<const float*>(affine.scale.get_data_handle());
    const auto* shift = static_cast<const float*>(affine.shift.get_data_handle());
    const std::int64_t channels = x.dim(1), plane = x.dim(2) * x.dim(3);
#pragma omp parallel for
    for (std::int64_t nc = 0; nc < x.dim(0) * channels; ++nc) {
      const float a = scale[nc % channels], b = shift[nc % channels];
      for (std::int64_t i = nc * plane; i < (nc + 1) * plane; ++i) y[i] = in[i] * a + b;
    }
    return activate(out, act);
  }

  Tensor activate(const Tensor& x, Activation act) override {
    if (act == Activation::None) return x;
    const memory& src = mem_of(x);
    dnnl::eltwise_forward::desc desc(dnnl::prop_kind::forward_inference, eltwise_algorithm(act), src.get_desc(),
                                     eltwise_alpha(act));
    dnnl::eltwise_forward::primitive_desc pd(desc, engine_);
    Tensor out = new_tensor(x.shape(), pd.dst_desc());
    dnnl::eltwise_forward(pd).execute(stream_, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, mem_of(out)}});
    stream_.wait();
    return out;
  }

  Tensor add(const Tensor& a, const Tensor& b, Activation act) override {
    if (a.shape() != b.shape())
      fail("cpu backend: add of {} and {}", shape_to_string(a.shape()), shape_to_string(b.shape()));
    const memory& src0 = mem_of(a);
    const Tensor b_like_a = as_layout(b, src0.get_desc());
    const memory& src1 = mem_of(b_like_a);
    dnnl::post_ops ops;
    append_activation(ops, act);
    dnnl::primitive_attr attr;
    attr.set_post_ops(ops);
    dnnl::binary::desc desc(dnnl::algorithm::binary_add, src0.get_desc(), src1.get_desc(), src0.get_desc());
    dnnl::binary::primitive_desc pd(desc, attr, engine_);
    Tensor out = new_tensor(a.shape(), pd.dst_desc());
    dnnl::binary(pd).execute(stream_, {{DNNL_ARG_SRC_0, src0}, {DNNL_ARG_SRC_1, src1}, {DNNL_ARG_DST, mem_of(out)}});
    stream_.wait();
    return out;
  }

  Tensor max_pool2d(const Tensor& x, int kernel, int stride, int padding) override {
    return pool(x, dnnl::algorithm::pooling_max, kernel, stride, padding);
  }

  Tensor avg_pool2d(const Tensor& x, int kernel) override {
    return pool(x, dnnl::algorithm::pooling_avg_exclude_padding, kernel, kernel, 0);
  }

  Tensor global_avg_pool(const Tensor& x) override {
    expect_rank(x, 4, "global_avg_pool");
    return upload(summarize(x, PoolMode::Avg), {x.dim(0), x.dim(1)});
  }

  Tensor linear(const LinearParams& params, const Tensor& x, Activation act, const Tensor* residual) override {
    const auto& linear = static_cast<const CpuLinear&>(params);
    const Shape out_shape = op_checks::linear_output("cpu", linear.in, linear.out, x, residual);
    const std::int64_t rows = x.numel() / linear.in;
    Tensor src = to_plain(x);
    const memory::desc src_md(dims2(rows, linear.in), kF32, Tag::ab);
    const memory::desc dst_md(dims2(rows, linear.out), kF32, Tag::ab);
    dnnl::post_ops ops;
    append_activation(ops, act);
    Tensor res_plain;
    if (residual) {
      res_plain = to_plain(*residual);
      ops.append_binary(dnnl::algorithm::binary_add, dst_md);
    }
    dnnl::primitive_attr attr;
    attr.set_post_ops(ops);
    const bool has_bias = linear.bias.get(true) != nullptr;
    dnnl::matmul::desc desc = has_bias ? dnnl::matmul::desc(src_md, linear.weights.get_desc(),
                                                            linear.bias.get_desc(), dst_md)
                                       : dnnl::matmul::desc(src_md, linear.weights.get_desc(), dst_md);
    dnnl::matmul::primitive_desc pd(desc, attr, engine_);
    Tensor out = empty(out_shape);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(src_md, engine_, data_of(src))},
                                         {DNNL_ARG_WEIGHTS, linear.weights},
                                         {DNNL_ARG_DST, memory(dst_md, engine_, data_of(out))}};
    if (has_bias) args.emplace(DNNL_ARG_BIAS, linear.bias);
    if (residual)
      args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(act == Activation::None ? 0 : 1) | DNNL_ARG_SRC_1,
                   memory(dst_md, engine_, data_of(res_plain)));
    dnnl::matmul(pd).execute(stream_, args);
    stream_.wait();
    return out;
  }

  Tensor layer_norm(const NormParams& params, const Tensor& x) override {
    const auto& norm = static_cast<const CpuNorm&>(params);
    if (x.dim(-1) != norm.channels)
      fail("cpu backend: layer_norm expects [..., {}], got {}", norm.channels, shape_to_string(x.shape()));
    Tensor src = to_plain(x);
    const memory::desc md(dims2(x.numel() / norm.channels, norm.channels), kF32, Tag::ab);
    dnnl::layer_normalization_forward::desc desc(
        dnnl::prop_kind::forward_inference, md, norm.eps,
        dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift);
    dnnl::layer_normalization_forward::primitive_desc pd(desc, engine_);
    Tensor out = empty(x.shape());
    dnnl::layer_normalization_forward(pd).execute(
        stream_, {{DNNL_ARG_SRC, memory(md, engine_, data_of(src))},
                  {DNNL_ARG_DST, memory(md, engine_, data_of(out))},
                  {DNNL_ARG_SCALE, norm.scale},
                  {DNNL_ARG_SHIFT, norm.shift},
                  {DNNL_ARG_MEAN, memory(pd.mean_desc(), engine_)},
                  {DNNL_ARG_VARIANCE, memory(pd.variance_desc(), engine_)}});
    stream_.wait();
    return out;
  }

  Tensor grid_to_tokens(const Tensor& x) override {
    expect_rank(x, 4, "grid_to_tokens");
    // NHWC is [N, H*W, C] row-major: the token sequence, viewed without a copy.
    const Tensor nhwc = as_layout(x, {mem_of(x).get_desc().dims(), kF32, Tag::nhwc});
    const Shape tokens{x.dim(0), x.dim(2) * x.dim(3), x.dim(1)};
    return Tensor(tokens, std::make_shared<CpuStorage>(memory(plain_desc(tokens), engine_, data_of(nhwc)),
                                                       static_cast<CpuStorage*>(nhwc.storage())->block()));
  }

  Tensor prepend_token(const Tensor& tokens, const Tensor& first) override {
    op_checks::prepend("cpu", tokens, first);
    const std::int64_t n = tokens.dim(0), l = tokens.dim(1), d = tokens.dim(2);
    const bool shared = first.rank() == 1;
    Tensor src = to_plain(tokens), head = to_plain(first);
    Tensor out = empty({n, l + 1, d});
    const float *s = data_of(src), *h = data_of(head);
    float* o = data_of(out);
#pragma omp parallel for
    for (std::int64_t i = 0; i < n; ++i) {
      std::memcpy(o + i * (l + 1) * d, h + (shared ? 0 : i * d), d * sizeof(float));
      std::memcpy(o + (i * (l + 1) + 1) * d, s + i * l * d, l * d * sizeof(float));
    }
    return out;
  }

  Tensor mean_tokens(const Tensor& tokens) override {
    expect_rank(tokens, 3, "mean_tokens");
    const std::int64_t n = tokens.dim(0), l = tokens.dim(1), d = tokens.dim(2);
    Tensor src = to_plain(tokens);
    Tensor out = empty({n, d});
    const float* s = data_of(src);
    float* o = data_of(out);
#pragma omp parallel for
    for (std::int64_t i = 0; i < n; ++i) {
      float* row = o + i * d;
      std::fill_n(row, d, 0.f);
      for (std::int64_t t = 0; t < l; ++t)
        for (std::int64_t c = 0; c < d; ++c) row[c] += s[(i * l + t) * d + c];
      for (std::int64_t c = 0; c < d; ++c) row[c] /= static_cast<float>(l);
    }
    return out;
  }

  Tensor add_positional(const Tensor& tokens, const Tensor& positional) override {
    op_checks::positional("cpu", tokens, positional);
    const std::int64_t n = tokens.dim(0), l = tokens.dim(1), d = tokens.dim(2);
    Tensor src = to_plain(tokens), pos = to_plain(positional);
    Tensor out = empty(tokens.shape());
    const float *s = data_of(src), *p = data_of(pos);
    float* o = data_of(out);
#pragma omp parallel for
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t j = 0; j < l * d; ++j) o[i * l * d + j] = s[i * l * d + j] + p[j];
    return out;
  }

  Tensor select_tokens(const Tensor& tokens, std::span<const std::int64_t> positions) override {
    const std::vector<std::int64_t> rows = op_checks::token_rows("cpu", tokens, positions);
    const std::int64_t n = tokens.dim(0), d = tokens.dim(2);
    Tensor src = to_plain(tokens);
    Tensor out = empty({n, d});
    for (std::int64_t i = 0; i < n; ++i) std::memcpy(data_of(out) + i * d, data_of(src) + rows[i] * d, d * sizeof(float));
    return out;
  }

  Tensor embedding(const Tensor& table, std::span<const std::int32_t> ids, std::int64_t batch,
                   std::int64_t length) override {
    expect_rank(table, 2, "embedding");
    op_checks::token_ids("cpu", ids, table.dim(0), batch, length);
    const std::int64_t d = table.dim(1);
    Tensor src = to_plain(table);
    Tensor out = empty({batch, length, d});
    for (std::size_t i = 0; i < ids.size(); ++i)
      std::memcpy(data_of(out) + i * d, data_of(src) + ids[i] * d, d * sizeof(float));
    return out;
  }

  Tensor attention(const Tensor& qkv, int heads, bool causal, const Tensor* score_bias) override {
    const auto [n, l, d, hd] = op_checks::attention("cpu", qkv, heads, score_bias);
    return attend(qkv, heads, l, causal, score_bias, {n, l, d});
  }

  Tensor first_token_attention(const Tensor& qkv, int heads) override {
    const auto [n, l, d, hd] = op_checks::attention("cpu", qkv, heads, nullptr);
    return attend(qkv, heads, 1, false, nullptr, {n, d});
  }


  std::vector<float> summarize(const Tensor& x, PoolMode mode) override {
    Tensor plain = to_plain(x);
    const float* p = data_of(plain);
    if (x.rank() == 2) return {p, p + x.numel()};
    const std::int64_t n = x.dim(0), c = x.rank() == 3 ? x.dim(2) : x.dim(1);
    std::vector<float> out(n * c);
    if (x.rank() == 3) {  // [N, L, D]: the class token, in both modes
      for (std::int64_t i = 0; i < n; ++i) std::memcpy(&out[i * c], p + i * x.dim(1) * c, c * sizeof(float));
      return out;
    }
    expect_rank(x, 4, "summarize");
    const std::int64_t hw = x.dim(2) * x.dim(3);
#pragma omp parallel for
    for (std::int64_t i = 0; i < n * c; ++i) {
      const float* plane = p + i * hw;
      if (mode == PoolMode::Max) {
        float m = plane[0];
        for (std::int64_t j = 1; j < hw && !std::isnan(m); ++j) m = std::isnan(plane[j]) ? plane[j] : std::max(m, plane[j]);
        out[i] = m;  // NaN propagates, as torch.amax
      } else {
        double sum = 0;
        for (std::int64_t j = 0; j < hw; ++j) sum += plane[j];
        out[i] = static_cast<float>(sum / static_cast<double>(hw));
      }
    }
    return out;
  }

 private:
  static float* data_of(const Tensor& t) { return static_cast<float*>(mem_of(t).get_data_handle()); }

  static void expect_rank(const Tensor& t, int rank, const char* op) { op_checks::rank("cpu", t, rank, op); }

  // Scaled dot-product attention of the first `queries` positions over all L keys; qkv as attention() takes
  // it, the result [N, queries, D] stored row-major under `out_shape`. A score bias needs all queries.
  Tensor attend(const Tensor& qkv, int heads, std::int64_t queries, bool causal, const Tensor* score_bias,
                const Shape& out_shape) {
    const std::int64_t n = qkv.dim(0), l = qkv.dim(1), d = qkv.dim(2) / 3, hd = d / heads;
    Tensor packed = to_plain(qkv);
    float* base = data_of(packed);
    const Dims query_dims{n, heads, queries, hd};
    const Dims view_strides{l * 3 * d, hd, 3 * d, 1};
    const memory::desc q_md(query_dims, kF32, view_strides);
    const memory::desc kt_md({n, heads, hd, l}, kF32, Dims{l * 3 * d, hd, 1, 3 * d});
    const memory::desc v_md({n, heads, l, hd}, kF32, view_strides);
    const memory::desc scores_md({n, heads, queries, l}, kF32, Tag::abcd);

    // scores = (q k^T) / sqrt(hd) (+ causal mask) (+ score bias), softmax over keys. The additions are
    // binary post-ops of the score matmul, in that order.
    dnnl::primitive_attr score_attr;
    score_attr.set_output_scales(0, {1.f / std::sqrt(static_cast<float>(hd))});
    std::vector<memory> addends;
    if (causal) {
      memory mask({{1, 1, queries, l}, kF32, Tag::abcd}, engine_);
      float* m = static_cast<float*>(mask.get_data_handle());
      for (std::int64_t i = 0; i < queries; ++i)
        for (std::int64_t j = 0; j < l; ++j) m[i * l + j] = j > i ? -std::numeric_limits<float>::infinity() : 0.f;
      addends.push_back(mask);
    }
    Tensor bias_plain;
    if (score_bias) {
      bias_plain = to_plain(*score_bias);
      addends.push_back(mem_of(bias_plain));
    }
    dnnl::post_ops ops;
    for (const memory& addend : addends) ops.append_binary(dnnl::algorithm::binary_add, addend.get_desc());
    score_attr.set_post_ops(ops);
    dnnl::matmul::primitive_desc score_pd(dnnl::matmul::desc(q_md, kt_md, scores_md), score_attr, engine_);
    const Tensor score_tensor = new_tensor({n, heads, queries, l}, scores_md);
    const memory& scores = mem_of(score_tensor);
    std::unordered_map<int, memory> score_args{{DNNL_ARG_SRC, memory(q_md, engine_, base)},
                                               {DNNL_ARG_WEIGHTS, memory(kt_md, engine_, base + d)},
                                               {DNNL_ARG_DST, scores}};
    for (std::size_t i = 0; i < addends.size(); ++i)
      score_args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(static_cast<int>(i)) | DNNL_ARG_SRC_1, addends[i]);
    dnnl::matmul(score_pd).execute(stream_, score_args);

    dnnl::softmax_forward::primitive_desc softmax_pd(
        dnnl::softmax_forward::desc(dnnl::prop_kind::forward_inference, scores_md, 3), engine_);
    dnnl::softmax_forward(softmax_pd).execute(stream_, {{DNNL_ARG_SRC, scores}, {DNNL_ARG_DST, scores}});

    // out[n, t, h * hd + c] = sum_s p[n, h, t, s] v[n, s, h, c]
    Tensor out = empty(out_shape);
    const memory::desc out_md(query_dims, kF32, Dims{queries * d, hd, d, 1});
    dnnl::matmul::primitive_desc out_pd(dnnl::matmul::desc(scores_md, v_md, out_md), engine_);
    dnnl::matmul(out_pd).execute(stream_, {{DNNL_ARG_SRC, scores},
                                           {DNNL_ARG_WEIGHTS, memory(v_md, engine_, base + 2 * d)},
                                           {DNNL_ARG_DST, memory(out_md, engine_, data_of(out))}});
    stream_.wait();
    return out;
  }

  // A tensor of `shape` stored as `desc`, in memory from the pool.
  Tensor new_tensor(const Shape& shape, const memory::desc& desc) {
    std::shared_ptr<void> block = allocator_->allocate(desc.get_size());
    memory mem(desc, engine_, block.get());
    return Tensor(shape, std::make_shared<CpuStorage>(std::move(mem), std::move(block)));
  }

  Tensor empty(const Shape& shape) { return new_tensor(shape, plain_desc(shape)); }

  void reorder(memory src, memory dst) {
    dnnl::reorder(src, dst).execute(stream_, src, dst);
    stream_.wait();
  }

  // `t` in layout `desc`, reordered only when it differs.
  Tensor as_layout(const Tensor& t, const memory::desc& desc) {
    if (mem_of(t).get_desc() == desc) return t;
    Tensor out = new_tensor(t.shape(), desc);
    reorder(mem_of(t), mem_of(out));
    return out;
  }

  Tensor to_plain(const Tensor& t) { return as_layout(t, plain_desc(t.shape())); }

  static Dims conv_weight_dims(const Conv2dSpec& s) {
    if (s.groups > 1)
      return {s.groups, s.out_channels / s.groups, s.in_channels / s.groups, s.kernel, s.kernel};
    return {s.out_channels, s.in_channels, s.kernel, s.kernel};
  }
  static memory::desc conv_weights_desc(const Conv2dSpec& s, Tag tag) { return {conv_weight_dims(s), kF32, tag}; }

  memory conv_weights(CpuConv& conv, const memory::desc& desc) {
    std::lock_guard lock(conv.mutex);
    if (conv.weights_plain.get_desc() == desc) return conv.weights_plain;
    for (auto& [layout, mem] : conv.weights_by_layout)
      if (layout == desc) return mem;
    memory reordered(desc, engine_);  // kept with the parameters, not pooled
    reorder(conv.weights_plain, reordered);
    conv.weights_by_layout.emplace_back(desc, reordered);
    return reordered;
  }

  Tensor pool(const Tensor& x, dnnl::algorithm algorithm, int kernel, int stride, int padding) {
    expect_rank(x, 4, "pool");
    const std::int64_t oh = (x.dim(2) + 2 * padding - kernel) / stride + 1;
    const std::int64_t ow = (x.dim(3) + 2 * padding - kernel) / stride + 1;
    const Shape out_shape{x.dim(0), x.dim(1), oh, ow};
    const memory& src = mem_of(x);
    const Dims k{kernel, kernel}, s{stride, stride}, p{padding, padding};
    dnnl::pooling_forward::desc desc(dnnl::prop_kind::forward_inference, algorithm, src.get_desc(),
                                     memory::desc(Dims(out_shape.begin(), out_shape.end()), kF32, Tag::any), s, k, p,
                                     p);
    dnnl::pooling_forward::primitive_desc pd(desc, engine_);
    Tensor out = new_tensor(out_shape, pd.dst_desc());
    dnnl::pooling_forward(pd).execute(stream_, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, mem_of(out)}});
    stream_.wait();
    return out;
  }

  // [1, C, 1, 1] for per-channel broadcasting over [N, C, H, W].
  memory channel_memory(std::span<const float> values, int channels, const char* what) {
    if (static_cast<int>(values.size()) != channels)
      fail("cpu backend: {} has {} values, expected {}", what, values.size(), channels);
    memory mem({{1, channels, 1, 1}, kF32, Tag::abcd}, engine_);
    std::memcpy(mem.get_data_handle(), values.data(), values.size_bytes());
    return mem;
  }

  memory vector_memory(std::span<const float> values) {
    memory mem({{static_cast<std::int64_t>(values.size())}, kF32, Tag::a}, engine_);
    std::memcpy(mem.get_data_handle(), values.data(), values.size_bytes());
    return mem;
  }

  std::shared_ptr<CpuNorm> make_norm(std::span<const float> gamma, std::span<const float> beta, float eps) {
    if (gamma.size() != beta.size())
      fail("cpu backend: norm weight has {} values but bias {}", gamma.size(), beta.size());
    auto norm = std::make_shared<CpuNorm>();
    norm->channels = static_cast<int>(gamma.size());
    norm->eps = eps;
    norm->scale = vector_memory(gamma);
    norm->shift = vector_memory(beta);
    return norm;
  }

  // Freed blocks kept for the next batch: about one batch of both models' largest activations at the
  // default batch size, so the pool stops growing after the first batch.
  static constexpr std::size_t kCacheLimit = std::size_t{1} << 30;

  dnnl::engine engine_;
  dnnl::stream stream_;
  std::shared_ptr<HostAllocator> allocator_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace clipdissect
