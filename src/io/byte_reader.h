// Bounds-checked little-endian reading from untrusted bytes. Every read names the source and
// what was being read when the data runs out.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "clipdissect/error.h"

namespace clipdissect::io {

static_assert(std::endian::native == std::endian::little, "checkpoint readers assume a little-endian host");

class ByteReader {
 public:
  ByteReader(std::span<const std::byte> data, std::string_view source) : data_(data), source_(source) {}

  std::size_t position() const { return position_; }
  std::size_t remaining() const { return data_.size() - position_; }

  void seek(std::size_t position, std::string_view what) {
    if (position > data_.size())
      fail("{}: truncated: {} lies at offset {} but the data ends at {}", source_, what, position, data_.size());
    position_ = position;
  }

  std::span<const std::byte> take(std::uint64_t count, std::string_view what) {
    if (count > remaining())
      fail("{}: truncated: {} needs {} bytes at offset {} but only {} remain", source_, what, count, position_,
           remaining());
    std::span<const std::byte> out = data_.subspan(position_, static_cast<std::size_t>(count));
    position_ += out.size();
    return out;
  }

  std::string_view take_text(std::uint64_t count, std::string_view what) {
    std::span<const std::byte> bytes = take(count, what);
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }

  template <typename T>
  T read(std::string_view what) {
    static_assert(std::is_trivially_copyable_v<T>);
    T value;
    std::memcpy(&value, take(sizeof(T), what).data(), sizeof(T));
    return value;
  }

  std::uint16_t u16(std::string_view what) { return read<std::uint16_t>(what); }
  std::uint32_t u32(std::string_view what) { return read<std::uint32_t>(what); }
  std::uint64_t u64(std::string_view what) { return read<std::uint64_t>(what); }

 private:
  std::span<const std::byte> data_;
  std::string source_;
  std::size_t position_ = 0;
};

}  // namespace clipdissect::io
