#include "io/zip_archive.h"

#include <zlib.h>

#include <algorithm>
#include <limits>

#include "clipdissect/error.h"
#include "io/byte_reader.h"

namespace clipdissect::io {

namespace {

constexpr std::uint32_t kLocalHeaderSignature = 0x04034b50;
constexpr std::uint32_t kCentralHeaderSignature = 0x02014b50;
constexpr std::uint32_t kEndSignature = 0x06054b50;
constexpr std::uint32_t kZip64EndSignature = 0x06064b50;
constexpr std::uint32_t kZip64LocatorSignature = 0x07064b50;
constexpr std::uint16_t kZip64ExtraId = 0x0001;
constexpr std::size_t kEndRecordSize = 22;
constexpr std::size_t kZip64LocatorSize = 20;
constexpr std::size_t kCentralHeaderSize = 46;
constexpr std::size_t kLocalHeaderSize = 30;
constexpr std::size_t kMaxCommentSize = 0xffff;
constexpr std::uint16_t kMethodStored = 0;
constexpr std::uint16_t kMethodDeflated = 8;
constexpr std::uint16_t kFlagEncrypted = 0x1;
// Deflate cannot compress better than about 1032:1; a larger claimed ratio is a lie.
constexpr std::uint64_t kMaxDeflateRatio = 1032;
constexpr std::size_t kFirstBufferBytes = std::size_t{64} << 10;

std::uint32_t load_u32(std::span<const std::byte> bytes, std::size_t offset) {
  std::uint32_t value;
  std::memcpy(&value, bytes.data() + offset, sizeof value);
  return value;
}

std::uint32_t crc_of(std::span<const std::byte> bytes) {
  uLong crc = crc32_z(0L, Z_NULL, 0);
  return static_cast<std::uint32_t>(
      crc32_z(crc, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<z_size_t>(bytes.size())));
}

// Replaces 32-bit fields saturated at 0xffffffff by the 64-bit values of the ZIP64 extra field,
// which lists only the saturated ones, in this order.
void apply_zip64_extra(ZipEntry& entry, std::span<const std::byte> extra, const std::string& source) {
  ByteReader fields(extra, source);
  while (fields.remaining() >= 4) {
    const std::uint16_t id = fields.u16("zip extra field id");
    const std::uint16_t size = fields.u16("zip extra field size");
    std::span<const std::byte> body = fields.take(size, "zip extra field of entry " + entry.name);
    if (id != kZip64ExtraId) continue;
    ByteReader zip64(body, source + " (ZIP64 extra field of entry " + entry.name + ")");
    constexpr std::uint32_t saturated = std::numeric_limits<std::uint32_t>::max();
    if (entry.uncompressed_size == saturated) entry.uncompressed_size = zip64.u64("uncompressed size");
    if (entry.compressed_size == saturated) entry.compressed_size = zip64.u64("compressed size");
    if (entry.local_header_offset == saturated) entry.local_header_offset = zip64.u64("local header offset");
    return;
  }
}

}  // namespace

ZipArchive::ZipArchive(std::shared_ptr<const MappedFile> file) : file_(std::move(file)) {
  read_directory(locate_directory());
}

ZipArchive::Directory ZipArchive::locate_directory() const {
  const std::span<const std::byte> bytes = file_->bytes();
  if (bytes.size() < kEndRecordSize) fail("{}: not a zip archive: only {} bytes", source(), bytes.size());
  // The end record sits at the very end, followed only by its comment.
  std::size_t end = bytes.size() - kEndRecordSize;
  const std::size_t lowest = end > kMaxCommentSize ? end - kMaxCommentSize : 0;
  for (;; --end) {
    if (load_u32(bytes, end) == kEndSignature) {
      std::uint16_t comment_size;
      std::memcpy(&comment_size, bytes.data() + end + 20, sizeof comment_size);
      if (end + kEndRecordSize + comment_size == bytes.size()) break;
    }
    if (end == lowest) fail("{}: not a zip archive or truncated: end of central directory record not found", source());
  }
  ByteReader record(bytes, source());
  record.seek(end + 4, "end of central directory");
  const std::uint16_t disk = record.u16("disk number");
  const std::uint16_t directory_disk = record.u16("central directory disk");
  record.u16("entries on this disk");
  Directory directory{};
  directory.entry_count = record.u16("entry count");
  directory.size = record.u32("central directory size");
  directory.offset = record.u32("central directory offset");
  if (disk != 0 || directory_disk != 0) fail("{}: multi-volume zip archives are not supported", source());

  // torch writes ZIP64 records for every archive; when present they are authoritative.
  if (end >= kZip64LocatorSize && load_u32(bytes, end - kZip64LocatorSize) == kZip64LocatorSignature) {
    ByteReader locator(bytes, source());
    locator.seek(end - kZip64LocatorSize + 8, "ZIP64 locator");
    const std::uint64_t zip64_offset = locator.u64("ZIP64 end record offset");
    if (zip64_offset > end - kZip64LocatorSize)
      fail("{}: ZIP64 end record offset {} lies beyond the locator", source(), zip64_offset);
    ByteReader zip64(bytes.first(end - kZip64LocatorSize), source() + " (ZIP64 end record)");
    zip64.seek(static_cast<std::size_t>(zip64_offset), "ZIP64 end record");
    if (zip64.u32("ZIP64 end signature") != kZip64EndSignature)
      fail("{}: corrupt zip: no ZIP64 end record at offset {}", source(), zip64_offset);
    zip64.take(8 + 2 + 2 + 4 + 4 + 8, "ZIP64 end record header");
    directory.entry_count = zip64.u64("entry count");
    directory.size = zip64.u64("central directory size");
    directory.offset = zip64.u64("central directory offset");
    end = static_cast<std::size_t>(zip64_offset);
  }
  if (directory.offset > end || directory.size > end - directory.offset)
    fail("{}: corrupt zip: central directory ({} bytes at offset {}) overlaps its end record at {}", source(),
         directory.size, directory.offset, end);
  if (directory.entry_count > directory.size / kCentralHeaderSize)
    fail("{}: corrupt zip: {} entries cannot fit in a {}-byte central directory", source(), directory.entry_count,
         directory.size);
  return directory;
}

void ZipArchive::read_directory(const Directory& directory) {
  directory_offset_ = directory.offset;
  ByteReader reader(file_->bytes().subspan(directory.offset, directory.size), source() + " (central directory)");
  entries_.reserve(directory.entry_count);
  for (std::uint64_t i = 0; i < directory.entry_count; ++i) {
    if (reader.u32("central header signature") != kCentralHeaderSignature)
      fail("{}: corrupt zip: bad central directory header #{}", source(), i);
    ZipEntry entry;
    reader.take(4, "versions");
    entry.flags = reader.u16("flags");
    entry.method = reader.u16("compression method");
    reader.take(4, "modification time");
    entry.crc32 = reader.u32("crc32");
    entry.compressed_size = reader.u32("compressed size");
    entry.uncompressed_size = reader.u32("uncompressed size");
    const std::uint16_t name_size = reader.u16("name length");
    const std::uint16_t extra_size = reader.u16("extra length");
    const std::uint16_t comment_size = reader.u16("comment length");
    reader.take(8, "disk and attributes");
    entry.local_header_offset = reader.u32("local header offset");
    entry.name = std::string(reader.take_text(name_size, "entry name"));
    apply_zip64_extra(entry, reader.take(extra_size, "extra field"), source());
    reader.take(comment_size, "entry comment");
    validate_sizes(entry);
    entries_.push_back(std::move(entry));
  }
  for (std::size_t i = 0; i < entries_.size(); ++i)
    if (!index_.emplace(entries_[i].name, i).second)
      fail("{}: corrupt zip: entry '{}' appears twice", source(), entries_[i].name);
}

void ZipArchive::validate_sizes(const ZipEntry& entry) const {
  if (entry.flags & kFlagEncrypted) fail("{}: zip entry '{}' is encrypted", source(), entry.name);
  if (entry.compressed_size > directory_offset_ || entry.local_header_offset > directory_offset_)
    fail("{}: corrupt zip: entry '{}' claims {} compressed bytes at offset {}, beyond the {} bytes of entry data",
         source(), entry.name, entry.compressed_size, entry.local_header_offset, directory_offset_);
  if (entry.method == kMethodStored) {
    if (entry.uncompressed_size != entry.compressed_size)
      fail("{}: corrupt zip: stored entry '{}' has compressed size {} but uncompressed size {}", source(), entry.name,
           entry.compressed_size, entry.uncompressed_size);
  } else if (entry.method == kMethodDeflated) {
    if (entry.uncompressed_size > kMaxInflatedBytes ||
        entry.uncompressed_size > entry.compressed_size * kMaxDeflateRatio + 64)
      fail("{}: zip entry '{}' claims to inflate {} bytes to {} bytes (limit {}, ratio {}:1): refusing a zip bomb",
           source(), entry.name, entry.compressed_size, entry.uncompressed_size, kMaxInflatedBytes, kMaxDeflateRatio);
  } else {
    fail("{}: zip entry '{}' uses unsupported compression method {} (only stored and deflated)", source(), entry.name,
         entry.method);
  }
}

const ZipEntry* ZipArchive::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

std::span<const std::byte> ZipArchive::entry_payload(const ZipEntry& entry) const {
  const std::string what = "local header of zip entry '" + entry.name + "'";
  ByteReader reader(file_->bytes().first(directory_offset_), source());
  reader.seek(entry.local_header_offset, what);
  if (reader.u32(what) != kLocalHeaderSignature)
    fail("{}: corrupt zip: no local header for entry '{}' at offset {}", source(), entry.name,
         entry.local_header_offset);
  reader.take(kLocalHeaderSize - 8, what);
  const std::uint16_t name_size = reader.u16(what);
  const std::uint16_t extra_size = reader.u16(what);
  reader.take(std::uint64_t{name_size} + extra_size, what);
  return reader.take(entry.compressed_size, "data of zip entry '" + entry.name + "'");
}

EntryData ZipArchive::read(const ZipEntry& entry) const {
  const std::span<const std::byte> payload = entry_payload(entry);
  EntryData data = entry.method == kMethodStored ? EntryData{payload, file_} : inflate(entry, payload);
  if (crc_of(data.bytes) != entry.crc32) fail("{}: corrupt zip: CRC mismatch in entry '{}'", source(), entry.name);
  return data;
}

EntryData ZipArchive::inflate(const ZipEntry& entry, std::span<const std::byte> compressed) const {
  // The buffer grows with what actually inflates, up to the declared size: a false claim costs no more
  // memory than the data behind it.
  const auto declared = static_cast<std::size_t>(entry.uncompressed_size);
  auto buffer = std::make_shared<std::vector<std::byte>>();
  z_stream stream{};
  if (inflateInit2(&stream, -MAX_WBITS) != Z_OK) fail("{}: zlib inflateInit failed", source());
  std::size_t consumed = 0;
  std::size_t produced = 0;
  int status = Z_OK;
  // zlib counts in 32-bit uInt, so feed both sides in chunks.
  constexpr std::size_t kChunk = std::numeric_limits<uInt>::max();
  while (status == Z_OK) {
    if (produced == buffer->size() && buffer->size() < declared)
      buffer->resize(std::min(declared, std::max(kFirstBufferBytes, buffer->size() * 2)));
    stream.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(compressed.data() + consumed));
    stream.avail_in = static_cast<uInt>(std::min(kChunk, compressed.size() - consumed));
    stream.next_out = reinterpret_cast<Bytef*>(buffer->data() + produced);
    stream.avail_out = static_cast<uInt>(std::min(kChunk, buffer->size() - produced));
    const uInt in_before = stream.avail_in;
    const uInt out_before = stream.avail_out;
    status = ::inflate(&stream, Z_NO_FLUSH);
    consumed += in_before - stream.avail_in;
    produced += out_before - stream.avail_out;
    if (status == Z_OK && in_before == stream.avail_in && out_before == stream.avail_out) status = Z_BUF_ERROR;
  }
  const std::string reason = stream.msg != nullptr ? stream.msg : "stream ended early or ran long";
  inflateEnd(&stream);
  if (status != Z_STREAM_END || produced != declared)
    fail("{}: corrupt zip: entry '{}' does not inflate to its declared {} bytes ({})", source(), entry.name,
         entry.uncompressed_size, reason);
  return {*buffer, buffer};
}

}  // namespace clipdissect::io
