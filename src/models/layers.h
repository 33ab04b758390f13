// Building blocks shared by the model files: PyTorch modules bound by name to checkpoint tensors.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "clipdissect/backend.h"
#include "clipdissect/network.h"
#include "models/weight_binder.h"

namespace clipdissect {

void record_if_wanted(Recorder* recorder, const std::string& name, const Tensor& output);

// A BatchNorm in inference mode as the per-channel affine y = x * scale + shift, in PyTorch's CPU float
// arithmetic: scale = weight / sqrt(var + eps), shift = bias - mean * scale.
struct ChannelAffine {
  std::vector<float> scale, shift;
};
ChannelAffine batch_norm_affine(std::span<const float> weight, std::span<const float> bias, std::span<const float> mean,
                                std::span<const float> var, float eps);

// nn.Conv2d, optionally followed by nn.BatchNorm2d. BatchNorm runs fused into the convolution as a
// per-channel affine in PyTorch's float arithmetic; when a recorder asks for the raw convolution or the
// BatchNorm output, the two run one after the other.
class Conv2d {
 public:
  Conv2d(WeightBinder& weights, Backend& backend, std::string name, const Conv2dSpec& spec,
         std::optional<std::string> batch_norm_name);

  // act(bn(conv(x)) + residual)
  Tensor forward(const Tensor& x, Recorder* recorder, const Tensor* residual = nullptr,
                 Activation act = Activation::None) const;
  const Conv2dSpec& spec() const { return spec_; }

 private:
  bool records(const Recorder* recorder) const;

  Backend& backend_;
  std::string name_;
  std::optional<std::string> bn_name_;
  Conv2dSpec spec_;
  std::shared_ptr<ConvParams> conv_;
  std::shared_ptr<NormParams> bn_;  // the same affine, on its own, for the unfused path
};

// Reads a conv spec's channel counts and kernel size from "<name>.weight" ([O, I/groups, k, k]).
Conv2dSpec conv_spec_from(const WeightBinder& weights, const std::string& name, int stride, int padding,
                          int groups = 1);

class Linear {
 public:
  // PyTorch nn.Linear: "<name>.weight" [out, in], optional "<name>.bias".
  Linear(WeightBinder& weights, Backend& backend, const std::string& name);
  // From explicit values: weight [out, in].
  Linear(Backend& backend, int in, int out, const std::vector<float>& weight, const std::vector<float>& bias);

  Tensor forward(const Tensor& x, Activation act = Activation::None, const Tensor* residual = nullptr) const;
  int in() const { return in_; }
  int out() const { return out_; }

 private:
  Backend& backend_;
  int in_ = 0, out_ = 0;
  std::shared_ptr<LinearParams> params_;
};

class LayerNorm {
 public:
  LayerNorm(WeightBinder& weights, Backend& backend, const std::string& name, int width, float eps);
  Tensor forward(const Tensor& x) const { return backend_.layer_norm(*params_, x); }

 private:
  Backend& backend_;
  std::shared_ptr<NormParams> params_;
};

// Checkpoint names of one pre-norm transformer block, relative to the block.
struct TransformerBlockNames {
  std::string ln_1, attn, ln_2, mlp_fc, mlp_proj;
};
// nn.MultiheadAttention's parameter names: "<attn>.in_proj_weight", "<attn>.in_proj_bias", "<attn>.out_proj".
inline const TransformerBlockNames kClipBlockNames{"ln_1", "attn", "ln_2", "mlp.c_fc", "mlp.c_proj"};

// x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))
class TransformerBlock {
 public:
  TransformerBlock(WeightBinder& weights, Backend& backend, const std::string& prefix,
                   const TransformerBlockNames& names, int width, int heads, float eps, Activation act);
  Tensor forward(const Tensor& x, bool causal) const;
  // The block's output at token 0 alone, [N, L, D] -> [N, D] (unmasked): the other tokens serve only as keys
  // and values, so their MLP and projections are skipped.
  Tensor forward_first_token(const Tensor& x) const;

 private:
  Backend& backend_;
  int heads_;
  Activation act_;
  LayerNorm ln_1_, ln_2_;
  Linear in_proj_, out_proj_, fc_, proj_;
};

// What a Transformer's caller needs of its output.
enum class TokensOut {
  All,        // [N, L, D]
  FirstOnly,  // [N, D], token 0: the last block runs for that token alone (no causal mask)
};

// A stack of blocks named "<prefix>.<i>" (or as `block_name` says); records each block's output. A recorded
// output is summarised by its token 0, so with TokensOut::FirstOnly the last block's [N, D] records the same.
class Transformer {
 public:
  Transformer(WeightBinder& weights, Backend& backend, std::vector<std::string> block_names,
              const TransformerBlockNames& names, int width, int heads, float eps, Activation act);
  Tensor forward(Tensor x, bool causal, Recorder* recorder, TokensOut out = TokensOut::All) const;
  const std::vector<std::string>& block_names() const { return block_names_; }

 private:
  Backend& backend_;
  std::vector<std::string> block_names_;
  std::vector<TransformerBlock> blocks_;
};

// Number of distinct "<prefix>.<i>." entries in the checkpoint (how build_model counts layers).
int count_numbered_children(const WeightMap& weights, const std::string& prefix);

}  // namespace clipdissect
