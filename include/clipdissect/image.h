// Decoding probe images and preprocessing them exactly as the reference (PIL + torchvision) does; JPEG encoding.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <span>
#include <utility>
#include <vector>

namespace clipdissect {

// 8-bit RGB, row-major, HWC.
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> pixels;  // width * height * 3
};

// Decodes JPEG or PNG (sniffed from the content, not the extension) and converts to RGB as
// PIL's Image.open(f).convert('RGB') does. Throws Error naming the file on failure.
RgbImage decode_image_file(const std::filesystem::path& path);
RgbImage decode_image_bytes(std::span<const std::uint8_t> data, const std::filesystem::path& name_for_errors);

// Baseline JPEG (libjpeg-turbo, 4:2:0, optimised Huffman tables) at `quality` 1..100.
std::vector<std::uint8_t> encode_jpeg(const RgbImage& image, int quality);

enum class ResizeFilter { Bilinear, Bicubic };

// torchvision Resize(size) on the shorter side (long side truncated), then PIL's antialiased resize.
RgbImage resize_shorter_side(const RgbImage& image, int size, ResizeFilter filter);
// The {width, height} that torchvision's Resize(size) gives `image`.
std::pair<int, int> shorter_side_size(const RgbImage& image, int size);
// PIL Image.resize((width, height), filter).
RgbImage resize(const RgbImage& image, int width, int height, ResizeFilter filter);

// Columns [left, left + width) and rows [top, top + height) of an image.
struct PixelWindow {
  int left = 0;
  int top = 0;
  int width = 0;
  int height = 0;
};
// The pixels inside `window` of resize(image, width, height, filter), computed alone: every output pixel
// depends only on its own position, so they are the same values, at the cost of the window only.
RgbImage resize_window(const RgbImage& image, int width, int height, ResizeFilter filter, const PixelWindow& window);
// torchvision CenterCrop(size) with round-half-to-even offsets.
RgbImage center_crop(const RgbImage& image, int size);
// Where that crop starts along an axis of `length` pixels: int(round((length - crop) / 2.0)) with Python's
// round-half-to-even, or, when length < crop, minus the zero padding torchvision adds before the image.
int center_crop_offset(int length, int crop);

struct Preprocess {
  int resize = 224;
  ResizeFilter filter = ResizeFilter::Bicubic;
  int crop = 224;
  std::array<float, 3> mean{};
  std::array<float, 3> std{};
};
Preprocess clip_preprocess(int resolution);  // clip.clip._transform(resolution)
Preprocess imagenet_preprocess();            // ResNet50_Weights.IMAGENET1K_V1.transforms()

// Resize + crop (the PIL part of the pipeline).
RgbImage apply_geometry(const RgbImage& image, const Preprocess& preprocess);
// ToTensor + Normalize in float32: writes 3 * crop * crop floats, CHW.
void normalize_to_chw(const RgbImage& cropped, const Preprocess& preprocess, std::span<float> out);

}  // namespace clipdissect
