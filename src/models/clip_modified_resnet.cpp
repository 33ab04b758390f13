// CLIP's ModifiedResNet (RN50, RN101, RN50x4, RN50x16, RN50x64):
//
//   stem: conv1/2 -> conv2 -> conv3 (3x3, each + bn + relu) -> avgpool 2
//   layer1..layer4 of Bottlenecks (anti-aliased: stride by an avgpool before conv3 and in the downsample)
//   attnpool: [mean; HxW tokens] + positional_embedding -> one multi-head attention query (the mean) -> c_proj
#include <fmt/format.h>

#include "clipdissect/error.h"
#include "models/clip_towers.h"

namespace clipdissect {
namespace {

class ClipBottleneck {
 public:
  ClipBottleneck(WeightBinder& w, Backend& backend, const std::string& name, int stride)
      : backend_(backend), name_(name), stride_(stride) {
    const std::string p = name + ".";
    convs_.emplace_back(w, backend, p + "conv1", conv_spec_from(w, p + "conv1", 1, 0), p + "bn1");
    convs_.emplace_back(w, backend, p + "conv2", conv_spec_from(w, p + "conv2", 1, 1), p + "bn2");
    convs_.emplace_back(w, backend, p + "conv3", conv_spec_from(w, p + "conv3", 1, 0), p + "bn3");
    if (w.has(p + "downsample.0.weight"))
      downsample_.emplace_back(w, backend, p + "downsample.0", conv_spec_from(w, p + "downsample.0", 1, 0),
                               p + "downsample.1");
  }

  Tensor forward(const Tensor& x, Recorder* recorder) const {
    Tensor identity = x;
    if (!downsample_.empty()) {
      identity = downsample_.front().forward(pool(x), recorder);
      record_if_wanted(recorder, name_ + ".downsample", identity);
    }
    Tensor h = convs_[0].forward(x, recorder, nullptr, Activation::Relu);
    h = pool(convs_[1].forward(h, recorder, nullptr, Activation::Relu));
    Tensor out = convs_[2].forward(h, recorder, &identity, Activation::Relu);
    record_if_wanted(recorder, name_, out);
    return out;
  }

  std::vector<std::string> module_names() const {
    std::vector<std::string> names{name_};
    for (const char* m : {".conv1", ".bn1", ".conv2", ".bn2", ".conv3", ".bn3"}) names.push_back(name_ + m);
    if (!downsample_.empty())
      for (const char* m : {".downsample", ".downsample.0", ".downsample.1"}) names.push_back(name_ + m);
    return names;
  }

 private:
  Tensor pool(const Tensor& x) const { return stride_ > 1 ? backend_.avg_pool2d(x, stride_) : x; }

  Backend& backend_;
  std::string name_;
  int stride_;
  std::vector<Conv2d> convs_, downsample_;
};

class ClipModifiedResNet final : public Network {
 public:
  ClipModifiedResNet(WeightBinder& w, Backend& backend, const ClipConfig& c) : backend_(backend), config_(c) {
    stem_.emplace_back(w, backend, "visual.conv1", conv_spec_from(w, "visual.conv1", 2, 1), "visual.bn1");
    stem_.emplace_back(w, backend, "visual.conv2", conv_spec_from(w, "visual.conv2", 1, 1), "visual.bn2");
    stem_.emplace_back(w, backend, "visual.conv3", conv_spec_from(w, "visual.conv3", 1, 1), "visual.bn3");
    if (c.vision_layers.size() != 4) fail("{}: a ModifiedResNet needs four stages", w.weights().source());
    for (int stage = 0; stage < 4; ++stage) {
      std::vector<ClipBottleneck> blocks;
      for (int b = 0; b < c.vision_layers[stage]; ++b)
        blocks.emplace_back(w, backend, fmt::format("visual.layer{}.{}", stage + 1, b), stage > 0 && b == 0 ? 2 : 1);
      stages_.push_back(std::move(blocks));
    }
    const int embed = c.vision_width * 32, grid = c.image_resolution / 32;
    positional_embedding_ =
        backend.upload(w.take("visual.attnpool.positional_embedding", {grid * grid + 1, embed}), {grid * grid + 1, embed});
    // One packed in_proj (q, k, v), as nn.MultiheadAttention stores it, so attnpool shares the attention op.
    std::vector<float> in_weight, in_bias;
    for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
      const std::string name = std::string("visual.attnpool.") + proj;
      const auto weight = w.take(name + ".weight", {embed, embed});
      const auto bias = w.take(name + ".bias", {embed});
      in_weight.insert(in_weight.end(), weight.begin(), weight.end());
      in_bias.insert(in_bias.end(), bias.begin(), bias.end());
    }
    in_proj_.emplace_back(backend, embed, 3 * embed, in_weight, in_bias);
    c_proj_.emplace_back(w, backend, "visual.attnpool.c_proj");
  }

  std::string describe() const override { return "CLIP " + config_.to_string(); }

  std::vector<std::string> layer_names() const override {
    std::vector<std::string> names{"visual",       "visual.conv1", "visual.bn1",    "visual.conv2",
                                   "visual.bn2",   "visual.conv3", "visual.bn3",    "visual.avgpool"};
    for (int stage = 0; stage < 4; ++stage) {
      names.push_back(fmt::format("visual.layer{}", stage + 1));
      for (const ClipBottleneck& block : stages_[stage])
        for (const std::string& m : block.module_names()) names.push_back(m);
    }
    names.push_back("visual.attnpool");
    return names;
  }

  Preprocess preprocess() const override { return clip_preprocess(config_.image_resolution); }

  Tensor forward(const Tensor& images, Recorder* recorder) const override {
    Tensor x = images;
    for (const Conv2d& conv : stem_) x = conv.forward(x, recorder, nullptr, Activation::Relu);
    x = backend_.avg_pool2d(x, 2);
    record_if_wanted(recorder, "visual.avgpool", x);
    for (int stage = 0; stage < 4; ++stage) {
      for (const ClipBottleneck& block : stages_[stage]) x = block.forward(x, recorder);
      record_if_wanted(recorder, fmt::format("visual.layer{}", stage + 1), x);
    }
    Tensor embedding = attention_pool(x);
    record_if_wanted(recorder, "visual.attnpool", embedding);
    record_if_wanted(recorder, "visual", embedding);
    return embedding;
  }

 private:
  Tensor attention_pool(const Tensor& x) const {
    Tensor tokens = backend_.grid_to_tokens(x);
    tokens = backend_.add_positional(backend_.prepend_token(tokens, backend_.mean_tokens(tokens)), positional_embedding_);
    // The reference's single query is the mean token, at position 0.
    return c_proj_.front().forward(
        backend_.first_token_attention(in_proj_.front().forward(tokens), config_.vision_heads));
  }

  Backend& backend_;
  ClipConfig config_;
  std::vector<Conv2d> stem_;
  std::vector<std::vector<ClipBottleneck>> stages_;
  Tensor positional_embedding_;
  std::vector<Linear> in_proj_, c_proj_;
};

}  // namespace

std::unique_ptr<Network> make_clip_modified_resnet(WeightBinder& weights, Backend& backend, const ClipConfig& config) {
  return std::make_unique<ClipModifiedResNet>(weights, backend, config);
}

}  // namespace clipdissect
