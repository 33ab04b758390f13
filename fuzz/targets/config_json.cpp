#include "clipdissect/network.h"
#include "fuzz_targets.h"
#include "models/clip_hf.h"

namespace clipdissect::fuzz {

// The input as config.json beside a transformers CLIP checkpoint, and as the sidecar of a torchvision ViT
// (the fixture checkpoints, linked in place).
void config_json(Bytes data) {
  const std::filesystem::path hf_folder = write_scratch("hf_clip/config.json", data).parent_path();
  link_scratch("hf_clip/model.safetensors", fixture_path("hf/clip_hf/model.safetensors"));
  try_reader([&] {
    std::optional<HfClipConfig> config;
    load_clip_weights(hf_folder, config);
  });
  const std::filesystem::path vit = link_scratch("vit/target.pth", fixture_path("models/vit_target.pth"));
  write_scratch("vit/target.pth.json", data);
  try_reader([&] { describe_architecture(vit); });
}

}  // namespace clipdissect::fuzz
