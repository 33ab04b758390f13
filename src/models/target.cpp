// Choosing the target architecture from a checkpoint's tensor names.
#include "clipdissect/clip.h"
#include "clipdissect/error.h"
#include "io/json_file.h"
#include "models/clip_hf.h"
#include "models/clip_towers.h"
#include "models/targets.h"

namespace clipdissect {
namespace {

// The sidecar: --target-config FILE, else "<checkpoint>.json" when present, else null.
std::pair<nlohmann::json, std::string> read_sidecar(const std::filesystem::path& checkpoint,
                                                    const std::optional<std::filesystem::path>& config) {
  std::filesystem::path path = config ? *config : std::filesystem::path(checkpoint.string() + ".json");
  if (!config && !std::filesystem::exists(path)) return {nlohmann::json(), ""};
  nlohmann::json json = read_json_file(path);
  if (!json.is_object())
    fail("{}: the target config must be a JSON object of the model constructor's arguments", path.string());
  return {std::move(json), path.string()};
}

bool is_clip(const WeightMap& weights) {
  return weights.contains("visual.conv1.weight") && weights.contains("text_projection");
}

// A CLIP image tower used as a target: the text tower's tensors are not needed.
class ClipVisualTarget final : public Network {
 public:
  ClipVisualTarget(std::unique_ptr<Network> visual) : visual_(std::move(visual)) {}
  std::string describe() const override { return visual_->describe(); }
  std::vector<std::string> layer_names() const override { return visual_->layer_names(); }
  Preprocess preprocess() const override { return visual_->preprocess(); }
  Tensor forward(const Tensor& images, Recorder* recorder) const override { return visual_->forward(images, recorder); }

 private:
  std::unique_ptr<Network> visual_;
};

std::string unknown_architecture(const WeightMap& weights) {
  std::string first;
  for (std::size_t i = 0; i < std::min<std::size_t>(weights.size(), 5); ++i)
    first += (i ? ", " : "") + weights.tensors()[i].name;
  return fmt::format(
      "{}: unrecognised architecture (first tensors: {}); supported: torchvision ResNet/ResNeXt/wide ResNet "
      "(conv1, layer1..4, fc), torchvision VisionTransformer (conv_proj, encoder, heads), CLIP (visual.*)",
      weights.source(), first);
}

}  // namespace

std::unique_ptr<Network> load_target(Backend& backend, const std::filesystem::path& checkpoint,
                                     const std::optional<std::filesystem::path>& config) {
  if (is_onnx_model(checkpoint)) return make_onnx_network(backend, checkpoint);
  std::optional<HfClipConfig> hf;
  const WeightMap weights = load_clip_weights(checkpoint, hf);
  if (is_torchvision_resnet(weights)) return make_torchvision_resnet(weights, backend);
  if (is_torchvision_vit(weights)) {
    const auto [json, source] = read_sidecar(checkpoint, config);
    return make_torchvision_vit(weights, backend, json, source);
  }
  if (is_clip(weights)) {
    ClipConfig clip = infer_clip_config(weights);
    if (hf) apply_hf_config(*hf, clip);
    WeightBinder w(weights);
    auto visual = clip.vision_tower == "VisionTransformer" ? make_clip_vision_transformer(w, backend, clip)
                                                           : make_clip_modified_resnet(w, backend, clip);
    return std::make_unique<ClipVisualTarget>(std::move(visual));
  }
  fail("{}", unknown_architecture(weights));
}

std::string describe_architecture(const std::filesystem::path& checkpoint) {
  if (is_onnx_model(checkpoint)) return describe_onnx(checkpoint);
  std::optional<HfClipConfig> hf;
  const WeightMap weights = load_clip_weights(checkpoint, hf);
  if (is_torchvision_resnet(weights)) return describe_torchvision_resnet(weights);
  if (is_torchvision_vit(weights)) return describe_torchvision_vit(weights, read_sidecar(checkpoint, std::nullopt).first);
  if (is_clip(weights)) {
    ClipConfig clip = infer_clip_config(weights);
    if (hf) apply_hf_config(*hf, clip);
    return "CLIP " + clip.to_string();
  }
  return "unknown";
}

}  // namespace clipdissect
