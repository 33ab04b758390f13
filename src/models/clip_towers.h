// CLIP's towers (clip/model.py), each in its own file; clip_model.cpp assembles them.
#pragma once

#include <memory>

#include "clipdissect/clip.h"
#include "models/layers.h"

namespace clipdissect {

// Image towers: forward() returns the image embedding [N, embed_dim]. Module names are "visual.*".
std::unique_ptr<Network> make_clip_vision_transformer(WeightBinder& weights, Backend& backend, const ClipConfig& config);
std::unique_ptr<Network> make_clip_modified_resnet(WeightBinder& weights, Backend& backend, const ClipConfig& config);

// x @ proj for a projection stored as [in, out] (CLIP's visual.proj, text_projection): a Linear without bias.
Linear projection_linear(WeightBinder& weights, Backend& backend, const std::string& name, int in, int out);

std::vector<std::string> numbered_names(const std::string& prefix, int count);

class ClipTextTransformer {
 public:
  ClipTextTransformer(WeightBinder& weights, Backend& backend, const ClipConfig& config);
  // Token sequences [start ... end], each at most context_length long -> [N, embed_dim] on the host.
  std::vector<float> encode(const std::vector<std::vector<std::int32_t>>& tokens) const;

 private:
  Tensor encode_batch(const std::vector<const std::vector<std::int32_t>*>& batch) const;

  Backend& backend_;
  ClipConfig config_;
  Tensor token_embedding_, positional_embedding_;
  Transformer transformer_;
  LayerNorm ln_final_;
  Linear text_projection_;
};

}  // namespace clipdissect
