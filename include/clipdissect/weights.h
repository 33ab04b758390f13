// Reading checkpoints: safetensors, torch.save zip and legacy archives, TorchScript archives.
// All loaders produce a WeightMap: named, contiguous, little-endian tensors that stay valid while
// the map (or any copy of a HostTensor) lives; memory-mapped wherever the file layout allows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "clipdissect/dtype.h"

namespace clipdissect {

using Shape = std::vector<std::int64_t>;

std::int64_t shape_numel(const Shape& shape);
std::string shape_to_string(const Shape& shape);  // "[3, 224, 224]"

struct HostTensor {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  std::span<const std::byte> bytes;         // contiguous row-major data, aligned to the element size
  std::shared_ptr<const void> keepalive;    // owner of `bytes` (mapping or buffer)

  std::int64_t numel() const { return shape_numel(shape); }
};

// Converts any floating or integer dtype to float32 (f16/bf16/f64 converted exactly or rounded).
std::vector<float> to_f32(const HostTensor& tensor);

class WeightMap {
 public:
  WeightMap() = default;
  WeightMap(std::string source, std::string format) : source_(std::move(source)), format_(std::move(format)) {}

  const std::string& source() const { return source_; }   // file path, used in error messages
  const std::string& format() const { return format_; }   // e.g. "safetensors", "torch-zip"

  void add(HostTensor tensor);                             // throws on a duplicate name
  bool contains(std::string_view name) const;
  const HostTensor* find(std::string_view name) const;
  const HostTensor& at(std::string_view name) const;       // throws naming source and tensor
  const std::vector<HostTensor>& tensors() const { return tensors_; }  // in file order
  std::size_t size() const { return tensors_.size(); }

  // Free-form metadata (safetensors __metadata__, TorchScript extras).
  std::map<std::string, std::string> metadata;

 private:
  std::string source_;
  std::string format_;
  std::vector<HostTensor> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;
};

// Sniffs the format from the file's first bytes and loads it. A checkpoint nested under
// "state_dict" or "model" is unwrapped and a "module." prefix (DataParallel) is stripped.
WeightMap load_weights(const std::filesystem::path& path);

// Loads the tensors of a transformers-style folder (model.safetensors, else pytorch_model.bin).
WeightMap load_weights_folder(const std::filesystem::path& folder);

// Writes tensors as safetensors atomically (temporary file in the same folder, fsync, rename).
struct OwnedTensor {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  std::vector<std::byte> bytes;
};
OwnedTensor make_f32_tensor(std::string name, Shape shape, std::span<const float> values);
void save_safetensors(const std::filesystem::path& path, const std::vector<OwnedTensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace clipdissect
