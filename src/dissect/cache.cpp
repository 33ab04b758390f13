#include "dissect/cache.h"

#include <charconv>
#include <cstring>

#include <spdlog/spdlog.h>

#include "clipdissect/error.h"
#include "clipdissect/weights.h"
#include "io/sha256.h"

namespace clipdissect {

namespace {
std::string partial_kind(const std::string& kind) { return "partial-" + kind; }
}  // namespace

std::filesystem::path ActivationCache::entry_path(const std::string& kind, const std::string& key) const {
  return *folder_ / (kind + "-" + sha256_hex(key).substr(0, 32) + ".safetensors");
}

std::optional<std::pair<CachedMatrix, ActivationCache::Metadata>> ActivationCache::load_entry(
    const std::string& kind, const std::string& key) const {
  if (!folder_) return std::nullopt;
  const std::filesystem::path path = entry_path(kind, key);
  if (!std::filesystem::exists(path)) return std::nullopt;
  try {
    WeightMap entry = load_weights(path);
    const auto stored_key = entry.metadata.find("key");
    if (stored_key == entry.metadata.end() || stored_key->second != key) return std::nullopt;
    const HostTensor& values = entry.at("values");
    const HostTensor& ids = entry.at("ids");
    if (values.dtype != DType::F32 || values.shape.size() != 2 || ids.dtype != DType::I64 ||
        ids.shape != Shape{values.shape[0]})
      fail("{}: malformed cache entry", path.string());
    CachedMatrix matrix{values.shape[0], values.shape[1], to_f32(values), std::vector<std::int64_t>(ids.numel())};
    std::memcpy(matrix.ids.data(), ids.bytes.data(), ids.bytes.size());
    return std::pair(std::move(matrix), std::move(entry.metadata));
  } catch (const Error& e) {
    spdlog::warn("ignoring unreadable cache entry: {}", e.what());
    return std::nullopt;
  }
}

// A cache that cannot be written (read-only, full) costs time, not the run: the failure is reported and the
// results go on to the outputs.
void ActivationCache::store_entry(const std::string& kind, const std::string& key, const CachedMatrix& matrix,
                                  Metadata metadata) const {
  if (!folder_) return;
  try {
    std::filesystem::create_directories(*folder_);
    OwnedTensor ids{"ids", DType::I64, {matrix.rows}, std::vector<std::byte>(matrix.ids.size() * sizeof(std::int64_t))};
    std::memcpy(ids.bytes.data(), matrix.ids.data(), ids.bytes.size());
    metadata["key"] = key;
    metadata["kind"] = kind;
    save_safetensors(entry_path(kind, key),
                     {make_f32_tensor("values", {matrix.rows, matrix.cols}, matrix.values), std::move(ids)}, metadata);
  } catch (const std::exception& e) {  // Error from the writer, filesystem_error from create_directories
    spdlog::warn("cannot write a cache entry ({}); going on without it", e.what());
  }
}

std::optional<CachedMatrix> ActivationCache::load(const std::string& kind, const std::string& key) const {
  auto entry = load_entry(kind, key);
  if (!entry) return std::nullopt;
  return std::move(entry->first);
}

void ActivationCache::store(const std::string& kind, const std::string& key, const CachedMatrix& matrix) const {
  store_entry(kind, key, matrix, {});
}

std::optional<PartialMatrix> ActivationCache::load_partial(const std::string& kind, const std::string& key) const {
  auto entry = load_entry(partial_kind(kind), key);
  if (!entry) return std::nullopt;
  const auto covered = entry->second.find("covered");
  PartialMatrix partial{std::move(entry->first), 0};
  if (covered == entry->second.end()) return std::nullopt;
  const std::string& text = covered->second;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), partial.covered);
  if (error != std::errc() || end != text.data() + text.size() || partial.covered < partial.matrix.rows)
    return std::nullopt;
  return partial;
}

void ActivationCache::store_partial(const std::string& kind, const std::string& key,
                                    const PartialMatrix& partial) const {
  store_entry(partial_kind(kind), key, partial.matrix, {{"covered", std::to_string(partial.covered)}});
}

void ActivationCache::remove_partial(const std::string& kind, const std::string& key) const {
  if (!folder_) return;
  std::error_code ignored;  // absent already, or a read-only cache: either way nothing to continue from
  std::filesystem::remove(entry_path(partial_kind(kind), key), ignored);
}

}  // namespace clipdissect
