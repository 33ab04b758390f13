// Builders for synthetic checkpoints (pickles, zips, legacy torch files) and small test helpers
// shared by the weights tests.
#pragma once

#include "test_files.h"

#include <zlib.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "clipdissect/error.h"
#include "clipdissect/weights.h"

namespace clipdissect::testing {

using Bytes = std::vector<std::byte>;

inline Bytes read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto* begin = reinterpret_cast<const std::byte*>(text.data());
  return {begin, begin + text.size()};
}

inline void write_bytes(const std::filesystem::path& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

template <typename T>
void append_le(Bytes& out, T value) {
  const std::size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &value, sizeof(T));
}

// Overwrites the bytes at `offset` with `value`, little-endian.
template <typename T>
void patch(Bytes& bytes, std::size_t offset, T value) {
  std::memcpy(bytes.data() + offset, &value, sizeof value);
}

// Offset of the first little-endian occurrence of a 4-byte zip record signature.
inline std::size_t find_signature(const Bytes& bytes, std::uint32_t signature) {
  for (std::size_t i = 0; i + 4 <= bytes.size(); ++i)
    if (std::memcmp(bytes.data() + i, &signature, 4) == 0) return i;
  throw std::runtime_error("signature not found");
}

template <typename T>
Bytes as_bytes_of(const std::vector<T>& values) {
  const auto* begin = reinterpret_cast<const std::byte*>(values.data());
  return {begin, begin + values.size() * sizeof(T)};
}

// Scratch folders: clipdissect::testing::TemporaryFolder (test_files.h).
using TempDir = clipdissect::testing::TemporaryFolder;

// The message of the clipdissect::Error that `action` throws (a test failure when it throws none).
inline std::string error_message(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& error) {
    return error.what();
  }
  ADD_FAILURE() << "expected a clipdissect::Error";
  return {};
}

// Expects an Error whose message contains every one of `parts`.
inline void expect_error(const std::function<void()>& action, std::initializer_list<std::string_view> parts) {
  const std::string message = error_message(action);
  for (std::string_view part : parts)
    EXPECT_NE(message.find(part), std::string::npos) << "message lacks '" << part << "': " << message;
}

// Writes pickle opcodes (protocol 2, as torch.save does).
class PickleWriter {
 public:
  PickleWriter() { op(0x80).op(2); }
  PickleWriter& op(std::uint8_t byte) {
    out_.push_back(std::byte{byte});
    return *this;
  }
  PickleWriter& raw(std::string_view text) {
    for (char c : text) op(static_cast<std::uint8_t>(c));
    return *this;
  }
  PickleWriter& mark() { return op('('); }
  PickleWriter& tuple() { return op('t'); }
  PickleWriter& empty_tuple() { return op(')'); }
  PickleWriter& empty_dict() { return op('}'); }
  PickleWriter& empty_list() { return op(']'); }
  PickleWriter& setitem() { return op('s'); }
  PickleWriter& setitems() { return op('u'); }
  PickleWriter& append() { return op('a'); }
  PickleWriter& reduce() { return op('R'); }
  PickleWriter& build() { return op('b'); }
  PickleWriter& newobj() { return op(0x81); }
  PickleWriter& none() { return op('N'); }
  PickleWriter& boolean(bool value) { return op(value ? 0x88 : 0x89); }
  PickleWriter& stop() { return op('.'); }
  PickleWriter& global(std::string_view module, std::string_view name) {
    return op('c').raw(module).op('\n').raw(name).op('\n');
  }
  PickleWriter& str(std::string_view text) {
    op('X');
    append_le(out_, static_cast<std::uint32_t>(text.size()));
    return raw(text);
  }
  PickleWriter& integer(std::int64_t value) {
    if (value >= INT32_MIN && value <= INT32_MAX) {
      op('J');
      append_le(out_, static_cast<std::int32_t>(value));
    } else {
      op(0x8a).op(8);
      append_le(out_, value);
    }
    return *this;
  }
  PickleWriter& ints(const std::vector<std::int64_t>& values) {
    mark();
    for (std::int64_t value : values) integer(value);
    return tuple();
  }
  // The device torch.save records for the storages that follow ('cuda:0' for a model saved from a GPU).
  PickleWriter& storage_location(std::string_view location) {
    location_ = location;
    return *this;
  }
  // ('storage', torch.<type>, key, location, numel[, None]) as a persistent id.
  PickleWriter& storage(std::string_view type, std::string_view key, std::int64_t numel, bool legacy = false) {
    mark().str("storage").global("torch", type).str(key).str(location_).integer(numel);
    if (legacy) none();
    return tuple().op('Q');
  }
  // torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict()).
  PickleWriter& tensor(std::string_view type, std::string_view key, std::int64_t numel, std::int64_t offset,
                       const std::vector<std::int64_t>& size, const std::vector<std::int64_t>& stride,
                       bool legacy = false) {
    global("torch._utils", "_rebuild_tensor_v2").mark();
    storage(type, key, numel, legacy).integer(offset).ints(size).ints(stride).boolean(false);
    return global("collections", "OrderedDict").empty_tuple().reduce().tuple().reduce();
  }
  Bytes bytes() const { return out_; }

