// torchvision.models.vision_transformer.VisionTransformer (vit_b_16, vit_b_32, vit_l_16, ...).
//
//   conv_proj (patches) -> [class_token; tokens] + pos_embedding -> encoder_layer_0..N-1 -> ln -> token 0 -> heads
//
// Depth, width, patch size, MLP width, resolution and classes come from the tensor shapes; the number of
// heads does not (one projection holds all heads), so it comes from the sidecar config or the standard
// configurations.
#include <cmath>

#include "clipdissect/error.h"
#include "models/layers.h"
#include "models/targets.h"

namespace clipdissect {
namespace {

constexpr float kLayerNormEps = 1e-6f;  // torchvision's ViT uses LayerNorm(eps=1e-6)

struct VitConfig {
  int image_size = 0, patch_size = 0, num_layers = 0, num_heads = 0, hidden_dim = 0, mlp_dim = 0, num_classes = 0;
  std::string heads_from;  // where num_heads came from
};

int count_encoder_layers(const WeightMap& weights) {
  int layers = 0;
  while (weights.contains(fmt::format("encoder.layers.encoder_layer_{}.ln_1.weight", layers))) ++layers;
  return layers;
}

std::string mlp_name(const WeightMap& weights, int layer, int which) {
  // torchvision >= 0.13 names the MLP's linears mlp.0 / mlp.3; older releases mlp.linear_1 / mlp.linear_2.
  const std::string block = fmt::format("encoder.layers.encoder_layer_{}.", layer);
  if (weights.contains(block + "mlp.0.weight")) return which == 1 ? "mlp.0" : "mlp.3";
  return which == 1 ? "mlp.linear_1" : "mlp.linear_2";
}

int standard_heads(int hidden_dim) {
  switch (hidden_dim) {
    case 768: return 12;   // vit_b_16, vit_b_32
    case 1024: return 16;  // vit_l_16, vit_l_32
    case 1280: return 16;  // vit_h_14
    default: return 0;
  }
}

VitConfig infer_vit(const WeightMap& weights, const nlohmann::json& config, const std::string& config_source) {
  VitConfig c;
  const Shape& patch = weights.at("conv_proj.weight").shape;
  c.hidden_dim = static_cast<int>(patch.at(0));
  c.patch_size = static_cast<int>(patch.at(2));
  c.num_layers = count_encoder_layers(weights);
  const std::int64_t tokens = weights.at("encoder.pos_embedding").shape.at(1);
  c.image_size = static_cast<int>(std::lround(std::sqrt(static_cast<double>(tokens - 1)))) * c.patch_size;
  c.mlp_dim = static_cast<int>(
      weights.at(fmt::format("encoder.layers.encoder_layer_0.{}.weight", mlp_name(weights, 0, 1))).shape.at(0));
  c.num_classes = static_cast<int>(weights.at("heads.head.weight").shape.at(0));
  if (!config.is_null() && config.contains("num_heads")) {
    if (!config["num_heads"].is_number_integer() || config["num_heads"].get<int>() <= 0)
      fail("{}: field 'num_heads' must be a positive integer", config_source);
    c.num_heads = config["num_heads"].get<int>();
    c.heads_from = config_source;
  } else if ((c.num_heads = standard_heads(c.hidden_dim)) > 0) {
    c.heads_from = "the standard torchvision configuration for width " + std::to_string(c.hidden_dim);
  } else {
    fail("{}: a torchvision ViT of width {} does not say its number of attention heads; write {}.json with "
         "{{\"architecture\": \"torchvision.vit\", \"num_heads\": H}} next to it or pass --target-config FILE",
         weights.source(), c.hidden_dim, weights.source());
  }
  const std::pair<const char*, int> inferred[] = {{"hidden_dim", c.hidden_dim}, {"patch_size", c.patch_size},
                                                   {"num_layers", c.num_layers}, {"mlp_dim", c.mlp_dim},
                                                   {"num_classes", c.num_classes}, {"image_size", c.image_size}};
  for (const auto& [field, value] : inferred)
    if (!config.is_null() && config.contains(field) && config[field] != value)
      fail("{}: field '{}' is {}, but the checkpoint {} has {}", config_source, field, config[field].dump(),
           weights.source(), value);
  return c;
}

std::string to_string(const VitConfig& c) {
  return fmt::format(
      "torchvision VisionTransformer (image {}, patch {}, {} layers, width {}, {} heads [{}], MLP {}, {} classes)",
      c.image_size, c.patch_size, c.num_layers, c.hidden_dim, c.num_heads, c.heads_from, c.mlp_dim, c.num_classes);
}

std::vector<std::string> encoder_layer_names(int layers) {
  std::vector<std::string> names;
  for (int i = 0; i < layers; ++i) names.push_back(fmt::format("encoder.layers.encoder_layer_{}", i));
  return names;
}

class TorchvisionVit final : public Network {
 public:
  TorchvisionVit(const WeightMap& weights, Backend& backend, VitConfig config, WeightBinder&& w)
      : backend_(backend),
        config_(std::move(config)),
        conv_proj_(w, backend, "conv_proj", conv_spec_from(w, "conv_proj", config_.patch_size, 0), std::nullopt),
        class_token_(backend.upload(w.take("class_token", {1, 1, config_.hidden_dim}), {config_.hidden_dim})),
        pos_embedding_(upload_positional(w, backend, config_)),
        encoder_(w, backend, encoder_layer_names(config_.num_layers),
                 {"ln_1", "self_attention", "ln_2", mlp_name(weights, 0, 1), mlp_name(weights, 0, 2)},
                 config_.hidden_dim, config_.num_heads, kLayerNormEps, Activation::Gelu),
        ln_(w, backend, "encoder.ln", config_.hidden_dim, kLayerNormEps),
        head_(w, backend, "heads.head") {
    w.expect_all_used();
  }

