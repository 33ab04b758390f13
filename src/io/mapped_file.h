// A read-only view of a whole file, memory-mapped so tensors can point into it without copying.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace clipdissect::io {

class MappedFile {
 public:
  // Maps `path`; throws Error naming the file when it cannot be opened or is not a regular file.
  static std::shared_ptr<const MappedFile> open(const std::filesystem::path& path);
  // Wraps bytes already in memory (tests feed mutated checkpoints this way); `name` is used in errors.
  static std::shared_ptr<const MappedFile> from_bytes(std::string name, std::vector<std::byte> bytes);

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const std::byte> bytes() const { return bytes_; }
  const std::string& name() const { return name_; }

 private:
  MappedFile() = default;

  std::string name_;
  std::span<const std::byte> bytes_;
  void* mapping_ = nullptr;       // non-null when bytes_ come from mmap
  std::vector<std::byte> owned_;  // used by from_bytes
};

}  // namespace clipdissect::io