 private:
  Bytes out_;
  std::string location_ = "cpu";
};

struct ZipInput {
  std::string name;
  Bytes data;
  bool deflate = false;
};

inline Bytes raw_deflate(const Bytes& data) {
  z_stream stream{};
  deflateInit2(&stream, Z_BEST_COMPRESSION, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
  Bytes out(deflateBound(&stream, data.size()));
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(data.data()));
  stream.avail_in = static_cast<uInt>(data.size());
  stream.next_out = reinterpret_cast<Bytef*>(out.data());
  stream.avail_out = static_cast<uInt>(out.size());
  deflate(&stream, Z_FINISH);
  out.resize(stream.total_out);
  deflateEnd(&stream);
  return out;
}

// A zip archive; with `zip64` every size and offset goes through ZIP64 records.
inline Bytes make_zip(const std::vector<ZipInput>& inputs, bool zip64 = false) {
  constexpr std::uint32_t kSaturated = 0xffffffff;
  Bytes out;
  Bytes directory;
  for (const ZipInput& input : inputs) {
    const Bytes payload = input.deflate ? raw_deflate(input.data) : input.data;
    const auto crc = static_cast<std::uint32_t>(
        crc32(0, reinterpret_cast<const Bytef*>(input.data.data()), static_cast<uInt>(input.data.size())));
    const std::uint64_t offset = out.size();
    const std::uint16_t method = input.deflate ? 8 : 0;
    auto header = [&](Bytes& to, bool central) {
      append_le<std::uint32_t>(to, central ? 0x02014b50 : 0x04034b50);
      if (central) append_le<std::uint16_t>(to, 45);
      append_le<std::uint16_t>(to, 45);
      append_le<std::uint16_t>(to, 0);  // flags
      append_le<std::uint16_t>(to, method);
      append_le<std::uint32_t>(to, 0);  // time, date
      append_le<std::uint32_t>(to, crc);
      append_le<std::uint32_t>(to, zip64 ? kSaturated : static_cast<std::uint32_t>(payload.size()));
      append_le<std::uint32_t>(to, zip64 ? kSaturated : static_cast<std::uint32_t>(input.data.size()));
      append_le<std::uint16_t>(to, static_cast<std::uint16_t>(input.name.size()));
      append_le<std::uint16_t>(to, central && zip64 ? 28 : 0);
      if (central) {
        append_le<std::uint16_t>(to, 0);  // comment
        append_le<std::uint32_t>(to, 0);  // disk, internal attributes
        append_le<std::uint32_t>(to, 0);  // external attributes
        append_le<std::uint32_t>(to, zip64 ? kSaturated : static_cast<std::uint32_t>(offset));
      }
      for (char c : input.name) to.push_back(std::byte(c));
      if (central && zip64) {
        append_le<std::uint16_t>(to, 1);
        append_le<std::uint16_t>(to, 24);
        append_le<std::uint64_t>(to, input.data.size());
        append_le<std::uint64_t>(to, payload.size());
        append_le<std::uint64_t>(to, offset);
      }
    };
    header(out, false);
    out.insert(out.end(), payload.begin(), payload.end());
    header(directory, true);
  }
  const std::uint64_t directory_offset = out.size();
  out.insert(out.end(), directory.begin(), directory.end());
  if (zip64) {
    const std::uint64_t record_offset = out.size();
    append_le<std::uint32_t>(out, 0x06064b50);
    append_le<std::uint64_t>(out, 44);
    append_le<std::uint32_t>(out, (45 << 16) | 45);
    append_le<std::uint64_t>(out, 0);  // disk numbers
    append_le<std::uint64_t>(out, inputs.size());
    append_le<std::uint64_t>(out, inputs.size());
    append_le<std::uint64_t>(out, directory.size());
    append_le<std::uint64_t>(out, directory_offset);
    append_le<std::uint32_t>(out, 0x07064b50);
    append_le<std::uint32_t>(out, 0);
    append_le<std::uint64_t>(out, record_offset);
    append_le<std::uint32_t>(out, 1);
  }
  append_le<std::uint32_t>(out, 0x06054b50);
  append_le<std::uint32_t>(out, 0);  // disk numbers
  append_le<std::uint16_t>(out, zip64 ? 0xffff : static_cast<std::uint16_t>(inputs.size()));
  append_le<std::uint16_t>(out, zip64 ? 0xffff : static_cast<std::uint16_t>(inputs.size()));
  append_le<std::uint32_t>(out, zip64 ? kSaturated : static_cast<std::uint32_t>(directory.size()));
  append_le<std::uint32_t>(out, zip64 ? kSaturated : static_cast<std::uint32_t>(directory_offset));
  append_le<std::uint16_t>(out, 0);
  return out;
}