  std::string describe() const override { return to_string(config_); }

  std::vector<std::string> layer_names() const override {
    std::vector<std::string> names{"conv_proj", "encoder", "encoder.layers"};
    for (const std::string& block : encoder_.block_names()) names.push_back(block);
    names.insert(names.end(), {"encoder.ln", "heads", "heads.head"});
    return names;
  }

  Preprocess preprocess() const override { return imagenet_preprocess(); }

  Tensor forward(const Tensor& images, Recorder* recorder) const override {
    Tensor patches = conv_proj_.forward(images, recorder);
    Tensor x = backend_.prepend_token(backend_.grid_to_tokens(patches), class_token_);
    // Only the class token reaches the head (and a recorded token map is summarised by its class token), so
    // the last block runs for that token alone.
    x = encoder_.forward(backend_.add_positional(x, pos_embedding_), false, recorder, TokensOut::FirstOnly);
    record_if_wanted(recorder, "encoder.layers", x);
    x = ln_.forward(x);
    record_if_wanted(recorder, "encoder.ln", x);
    record_if_wanted(recorder, "encoder", x);
    Tensor logits = head_.forward(x);
    record_if_wanted(recorder, "heads.head", logits);
    record_if_wanted(recorder, "heads", logits);
    return logits;
  }

 private:
  static Tensor upload_positional(WeightBinder& w, Backend& backend, const VitConfig& c) {
    const int tokens = (c.image_size / c.patch_size) * (c.image_size / c.patch_size) + 1;
    return backend.upload(w.take("encoder.pos_embedding", {1, tokens, c.hidden_dim}), {tokens, c.hidden_dim});
  }

  Backend& backend_;
  VitConfig config_;
  Conv2d conv_proj_;
  Tensor class_token_, pos_embedding_;
  Transformer encoder_;
  LayerNorm ln_;
  Linear head_;
};

}  // namespace

bool is_torchvision_vit(const WeightMap& weights) {
  return weights.contains("conv_proj.weight") && weights.contains("encoder.pos_embedding");
}

std::unique_ptr<Network> make_torchvision_vit(const WeightMap& weights, Backend& backend, const nlohmann::json& config,
                                              const std::string& config_source) {
  return std::make_unique<TorchvisionVit>(weights, backend, infer_vit(weights, config, config_source),
                                          WeightBinder(weights));
}

std::string describe_torchvision_vit(const WeightMap& weights, const nlohmann::json& config) {
  return to_string(infer_vit(weights, config, "sidecar config"));
}

}  // namespace clipdissect
