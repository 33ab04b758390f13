#include "models/layers.h"

#include <cmath>
#include <set>

#include "clipdissect/error.h"

namespace clipdissect {

void record_if_wanted(Recorder* recorder, const std::string& name, const Tensor& output) {
  if (recorder && recorder->wants(name)) recorder->record(name, output);
}

ChannelAffine batch_norm_affine(std::span<const float> weight, std::span<const float> bias, std::span<const float> mean,
                                std::span<const float> var, float eps) {
  // The same arithmetic as PyTorch keeps us within rounding of the reference.
  ChannelAffine affine{std::vector<float>(weight.size()), std::vector<float>(weight.size())};
  for (std::size_t c = 0; c < weight.size(); ++c) {
    affine.scale[c] = 1.0f / std::sqrt(var[c] + eps) * weight[c];
    affine.shift[c] = bias[c] - mean[c] * affine.scale[c];
  }
  return affine;
}

Conv2dSpec conv_spec_from(const WeightBinder& weights, const std::string& name, int stride, int padding,
                          int groups) {
  const Shape& shape = weights.shape_of(name + ".weight");
  if (shape.size() != 4 || shape[2] != shape[3])
    fail("{}: tensor '{}.weight' has shape {}, expected [out, in, k, k]", weights.weights().source(), name,
         shape_to_string(shape));
  return {static_cast<int>(shape[1]) * groups, static_cast<int>(shape[0]), static_cast<int>(shape[2]), stride,
          padding, groups};
}

Conv2d::Conv2d(WeightBinder& weights, Backend& backend, std::string name, const Conv2dSpec& spec,
               std::optional<std::string> batch_norm_name)
    : backend_(backend), name_(std::move(name)), bn_name_(std::move(batch_norm_name)), spec_(spec) {
  const Shape weight_shape{spec.out_channels, spec.in_channels / spec.groups, spec.kernel, spec.kernel};
  const std::vector<float> weight = weights.take(name_ + ".weight", weight_shape);
  const std::vector<float> bias = weights.take_optional(name_ + ".bias", {spec.out_channels});
  if (!bn_name_) {
    conv_ = backend.make_conv2d(spec, weight, bias);
    return;
  }
  const Shape channels{spec.out_channels};
  const std::string& bn = *bn_name_;
  const auto gamma = weights.take(bn + ".weight", channels), beta = weights.take(bn + ".bias", channels);
  const auto mean = weights.take(bn + ".running_mean", channels), var = weights.take(bn + ".running_var", channels);
  weights.ignore(bn + ".num_batches_tracked");
  constexpr float kEps = 1e-5f;  // nn.BatchNorm2d's default, used by torchvision and CLIP
  const auto [alpha, shift] = batch_norm_affine(gamma, beta, mean, var, kEps);
  conv_ = backend.make_conv2d(spec, weight, bias, alpha, shift);
  bn_ = backend.make_channel_affine(alpha, shift);
}

bool Conv2d::records(const Recorder* recorder) const {
  return recorder && (recorder->wants(name_) || (bn_name_ && recorder->wants(*bn_name_)));
}

Tensor Conv2d::forward(const Tensor& x, Recorder* recorder, const Tensor* residual, Activation act) const {
  if (!bn_ || !records(recorder)) {
    Tensor y = backend_.conv2d(*conv_, x, residual, act);
    record_if_wanted(recorder, name_, y);
    return y;
  }
  Tensor y = backend_.conv2d(*conv_, x, nullptr, Activation::None, true);
  record_if_wanted(recorder, name_, y);
  y = backend_.channel_affine(*bn_, y, Activation::None);
  record_if_wanted(recorder, *bn_name_, y);
  return residual ? backend_.add(y, *residual, act) : backend_.activate(y, act);
}

Linear::Linear(WeightBinder& weights, Backend& backend, const std::string& name) : backend_(backend) {
  const Shape& shape = weights.shape_of(name + ".weight");
  if (shape.size() != 2)
    fail("{}: tensor '{}.weight' has shape {}, expected [out, in]", weights.weights().source(), name,
         shape_to_string(shape));
  out_ = static_cast<int>(shape[0]);
  in_ = static_cast<int>(shape[1]);
  const auto weight = weights.take(name + ".weight", shape);
  const auto bias = weights.take_optional(name + ".bias", {out_});
  params_ = backend.make_linear(in_, out_, weight, bias);
}

Linear::Linear(Backend& backend, int in, int out, const std::vector<float>& weight, const std::vector<float>& bias)
    : backend_(backend), in_(in), out_(out), params_(backend.make_linear(in, out, weight, bias)) {}

Tensor Linear::forward(const Tensor& x, Activation act, const Tensor* residual) const {
  return backend_.linear(*params_, x, act, residual);
}

LayerNorm::LayerNorm(WeightBinder& weights, Backend& backend, const std::string& name, int width, float eps)
    : backend_(backend),
      params_(backend.make_layer_norm(weights.take(name + ".weight", {width}), weights.take(name + ".bias", {width}),
                                      eps)) {}

namespace {
Linear in_projection(WeightBinder& weights, Backend& backend, const std::string& attn, int width) {
  return Linear(backend, width, 3 * width, weights.take(attn + ".in_proj_weight", {3 * width, width}),
                weights.take(attn + ".in_proj_bias", {3 * width}));
}
}  // namespace

TransformerBlock::TransformerBlock(WeightBinder& weights, Backend& backend, const std::string& prefix,
                                   const TransformerBlockNames& names, int width, int heads, float eps,
                                   Activation act)
    : backend_(backend),
      heads_(heads),
      act_(act),
      ln_1_(weights, backend, join_name(prefix, names.ln_1), width, eps),
      ln_2_(weights, backend, join_name(prefix, names.ln_2), width, eps),
      in_proj_(in_projection(weights, backend, join_name(prefix, names.attn), width)),
      out_proj_(weights, backend, join_name(prefix, names.attn + ".out_proj")),
      fc_(weights, backend, join_name(prefix, names.mlp_fc)),
      proj_(weights, backend, join_name(prefix, names.mlp_proj)) {
  if (width % heads != 0) fail("transformer width {} is not divisible by {} heads", width, heads);
}

Tensor TransformerBlock::forward(const Tensor& x, bool causal) const {
  Tensor attended = backend_.attention(in_proj_.forward(ln_1_.forward(x)), heads_, causal);
  Tensor h = out_proj_.forward(attended, Activation::None, &x);
  return proj_.forward(fc_.forward(ln_2_.forward(h), act_), Activation::None, &h);
}

Tensor TransformerBlock::forward_first_token(const Tensor& x) const {
  Tensor attended = backend_.first_token_attention(in_proj_.forward(ln_1_.forward(x)), heads_);
  Tensor first = backend_.select_tokens(x, std::vector<std::int64_t>(x.dim(0), 0));
  Tensor h = out_proj_.forward(attended, Activation::None, &first);
  return proj_.forward(fc_.forward(ln_2_.forward(h), act_), Activation::None, &h);
}

Transformer::Transformer(WeightBinder& weights, Backend& backend, std::vector<std::string> block_names,
                         const TransformerBlockNames& names, int width, int heads, float eps, Activation act)
    : backend_(backend), block_names_(std::move(block_names)) {
  blocks_.reserve(block_names_.size());
  for (const std::string& block : block_names_)
    blocks_.emplace_back(weights, backend, block, names, width, heads, eps, act);
}

Tensor Transformer::forward(Tensor x, bool causal, Recorder* recorder, TokensOut out) const {
  const bool first_only = out == TokensOut::FirstOnly;
  if (first_only && causal) fail("transformer: the first token alone is computed without a causal mask");
  for (std::size_t i = 0; i < blocks_.size(); ++i) {
    x = first_only && i + 1 == blocks_.size() ? blocks_[i].forward_first_token(x) : blocks_[i].forward(x, causal);
    record_if_wanted(recorder, block_names_[i], x);
  }
  if (first_only && blocks_.empty()) x = backend_.select_tokens(x, std::vector<std::int64_t>(x.dim(0), 0));
  return x;
}

int count_numbered_children(const WeightMap& weights, const std::string& prefix) {
  std::set<std::string> children;
  const std::string lead = prefix + ".";
  for (const HostTensor& t : weights.tensors()) {
    if (t.name.rfind(lead, 0) != 0) continue;
    const std::string rest = t.name.substr(lead.size());
    const std::string child = rest.substr(0, rest.find('.'));
    if (!child.empty() && child.find_first_not_of("0123456789") == std::string::npos) children.insert(child);
  }
  return static_cast<int>(children.size());
}

}  // namespace clipdissect
