// A small, bounds-checked reader of zip archives as torch.save and TorchScript write them:
// central directory (with ZIP64 records), stored entries as spans into the file mapping,
// deflated entries inflated with zlib into bounded buffers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "io/mapped_file.h"

namespace clipdissect::io {

struct ZipEntry {
  std::string name;
  std::uint16_t method = 0;  // 0 stored, 8 deflated
  std::uint16_t flags = 0;
  std::uint32_t crc32 = 0;
  std::uint64_t compressed_size = 0;
  std::uint64_t uncompressed_size = 0;
  std::uint64_t local_header_offset = 0;
};

// Bytes of one entry and the owner that keeps them alive (the mapping or an inflated buffer).
struct EntryData {
  std::span<const std::byte> bytes;
  std::shared_ptr<const void> keepalive;
};

class ZipArchive {
 public:
  // Largest entry we inflate into memory; larger claims are rejected as zip bombs.
  static constexpr std::uint64_t kMaxInflatedBytes = std::uint64_t{4} << 30;

  explicit ZipArchive(std::shared_ptr<const MappedFile> file);
  ZipArchive(const ZipArchive&) = delete;  // index_ points into entries_
  ZipArchive& operator=(const ZipArchive&) = delete;

  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(std::string_view name) const;
  EntryData read(const ZipEntry& entry) const;  // verifies the CRC
  const std::string& source() const { return file_->name(); }

 private:
  struct Directory {
    std::uint64_t entry_count;
    std::uint64_t size;
    std::uint64_t offset;
  };
  Directory locate_directory() const;
  void read_directory(const Directory& directory);
  void validate_sizes(const ZipEntry& entry) const;
  std::span<const std::byte> entry_payload(const ZipEntry& entry) const;
  EntryData inflate(const ZipEntry& entry, std::span<const std::byte> compressed) const;

  std::shared_ptr<const MappedFile> file_;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string_view, std::size_t> index_;  // views into entries_ names
  std::uint64_t directory_offset_ = 0;                       // entry data must end before it
};

}  // namespace clipdissect::io