struct StorageBytes {
  std::string key;
  Bytes data;
};

// A torch.save-style zip: <folder>/data.pkl and <folder>/data/<key> for each storage.
inline Bytes make_torch_zip(const Bytes& pickle, const std::vector<StorageBytes>& storages,
                            std::vector<ZipInput> extra = {}, bool deflate = false, bool zip64 = false) {
  std::vector<ZipInput> inputs{{"archive/data.pkl", pickle, deflate}};
  for (const StorageBytes& storage : storages) inputs.push_back({"archive/data/" + storage.key, storage.data, deflate});
  for (ZipInput& input : extra) inputs.push_back(std::move(input));
  return make_zip(inputs, zip64);
}

// A legacy torch.save file: magic, protocol 1001, sys info, `main`, storage keys, storages.
inline Bytes make_legacy(const Bytes& main, const std::vector<StorageBytes>& storages,
                         const std::vector<std::size_t>& element_sizes) {
  Bytes out;
  const std::uint8_t magic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
                                0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e};
  for (std::uint8_t byte : magic) out.push_back(std::byte{byte});
  auto add = [&](const Bytes& bytes) { out.insert(out.end(), bytes.begin(), bytes.end()); };
  add(PickleWriter().integer(1001).stop().bytes());
  add(PickleWriter()
          .empty_dict()
          .mark()
          .str("protocol_version")
          .integer(1001)
          .str("little_endian")
          .boolean(true)
          .setitems()
          .stop()
          .bytes());
  add(main);
  PickleWriter keys;
  keys.empty_list();
  for (const StorageBytes& storage : storages) keys.str(storage.key).append();
  add(keys.stop().bytes());
  for (std::size_t i = 0; i < storages.size(); ++i) {
    append_le<std::uint64_t>(out, storages[i].data.size() / element_sizes[i]);
    add(storages[i].data);
  }
  return out;
}

}  // namespace clipdissect::testing
