// Content-keyed cache of embeddings and activations. Keys describe everything a result depends on
// (model file checksums, probe listing with sizes and mtimes, preprocessing, layer, pool mode), never
// names alone, so a changed input never reuses a stale result. Entries are safetensors files written
// atomically (temporary file + rename): a killed run leaves no entry that a later run reads as valid.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace clipdissect {

struct CachedMatrix {
  std::int64_t rows = 0, cols = 0;
  std::vector<float> values;        // [rows, cols]
  std::vector<std::int64_t> ids;    // one id per row (probe image index or concept index)
};

// The rows a pass over the probe images had made when it was stopped, covering probe images [0, covered).
struct PartialMatrix {
  CachedMatrix matrix;
  std::int64_t covered = 0;
};

class ActivationCache {
 public:
  // Disabled when `folder` is empty.
  explicit ActivationCache(std::optional<std::filesystem::path> folder) : folder_(std::move(folder)) {}

  // The entry for `key`, or nothing when absent, unreadable or made for another key.
  std::optional<CachedMatrix> load(const std::string& kind, const std::string& key) const;
  void store(const std::string& kind, const std::string& key, const CachedMatrix& matrix) const;

  // Entries of a stopped pass, kept apart from complete ones, for the run that continues it.
  std::optional<PartialMatrix> load_partial(const std::string& kind, const std::string& key) const;
  void store_partial(const std::string& kind, const std::string& key, const PartialMatrix& partial) const;
  void remove_partial(const std::string& kind, const std::string& key) const;

  bool enabled() const { return folder_.has_value(); }
  const std::optional<std::filesystem::path>& folder() const { return folder_; }

 private:
  using Metadata = std::map<std::string, std::string>;
  std::filesystem::path entry_path(const std::string& kind, const std::string& key) const;
  std::optional<std::pair<CachedMatrix, Metadata>> load_entry(const std::string& kind, const std::string& key) const;
  void store_entry(const std::string& kind, const std::string& key, const CachedMatrix& matrix, Metadata metadata) const;
  std::optional<std::filesystem::path> folder_;
};

}  // namespace clipdissect
