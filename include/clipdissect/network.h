// Networks whose module outputs can be recorded by PyTorch module name during a forward pass,
// summarised per image the way the reference's forward hooks do.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "clipdissect/backend.h"
#include "clipdissect/image.h"

namespace clipdissect {

// Per-image summaries of module outputs: name -> [N, C] row-major, appended batch after batch.
struct LayerSummary {
  std::int64_t channels = 0;
  std::vector<float> values;  // rows * channels
  std::int64_t rows() const { return channels ? static_cast<std::int64_t>(values.size()) / channels : 0; }
};

class Recorder {
 public:
  Recorder(Backend& backend, PoolMode mode, std::vector<std::string> layers);

  bool wants(std::string_view layer) const { return wanted_.count(std::string(layer)) > 0; }
  // Called by networks at each module boundary; summarises at once so full maps are never kept.
  void record(std::string_view layer, const Tensor& output);
  // Starts `layer` with rows recorded earlier, by a run that this one continues.
  void seed(const std::string& layer, LayerSummary rows) { summaries_[layer] = std::move(rows); }

  const std::vector<std::string>& layers() const { return layers_; }
  const LayerSummary& summary(const std::string& layer) const;
  PoolMode mode() const { return mode_; }

 private:
  Backend& backend_;
  PoolMode mode_;
  std::vector<std::string> layers_;
  std::set<std::string> wanted_;
  std::map<std::string, LayerSummary> summaries_;
};

class Network {
 public:
  virtual ~Network() = default;
  // One line: the architecture inferred from the checkpoint.
  virtual std::string describe() const = 0;
  // Every recordable module, in PyTorch's named_modules order.
  virtual std::vector<std::string> layer_names() const = 0;
  virtual Preprocess preprocess() const = 0;
  // images [N, 3, H, W], preprocessed; returns the network's final output.
  virtual Tensor forward(const Tensor& images, Recorder* recorder) const = 0;
  // Files besides the checkpoint that the weights were read from (ONNX external data), so that caches keyed
  // by checksums see a change in any of them.
  virtual std::vector<std::filesystem::path> extra_weight_files() const { return {}; }
};

// Accepts the reference's spelling too ("layer2[0].conv1" -> "layer2.0.conv1").
std::string normalize_layer_name(std::string_view name);
// Throws an Error listing the closest valid names when a requested layer does not exist.
void check_layer_names(const Network& network, const std::vector<std::string>& layers, const std::string& source);

// A target network (torchvision ResNet family, torchvision VisionTransformer, a CLIP image tower, or an ONNX model),
// architecture inferred from the checkpoint; what it cannot say comes from `config` (JSON with the
// constructor's arguments), else from "<checkpoint>.json" next to it, else from the standard configurations.
std::unique_ptr<Network> load_target(Backend& backend, const std::filesystem::path& checkpoint,
                                     const std::optional<std::filesystem::path>& config = std::nullopt);

// The architecture a checkpoint holds, for `inspect`; "unknown" when none is recognised.
std::string describe_architecture(const std::filesystem::path& checkpoint);

// ONNX models (any network exported with torch.onnx.export), recognised by the ".onnx" extension; load_target
// runs them. Their layers are every tensor computed from the image, by ONNX name, and the PyTorch module paths
// recovered from torch.onnx's node names ("/layer4/layer4.2/conv3/Conv" -> "layer4.2.conv3").
bool is_onnx_model(const std::filesystem::path& path);
// For `inspect`: each layer of an ONNX model with its shape from ONNX shape inference ("?" where unknown).
std::vector<std::pair<std::string, std::string>> onnx_layer_shapes(const std::filesystem::path& model);

}  // namespace clipdissect
