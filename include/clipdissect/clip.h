// OpenAI CLIP (VisionTransformer or ModifiedResNet image tower, causal text transformer), loaded from
// OpenAI checkpoints (torch.save or TorchScript .pt) or transformers folders/safetensors, architecture
// inferred as clip.model.build_model does.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "clipdissect/network.h"
#include "clipdissect/weights.h"

namespace clipdissect {

struct ClipConfig {
  std::string vision_tower;              // "VisionTransformer" or "ModifiedResNet"
  int embed_dim = 0;
  int image_resolution = 0;
  std::vector<int> vision_layers;        // one entry (ViT depth) or four (ResNet stages)
  int vision_width = 0;
  int vision_patch_size = 0;             // ViT only
  int vision_heads = 0;
  int context_length = 0;
  int vocab_size = 0;
  int transformer_width = 0;
  int transformer_heads = 0;
  int transformer_layers = 0;
  float layer_norm_eps = 1e-5f;
  Activation activation = Activation::QuickGelu;

  std::string to_string() const;
};

// clip.model.build_model's inference from OpenAI-named weights.
ClipConfig infer_clip_config(const WeightMap& weights);

class ClipModel {
 public:
  // An OpenAI .pt (state dict or TorchScript), a transformers folder, or a transformers model.safetensors
  // with config.json beside it.
  static std::unique_ptr<ClipModel> load(Backend& backend, const std::filesystem::path& path);
  ~ClipModel();

  const ClipConfig& config() const;
  Preprocess preprocess() const;
  // The image tower as a recordable network (module names "visual.*").
  Network& visual();

  // images [N, 3, R, R] preprocessed -> [N, embed_dim], not normalised.
  std::vector<float> encode_image(const Tensor& images);
  // Token sequences, each [start ... end] unpadded (ClipTokenizer::tokenize) -> [N, embed_dim], not normalised.
  std::vector<float> encode_text(const std::vector<std::vector<std::int32_t>>& tokens);

  struct Impl;

 private:
  explicit ClipModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace clipdissect
