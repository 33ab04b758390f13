// torchvision.models.resnet.ResNet: BasicBlock or Bottleneck (v1.5, stride on the 3x3), any depth,
// wide and ResNeXt widths/groups, all read off the checkpoint's tensor shapes.
//
//   conv1 7x7/2 -> bn1 -> relu -> maxpool 3x3/2 -> layer1..layer4 -> avgpool -> fc
#include <fmt/ranges.h>

#include "clipdissect/error.h"
#include "models/layers.h"
#include "models/targets.h"

namespace clipdissect {
namespace {

struct ResNetConfig {
  bool bottleneck = false;
  std::vector<int> blocks;  // per stage
  int stem_width = 0;
  int num_classes = 0;
};

ResNetConfig infer_resnet(const WeightMap& weights) {
  ResNetConfig config;
  config.bottleneck = weights.contains("layer1.0.conv3.weight");
  for (int stage = 1; stage <= 4; ++stage) {
    const int blocks = count_numbered_children(weights, fmt::format("layer{}", stage));
    if (blocks == 0) fail("{}: no blocks found for stage 'layer{}' of a ResNet", weights.source(), stage);
    config.blocks.push_back(blocks);
  }
  config.stem_width = static_cast<int>(weights.at("conv1.weight").shape.at(0));
  config.num_classes = static_cast<int>(weights.at("fc.weight").shape.at(0));
  return config;
}

std::string to_string(const ResNetConfig& c) {
  return fmt::format("torchvision ResNet ({}, blocks {}, stem width {}, {} classes)",
                     c.bottleneck ? "Bottleneck" : "BasicBlock", c.blocks, c.stem_width, c.num_classes);
}

// BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x)); Bottleneck adds conv3/bn3.
class ResidualBlock {
 public:
  ResidualBlock(WeightBinder& w, Backend& backend, const std::string& name, bool bottleneck, int stride) : name_(name) {
    const std::string p = name + ".";
    conv1_.emplace_back(w, backend, p + "conv1", conv_spec_from(w, p + "conv1", bottleneck ? 1 : stride,
                                                                bottleneck ? 0 : 1), p + "bn1");
    // ResNeXt: conv2's input width over its weight's second dimension gives the groups.
    const int width = conv1_.front().spec().out_channels;
    const int groups = static_cast<int>(width / w.shape_of(p + "conv2.weight").at(1));
    conv2_.emplace_back(w, backend, p + "conv2", conv_spec_from(w, p + "conv2", bottleneck ? stride : 1, 1, groups),
                        p + "bn2");
    if (bottleneck) conv3_.emplace_back(w, backend, p + "conv3", conv_spec_from(w, p + "conv3", 1, 0), p + "bn3");
    if (w.has(p + "downsample.0.weight"))
      downsample_.emplace_back(w, backend, p + "downsample.0", conv_spec_from(w, p + "downsample.0", stride, 0),
                               p + "downsample.1");
  }

  Tensor forward(const Tensor& x, Recorder* recorder) const {
    Tensor identity = x;
    if (!downsample_.empty()) {
      identity = downsample_.front().forward(x, recorder);
      record_if_wanted(recorder, name_ + ".downsample", identity);
    }
    Tensor h = conv1_.front().forward(x, recorder, nullptr, Activation::Relu);
    if (conv3_.empty()) return finish(conv2_.front().forward(h, recorder, &identity, Activation::Relu), recorder);
    h = conv2_.front().forward(h, recorder, nullptr, Activation::Relu);
    return finish(conv3_.front().forward(h, recorder, &identity, Activation::Relu), recorder);
  }

  static std::vector<std::string> module_names(const std::string& name, bool bottleneck, bool has_downsample) {
    std::vector<std::string> names{name, name + ".conv1", name + ".bn1", name + ".conv2", name + ".bn2"};
    if (bottleneck) names.insert(names.end(), {name + ".conv3", name + ".bn3"});
    if (has_downsample)
      names.insert(names.end(), {name + ".downsample", name + ".downsample.0", name + ".downsample.1"});
    return names;
  }

 private:
  Tensor finish(Tensor out, Recorder* recorder) const {
    record_if_wanted(recorder, name_, out);
    return out;
  }

  std::string name_;
  // Conv2d is not default-constructible; vectors hold zero or one.
  std::vector<Conv2d> conv1_, conv2_, conv3_, downsample_;
};

class TorchvisionResNet final : public Network {
 public:
  TorchvisionResNet(const WeightMap& weights, Backend& backend) : backend_(backend), config_(infer_resnet(weights)) {
    WeightBinder w(weights);
    stem_.emplace_back(w, backend, "conv1", conv_spec_from(w, "conv1", 2, 3), "bn1");
    for (int stage = 0; stage < 4; ++stage) {
      const std::string layer = fmt::format("layer{}", stage + 1);
      stage_names_.push_back(layer);
      std::vector<ResidualBlock> blocks;
      for (int b = 0; b < config_.blocks[stage]; ++b) {
        const std::string name = fmt::format("{}.{}", layer, b);
        blocks.emplace_back(w, backend, name, config_.bottleneck, stage > 0 && b == 0 ? 2 : 1);
        for (const std::string& m : ResidualBlock::module_names(name, config_.bottleneck,
                                                                w.has(name + ".downsample.0.weight")))
          block_module_names_[stage].push_back(m);
      }
      stages_.push_back(std::move(blocks));
    }
    fc_.emplace_back(w, backend, "fc");
    w.expect_all_used();
  }

  std::string describe() const override { return to_string(config_); }

  std::vector<std::string> layer_names() const override {
    std::vector<std::string> names{"conv1", "bn1", "relu", "maxpool"};
    for (int stage = 0; stage < 4; ++stage) {
      names.push_back(stage_names_[stage]);
      names.insert(names.end(), block_module_names_[stage].begin(), block_module_names_[stage].end());
    }
    names.insert(names.end(), {"avgpool", "fc"});
    return names;
  }

  Preprocess preprocess() const override { return imagenet_preprocess(); }

  Tensor forward(const Tensor& images, Recorder* recorder) const override {
    Tensor x = stem_.front().forward(images, recorder, nullptr, Activation::Relu);
    record_if_wanted(recorder, "relu", x);
    x = backend_.max_pool2d(x, 3, 2, 1);
    record_if_wanted(recorder, "maxpool", x);
    for (std::size_t stage = 0; stage < stages_.size(); ++stage) {
      for (const ResidualBlock& block : stages_[stage]) x = block.forward(x, recorder);
      record_if_wanted(recorder, stage_names_[stage], x);
    }
    Tensor pooled = backend_.global_avg_pool(x);
    record_if_wanted(recorder, "avgpool", pooled);
    Tensor logits = fc_.front().forward(pooled);
    record_if_wanted(recorder, "fc", logits);
    return logits;
  }

 private:
  Backend& backend_;
  ResNetConfig config_;
  std::vector<Conv2d> stem_;
  std::vector<std::string> stage_names_;
  std::vector<std::string> block_module_names_[4];
  std::vector<std::vector<ResidualBlock>> stages_;
  std::vector<Linear> fc_;
};

}  // namespace

bool is_torchvision_resnet(const WeightMap& weights) {
  return weights.contains("conv1.weight") && weights.contains("layer1.0.conv1.weight") && weights.contains("fc.weight");
}

std::unique_ptr<Network> make_torchvision_resnet(const WeightMap& weights, Backend& backend) {
  return std::make_unique<TorchvisionResNet>(weights, backend);
}

std::string describe_torchvision_resnet(const WeightMap& weights) { return to_string(infer_resnet(weights)); }

}  // namespace clipdissect
