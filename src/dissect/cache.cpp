#include "dissect/cache.h"

#include <cstring>

#include <spdlog/spdlog.h>

#include "clipdissect/error.h"
#include "clipdissect/weights.h"
#include "io/sha256.h"

namespace clipdissect {

std::filesystem::path ActivationCache::entry_path(const std::string& kind, const std::string& key) const {
  return *folder_ / (kind + "-" + sha256_hex(key).substr(0, 32) + ".safetensors");
}

std::optional<CachedMatrix> ActivationCache::load(const std::string& kind, const std::string& key) const {
  if (!folder_) return std::nullopt;
  const std::filesystem::path path = entry_path(kind, key);
  if (!std::filesystem::exists(path)) return std::nullopt;
  try {
    const WeightMap entry = load_weights(path);
    const auto stored_key = entry.metadata.find("key");
    if (stored_key == entry.metadata.end() || stored_key->second != key) return std::nullopt;
    const HostTensor& values = entry.at("values");
    const HostTensor& ids = entry.at("ids");
    if (values.dtype != DType::F32 || values.shape.size() != 2 || ids.dtype != DType::I64 ||
        ids.shape != Shape{values.shape[0]})
      fail("{}: malformed cache entry", path.string());
    CachedMatrix matrix{values.shape[0], values.shape[1], to_f32(values), std::vector<std::int64_t>(ids.numel())};
    std::memcpy(matrix.ids.data(), ids.bytes.data(), ids.bytes.size());
    return matrix;
  } catch (const Error& e) {
    spdlog::warn("ignoring unreadable cache entry: {}", e.what());
    return std::nullopt;
  }
}

void ActivationCache::store(const std::string& kind, const std::string& key, const CachedMatrix& matrix) const {
  if (!folder_) return;
  std::filesystem::create_directories(*folder_);
  OwnedTensor ids{"ids", DType::I64, {matrix.rows}, std::vector<std::byte>(matrix.ids.size() * sizeof(std::int64_t))};
  std::memcpy(ids.bytes.data(), matrix.ids.data(), ids.bytes.size());
  save_safetensors(entry_path(kind, key),
                   {make_f32_tensor("values", {matrix.rows, matrix.cols}, matrix.values), std::move(ids)},
                   {{"key", key}, {"kind", kind}});
}

}  // namespace clipdissect
