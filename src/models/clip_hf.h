// transformers' CLIPModel naming mapped onto OpenAI's, so one CLIP implementation serves both.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "clipdissect/clip.h"

namespace clipdissect {

// What transformers' config.json says that OpenAI's build_model derives (or fixes) differently.
struct HfClipConfig {
  std::string source;
  int vision_heads = 0, text_heads = 0;
  float layer_norm_eps = 1e-5f;
  Activation activation = Activation::QuickGelu;
};

// OpenAI-named weights from an OpenAI checkpoint, or from a transformers checkpoint (a folder, or a
// model.safetensors with config.json beside it) renamed; `hf` is set in the second case.
WeightMap load_clip_weights(const std::filesystem::path& path, std::optional<HfClipConfig>& hf);
void apply_hf_config(const HfClipConfig& hf, ClipConfig& config);

}  // namespace clipdissect
