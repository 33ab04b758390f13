// torchvision 0.14's CenterCrop, ToTensor and Normalize on PIL images, and the two pipelines of the reference.
#include <algorithm>

#include "clipdissect/error.h"
#include "clipdissect/image.h"

namespace clipdissect {
namespace {

// torchvision builds mean/std tensors from Python floats (doubles) rounded to float32; spelling the constants as
// doubles keeps that double rounding instead of rounding the decimal straight to float.
constexpr std::array<float, 3> to_floats(double a, double b, double c) {
  return {static_cast<float>(a), static_cast<float>(b), static_cast<float>(c)};
}

void check_image(const RgbImage& image, const char* what) {
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != static_cast<std::size_t>(image.width) * image.height * 3) {
    fail("{}: invalid image {}x{} with {} bytes (expected width * height * 3)", what, image.width, image.height,
         image.pixels.size());
  }
}

// ToTensor (u8 / 255 in float32) then Normalize ((x - mean) / std in float32) of every third byte: the same
// float operations as torchvision's, in a loop the compiler vectorises (the AVX2 clone 8 lanes at a time).
__attribute__((target_clones("avx2", "default"))) void normalize_plane(const std::uint8_t* interleaved,
                                                                        std::size_t count, float mean, float std_dev,
                                                                        float* out) {
  for (std::size_t i = 0; i < count; ++i) out[i] = (static_cast<float>(interleaved[i * 3]) / 255.0f - mean) / std_dev;
}

}  // namespace

int center_crop_offset(int length, int crop) {
  if (length < crop) return -((crop - length) / 2);  // torchvision pads (crop - length) // 2 zeros before
  // int(round((length - crop) / 2.0)) with Python's round-half-to-even.
  const int excess = length - crop;
  const int half = excess / 2;
  return (excess % 2 != 0 && half % 2 != 0) ? half + 1 : half;
}

RgbImage center_crop(const RgbImage& image, int size) {
  check_image(image, "center_crop");
  if (size <= 0) fail("center_crop: crop size must be positive, got {}", size);
  const int top = center_crop_offset(image.height, size);
  const int left = center_crop_offset(image.width, size);
  // Columns of the crop that lie inside the source; the rest is torchvision's zero padding.
  const int first_column = std::max(0, -left);
  const int end_column = std::min(size, image.width - left);
  RgbImage out;
  out.width = size;
  out.height = size;
  out.pixels.assign(static_cast<std::size_t>(size) * size * 3, 0);
  for (int y = 0; y < size; ++y) {
    const int source_y = y + top;
    if (source_y < 0 || source_y >= image.height) continue;
    const std::uint8_t* src =
        image.pixels.data() + (static_cast<std::size_t>(source_y) * image.width + left + first_column) * 3;
    std::copy_n(src, static_cast<std::size_t>(end_column - first_column) * 3,
                out.pixels.begin() + (static_cast<std::size_t>(y) * size + first_column) * 3);
  }
  return out;
}

Preprocess clip_preprocess(int resolution) {
  if (resolution <= 0) fail("clip_preprocess: resolution must be positive, got {}", resolution);
  return Preprocess{.resize = resolution,
                    .filter = ResizeFilter::Bicubic,
                    .crop = resolution,
                    .mean = to_floats(0.48145466, 0.4578275, 0.40821073),
                    .std = to_floats(0.26862954, 0.26130258, 0.27577711)};
}

Preprocess imagenet_preprocess() {
  return Preprocess{.resize = 256,
                    .filter = ResizeFilter::Bilinear,
                    .crop = 224,
                    .mean = to_floats(0.485, 0.456, 0.406),
                    .std = to_floats(0.229, 0.224, 0.225)};
}

RgbImage apply_geometry(const RgbImage& image, const Preprocess& preprocess) {
  if (preprocess.crop <= 0) fail("center_crop: crop size must be positive, got {}", preprocess.crop);
  const auto [width, height] = shorter_side_size(image, preprocess.resize);
  // Only the resized pixels that the crop keeps are computed; along an axis shorter than the crop that is
  // all of them, and center_crop pads them as before.
  const auto kept = [&](int length) {
    const int begin = std::max(0, center_crop_offset(length, preprocess.crop));
    return std::pair{begin, std::min(length, begin + preprocess.crop) - begin};
  };
  const auto [left, kept_width] = kept(width);
  const auto [top, kept_height] = kept(height);
  return center_crop(resize_window(image, width, height, preprocess.filter, {left, top, kept_width, kept_height}),
                     preprocess.crop);
}

void normalize_to_chw(const RgbImage& cropped, const Preprocess& preprocess, std::span<float> out) {
  check_image(cropped, "normalize_to_chw");
  const std::size_t plane = static_cast<std::size_t>(preprocess.crop) * preprocess.crop;
  if (cropped.width != preprocess.crop || cropped.height != preprocess.crop || out.size() != 3 * plane) {
    fail("normalize_to_chw: got a {}x{} image and {} output floats (expected {}x{} and {})", cropped.width,
         cropped.height, out.size(), preprocess.crop, preprocess.crop, 3 * plane);
  }
  for (std::size_t channel = 0; channel < 3; ++channel)
    normalize_plane(cropped.pixels.data() + channel, plane, preprocess.mean[channel], preprocess.std[channel],
                    out.data() + channel * plane);
}

}  // namespace clipdissect
