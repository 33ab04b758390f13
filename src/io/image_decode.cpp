// Reading an image file and dispatching on its content (like PIL.Image.open, not on the extension).
#include <algorithm>
#include <array>
#include <fstream>
#include <system_error>
#include <vector>

#include "clipdissect/error.h"
#include "clipdissect/image.h"
#include "io/image_decoders.h"

namespace clipdissect {
namespace detail {

void fail_decode(const std::filesystem::path& name, std::string_view reason) {
  fail("cannot decode image '{}': {}", name.string(), reason);
}

void check_image_size(std::uint64_t width, std::uint64_t height, const std::filesystem::path& name) {
  if (width == 0 || height == 0) fail_decode(name, fmt::format("empty image ({}x{})", width, height));
  if (width * height > kMaxImagePixels) {
    fail_decode(name, fmt::format("{}x{} pixels exceed the limit of {} pixels", width, height, kMaxImagePixels));
  }
}

}  // namespace detail

namespace {

constexpr std::array<std::uint8_t, 3> kJpegMagic{0xFF, 0xD8, 0xFF};
constexpr std::array<std::uint8_t, 8> kPngMagic{0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};

template <std::size_t N>
bool starts_with(std::span<const std::uint8_t> data, const std::array<std::uint8_t, N>& magic) {
  return data.size() >= N && std::equal(magic.begin(), magic.end(), data.begin());
}

std::vector<std::uint8_t> read_file_bytes(const std::filesystem::path& path) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    fail("cannot open image '{}': not a regular file", path.string());
  }
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  const std::streamoff size = file ? static_cast<std::streamoff>(file.tellg()) : -1;
  if (size < 0) fail("cannot open image '{}'", path.string());
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(size));
  file.seekg(0);
  if (!file.read(reinterpret_cast<char*>(bytes.data()), size)) fail("cannot read image '{}'", path.string());
  return bytes;
}

}  // namespace

RgbImage decode_image_bytes(std::span<const std::uint8_t> data, const std::filesystem::path& name_for_errors) {
  if (starts_with(data, kJpegMagic)) return detail::decode_jpeg(data, name_for_errors);
  if (starts_with(data, kPngMagic)) return detail::decode_png(data, name_for_errors);
  if (data.empty()) detail::fail_decode(name_for_errors, "the file is empty");
  detail::fail_decode(name_for_errors, "not a JPEG or PNG file (unrecognised signature)");
}

RgbImage decode_image_file(const std::filesystem::path& path) {
  std::vector<std::uint8_t> bytes = read_file_bytes(path);
  return decode_image_bytes(bytes, path);
}

}  // namespace clipdissect
