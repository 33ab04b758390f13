// Loading CLIP: OpenAI checkpoints with clip.model.build_model's architecture inference, and
// transformers checkpoints renamed onto the same modules.
#include <cmath>
#include <fstream>
#include <set>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "clipdissect/clip.h"
#include "clipdissect/error.h"
#include "models/clip_hf.h"
#include "models/clip_towers.h"

namespace clipdissect {

namespace {

int dim(const WeightMap& w, const std::string& name, int axis) {
  const Shape& shape = w.at(name).shape;
  if (axis >= static_cast<int>(shape.size()))
    fail("{}: tensor '{}' has shape {}, expected at least {} dimensions", w.source(), name, shape_to_string(shape),
         axis + 1);
  return static_cast<int>(shape[axis]);
}

int isqrt_round(int n) { return static_cast<int>(std::lround(std::sqrt(static_cast<double>(n)))); }

}  // namespace

std::string ClipConfig::to_string() const {
  if (vision_tower == "VisionTransformer")
    return fmt::format(
        "VisionTransformer (image {}, patch {}, {} layers, width {}, {} heads) + text transformer ({} layers, width "
        "{}, {} heads, context {}, vocabulary {}), embedding {}",
        image_resolution, vision_patch_size, vision_layers.at(0), vision_width, vision_heads, transformer_layers,
        transformer_width, transformer_heads, context_length, vocab_size, embed_dim);
  return fmt::format(
      "ModifiedResNet (image {}, blocks {}, width {}, attnpool {} heads) + text transformer ({} layers, width {}, {} "
      "heads, context {}, vocabulary {}), embedding {}",
      image_resolution, vision_layers, vision_width, vision_heads, transformer_layers, transformer_width,
      transformer_heads, context_length, vocab_size, embed_dim);
}

ClipConfig infer_clip_config(const WeightMap& w) {
  ClipConfig c;
  if (!w.contains("visual.conv1.weight") || !w.contains("text_projection"))
    fail("{}: not a CLIP checkpoint (no 'visual.conv1.weight' or 'text_projection' tensor)", w.source());
  if (w.contains("visual.proj")) {
    c.vision_tower = "VisionTransformer";
    c.vision_width = dim(w, "visual.conv1.weight", 0);
    int layers = 0;
    for (const HostTensor& t : w.tensors())
      if (t.name.rfind("visual.", 0) == 0 && t.name.ends_with(".attn.in_proj_weight")) ++layers;
    c.vision_layers = {layers};
    c.vision_patch_size = dim(w, "visual.conv1.weight", 3);
    const int grid = isqrt_round(dim(w, "visual.positional_embedding", 0) - 1);
    c.image_resolution = c.vision_patch_size * grid;
    c.vision_heads = c.vision_width / 64;
  } else {
    c.vision_tower = "ModifiedResNet";
    for (int stage = 1; stage <= 4; ++stage)
      c.vision_layers.push_back(count_numbered_children(w, fmt::format("visual.layer{}", stage)));
    c.vision_width = dim(w, "visual.layer1.0.conv1.weight", 0);
    c.image_resolution = isqrt_round(dim(w, "visual.attnpool.positional_embedding", 0) - 1) * 32;
    c.vision_heads = c.vision_width * 32 / 64;
  }
  c.embed_dim = dim(w, "text_projection", 1);
  c.context_length = dim(w, "positional_embedding", 0);
  c.vocab_size = dim(w, "token_embedding.weight", 0);
  c.transformer_width = dim(w, "ln_final.weight", 0);
  c.transformer_heads = c.transformer_width / 64;
  c.transformer_layers = count_numbered_children(w, "transformer.resblocks");
  if (c.vision_heads <= 0 || c.transformer_heads <= 0)
    fail("{}: widths {} (image) and {} (text) are too small for build_model's 64-wide heads", w.source(),
         c.vision_width, c.transformer_width);
  return c;
}

struct ClipModel::Impl {
  Backend* backend = nullptr;
  ClipConfig config;
  std::unique_ptr<Network> visual;
  std::unique_ptr<ClipTextTransformer> text;
};

ClipModel::ClipModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ClipModel::~ClipModel() = default;

const ClipConfig& ClipModel::config() const { return impl_->config; }
Preprocess ClipModel::preprocess() const { return impl_->visual->preprocess(); }
Network& ClipModel::visual() { return *impl_->visual; }

std::vector<float> ClipModel::encode_image(const Tensor& images) {
  return impl_->backend->download(impl_->visual->forward(images, nullptr));
}

std::vector<float> ClipModel::encode_text(const std::vector<std::vector<std::int32_t>>& tokens) {
  return impl_->text->encode(tokens);
}

std::unique_ptr<ClipModel> ClipModel::load(Backend& backend, const std::filesystem::path& path) {
  auto impl = std::make_unique<Impl>();
  impl->backend = &backend;
  std::optional<HfClipConfig> hf;
  const WeightMap weights = load_clip_weights(path, hf);
  ClipConfig config = infer_clip_config(weights);
  if (hf) apply_hf_config(*hf, config);
  impl->config = config;

  WeightBinder w(weights);
  impl->visual = config.vision_tower == "VisionTransformer" ? make_clip_vision_transformer(w, backend, config)
                                                              : make_clip_modified_resnet(w, backend, config);
  impl->text = std::make_unique<ClipTextTransformer>(w, backend, config);
  for (const char* unused : {"logit_scale", "input_resolution", "context_length", "vocab_size"}) w.ignore(unused);
  w.expect_all_used();
  return std::unique_ptr<ClipModel>(new ClipModel(std::move(impl)));
}

}  // namespace clipdissect
