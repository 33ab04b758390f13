#include "clipdissect/image.h"
#include "fuzz_targets.h"

namespace clipdissect::fuzz {

// Decoding (with PIL's mode conversions to RGB), then both preprocessing pipelines for images small enough
// that resizing stays fast; extreme aspect ratios still get through.
void image(Bytes data) {
  const RgbImage decoded = decode_image_bytes(data, "fuzz-image");
  if (decoded.pixels.size() != static_cast<std::size_t>(decoded.width) * decoded.height * 3)
    throw std::logic_error("decoded pixel buffer does not match the image size");
  constexpr std::size_t kMaxPreprocessedPixels = 1 << 16;
  if (static_cast<std::size_t>(decoded.width) * decoded.height > kMaxPreprocessedPixels) return;
  for (const Preprocess& preprocess : {clip_preprocess(224), imagenet_preprocess()})
    apply_geometry(decoded, preprocess);
}

}  // namespace clipdissect::fuzz
