// Format-specific decoders behind decode_image_bytes (internal to src/io).
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string_view>

#include "clipdissect/image.h"

namespace clipdissect::detail {

// Both decoders return PIL's Image.open(...).convert('RGB') of the data; `name` only labels errors.
RgbImage decode_jpeg(std::span<const std::uint8_t> data, const std::filesystem::path& name);
RgbImage decode_png(std::span<const std::uint8_t> data, const std::filesystem::path& name);

// Throws Error naming the file: "cannot decode image '<name>': <reason>".
[[noreturn]] void fail_decode(const std::filesystem::path& name, std::string_view reason);

// PIL raises DecompressionBombError above twice Image.MAX_IMAGE_PIXELS (89478485) pixels; no image this
// library decodes or creates may be larger.
inline constexpr std::uint64_t kMaxImagePixels = 2 * 89478485ULL;

// Rejects empty images and decompression bombs before any pixel buffer is allocated.
void check_image_size(std::uint64_t width, std::uint64_t height, const std::filesystem::path& name);

}  // namespace clipdissect::detail
