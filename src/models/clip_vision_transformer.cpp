// CLIP's VisionTransformer (ViT-B/32, B/16, L/14, L/14@336px):
//
//   conv1 (patches) -> [class_embedding; tokens] + positional_embedding -> ln_pre
//     -> transformer.resblocks.0..N-1 -> ln_post(token 0) -> @ proj
//
// OpenAI's code runs the transformer sequence-first (LND); we keep [N, L, D], so a recorded block's
// summary is its class token, the same rows the reference's hooks see for torchvision ViTs.
#include "clipdissect/error.h"
#include "models/clip_towers.h"

namespace clipdissect {
namespace {

class ClipVisionTransformer final : public Network {
 public:
  ClipVisionTransformer(WeightBinder& w, Backend& backend, const ClipConfig& c)
      : backend_(backend),
        config_(c),
        grid_(c.image_resolution / c.vision_patch_size),
        conv1_(w, backend, "visual.conv1", conv_spec_from(w, "visual.conv1", c.vision_patch_size, 0), std::nullopt),
        class_embedding_(backend.upload(w.take("visual.class_embedding", {c.vision_width}), {c.vision_width})),
        positional_embedding_(backend.upload(
            w.take("visual.positional_embedding", {grid_ * grid_ + 1, c.vision_width}), {grid_ * grid_ + 1,
                                                                                        c.vision_width})),
        ln_pre_(w, backend, "visual.ln_pre", c.vision_width, c.layer_norm_eps),
        transformer_(w, backend, numbered_names("visual.transformer.resblocks", c.vision_layers.at(0)),
                     kClipBlockNames, c.vision_width, c.vision_heads, c.layer_norm_eps, c.activation),
        ln_post_(w, backend, "visual.ln_post", c.vision_width, c.layer_norm_eps),
        proj_(projection_linear(w, backend, "visual.proj", c.vision_width, c.embed_dim)) {}

  std::string describe() const override { return "CLIP " + config_.to_string(); }

  std::vector<std::string> layer_names() const override {
    std::vector<std::string> names{"visual", "visual.conv1", "visual.ln_pre", "visual.transformer",
                                   "visual.transformer.resblocks"};
    for (const std::string& block : transformer_.block_names()) names.push_back(block);
    names.push_back("visual.ln_post");
    return names;
  }

  Preprocess preprocess() const override { return clip_preprocess(config_.image_resolution); }

  Tensor forward(const Tensor& images, Recorder* recorder) const override {
    Tensor x = backend_.grid_to_tokens(conv1_.forward(images, recorder));
    x = backend_.add_positional(backend_.prepend_token(x, class_embedding_), positional_embedding_);
    x = ln_pre_.forward(x);
    record_if_wanted(recorder, "visual.ln_pre", x);
    // Only the class token reaches the embedding, so the last block runs for it alone.
    Tensor cls = transformer_.forward(x, false, recorder, TokensOut::FirstOnly);
    record_if_wanted(recorder, "visual.transformer", cls);
    record_if_wanted(recorder, "visual.transformer.resblocks", cls);
    cls = ln_post_.forward(cls);
    record_if_wanted(recorder, "visual.ln_post", cls);
    Tensor embedding = proj_.forward(cls);
    record_if_wanted(recorder, "visual", embedding);
    return embedding;
  }

 private:
  Backend& backend_;
  ClipConfig config_;
  int grid_;
  Conv2d conv1_;
  Tensor class_embedding_, positional_embedding_;
  LayerNorm ln_pre_;
  Transformer transformer_;
  LayerNorm ln_post_;
  Linear proj_;
};

}  // namespace

std::unique_ptr<Network> make_clip_vision_transformer(WeightBinder& weights, Backend& backend,
                                                      const ClipConfig& config) {
  if (config.vision_patch_size <= 0 || config.image_resolution % config.vision_patch_size != 0)
    fail("{}: CLIP image resolution {} is not a multiple of the patch size {}", weights.weights().source(),
         config.image_resolution, config.vision_patch_size);
  return std::make_unique<ClipVisionTransformer>(weights, backend, config);
}

Linear projection_linear(WeightBinder& weights, Backend& backend, const std::string& name, int in, int out) {
  const std::vector<float> stored = weights.take(name, {in, out});
  std::vector<float> transposed(stored.size());  // nn.Linear layout [out, in]
  for (int i = 0; i < in; ++i)
    for (int o = 0; o < out; ++o) transposed[static_cast<std::size_t>(o) * in + i] = stored[static_cast<std::size_t>(i) * out + o];
  return Linear(backend, in, out, transposed, {});
}

std::vector<std::string> numbered_names(const std::string& prefix, int count) {
  std::vector<std::string> names;
  for (int i = 0; i < count; ++i) names.push_back(prefix + "." + std::to_string(i));
  return names;
}

}  // namespace clipdissect
