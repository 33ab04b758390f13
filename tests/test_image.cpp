#include <png.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "clipdissect/error.h"
#include "clipdissect/image.h"
#include "fixtures.h"
#include "test_files.h"

namespace clipdissect {
namespace {

namespace fs = std::filesystem;
using clipdissect::testing::fixture;
using Bytes = std::vector<std::uint8_t>;

constexpr int kFormatImages = 24;  // the first rows of images/index.tsv, covered by preprocess/
constexpr int kNormImages = 4;

Bytes read_bytes(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  return Bytes{std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

void write_bytes(const fs::path& path, std::span<const std::uint8_t> bytes) {
  std::ofstream file(path, std::ios::binary);
  file.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// Minimal safetensors reader for the fixtures (the project's weights loader is tested on its own).
class Safetensors {
 public:
  explicit Safetensors(const fs::path& path) : bytes_(read_bytes(path)) {
    if (bytes_.size() < 8) throw std::runtime_error("short safetensors file " + path.string());
    std::uint64_t header_size = 0;
    for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | bytes_[i];
    if (header_size > bytes_.size() - 8) throw std::runtime_error("bad safetensors header in " + path.string());
    header_ = nlohmann::json::parse(bytes_.begin() + 8, bytes_.begin() + 8 + static_cast<std::ptrdiff_t>(header_size));
    data_begin_ = 8 + header_size;
  }

  std::span<const std::uint8_t> tensor(const std::string& name, const std::string& dtype,
                                       const std::vector<int>& shape) const {
    const nlohmann::json& entry = header_.at(name);
    EXPECT_EQ(entry.at("dtype"), dtype) << name;
    EXPECT_EQ(entry.at("shape").get<std::vector<int>>(), shape) << name;
    const auto begin = entry.at("data_offsets").at(0).get<std::size_t>();
    const auto end = entry.at("data_offsets").at(1).get<std::size_t>();
    if (begin > end || end > bytes_.size() - data_begin_) throw std::runtime_error("bad offsets for " + name);
    return std::span(bytes_).subspan(data_begin_ + begin, end - begin);
  }

 private:
  Bytes bytes_;
  nlohmann::json header_;
  std::size_t data_begin_ = 0;
};

std::vector<std::string> indexed_images() {
  std::ifstream index(fixture("images/index.tsv"));
  std::vector<std::string> paths;
  for (std::string line; std::getline(index, line);) paths.push_back(line.substr(0, line.find('\t')));
  return paths;
}

RgbImage decode_fixture_image(int i) {
  static const std::vector<std::string> paths = indexed_images();
  return decode_image_file(fixture("images/" + paths.at(i)));
}

// Compares a pipeline's output with a U8 [224, 224, 3] reference; reports the largest difference.
void expect_same_pixels(const RgbImage& actual, std::span<const std::uint8_t> expected, const std::string& what) {
  ASSERT_EQ(actual.width, 224) << what;
  ASSERT_EQ(actual.height, 224) << what;
  ASSERT_EQ(actual.pixels.size(), expected.size()) << what;
  int max_diff = 0;
  std::size_t differing = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const int diff = std::abs(int{actual.pixels[i]} - int{expected[i]});
    max_diff = std::max(max_diff, diff);
    differing += diff != 0;
  }
  EXPECT_EQ(max_diff, 0) << what << ": " << differing << " of " << expected.size() << " bytes differ";
}

void expect_pipeline_matches(const Preprocess& preprocess, const std::string& file, const std::string& prefix) {
  const Safetensors reference(fixture("preprocess/" + file));
  for (int i = 0; i < kFormatImages; ++i) {
    const std::string name = prefix + "/" + std::to_string(i);
    expect_same_pixels(apply_geometry(decode_fixture_image(i), preprocess),
                       reference.tensor(name, "U8", {224, 224, 3}), name);
  }
}

TEST(ImagePreprocess, ClipPipelineMatchesReferenceBytes) {
  expect_pipeline_matches(clip_preprocess(224), "clip_u8.safetensors", "clip");
}

TEST(ImagePreprocess, TargetPipelineMatchesReferenceBytes) {
  expect_pipeline_matches(imagenet_preprocess(), "target_u8.safetensors", "target");
}

void expect_normalized_matches(const Preprocess& preprocess, const std::string& file, const std::string& prefix) {
  const Safetensors reference(fixture("preprocess/" + file));
  std::vector<float> normalized(3 * 224 * 224);
  for (int i = 0; i < kNormImages; ++i) {
    const std::string name = prefix + "/" + std::to_string(i);
    normalize_to_chw(apply_geometry(decode_fixture_image(i), preprocess), preprocess, normalized);
    const std::span<const std::uint8_t> expected = reference.tensor(name, "F32", {3, 224, 224});
    ASSERT_EQ(expected.size(), normalized.size() * sizeof(float));
    float max_diff = 0;
    for (std::size_t j = 0; j < normalized.size(); ++j) {
      float value;
      std::memcpy(&value, expected.data() + j * sizeof(float), sizeof(float));
      max_diff = std::max(max_diff, std::abs(value - normalized[j]));
    }
    EXPECT_EQ(max_diff, 0.0f) << name;
    EXPECT_EQ(std::memcmp(expected.data(), normalized.data(), expected.size()), 0) << name << " not bit-identical";
  }
}

TEST(ImagePreprocess, ClipNormalizedTensorsAreBitIdentical) {
  expect_normalized_matches(clip_preprocess(224), "clip_norm.safetensors", "clip_norm");
}

TEST(ImagePreprocess, TargetNormalizedTensorsAreBitIdentical) {
  expect_normalized_matches(imagenet_preprocess(), "target_norm.safetensors", "target_norm");
}

// geometry.json sizes are [width, height]; crop corners are [top, left].
void expect_geometry(const RgbImage& image, const Preprocess& preprocess, const nlohmann::json& resized,
                     const nlohmann::json& top_left, bool half, const std::string& what) {
  const RgbImage scaled = resize_shorter_side(image, preprocess.resize, preprocess.filter);
  EXPECT_EQ(scaled.width, resized.at(0).get<int>()) << what;
  EXPECT_EQ(scaled.height, resized.at(1).get<int>()) << what;
  EXPECT_EQ(center_crop_offset(scaled.height, preprocess.crop), top_left.at(0).get<int>()) << what;
  EXPECT_EQ(center_crop_offset(scaled.width, preprocess.crop), top_left.at(1).get<int>()) << what;
  const bool odd_margin = (scaled.width - preprocess.crop) % 2 != 0 || (scaled.height - preprocess.crop) % 2 != 0;
  EXPECT_EQ(odd_margin, half) << what;
}

TEST(ImagePreprocess, GeometryMatchesReference) {
  std::ifstream file(fixture("preprocess/geometry.json"));
  const nlohmann::json geometry = nlohmann::json::parse(file);
  ASSERT_EQ(geometry.size(), static_cast<std::size_t>(kFormatImages));
  for (const nlohmann::json& entry : geometry) {
    const int i = entry.at("i").get<int>();
    const RgbImage image = decode_fixture_image(i);
    const std::string what = entry.at("path").get<std::string>();
    EXPECT_EQ(image.width, entry.at("size").at(0).get<int>()) << what;
    EXPECT_EQ(image.height, entry.at("size").at(1).get<int>()) << what;
    expect_geometry(image, clip_preprocess(224), entry.at("clip_resized"), entry.at("clip_crop_top_left"),
                    entry.at("clip_half").get<bool>(), what + " (clip)");
    expect_geometry(image, imagenet_preprocess(), entry.at("target_resized"), entry.at("target_crop_top_left"),
                    entry.at("target_half").get<bool>(), what + " (target)");
  }
}

TEST(ImageDecode, DecodesEveryFixtureImage) {
  const std::vector<std::string> paths = indexed_images();
  ASSERT_EQ(paths.size(), 130u);
  for (const std::string& path : paths) {
    const RgbImage image = decode_image_file(fixture("images/" + path));
    EXPECT_GT(image.width, 0) << path;
    EXPECT_GT(image.height, 0) << path;
    EXPECT_EQ(image.pixels.size(), static_cast<std::size_t>(image.width) * image.height * 3) << path;
  }
}

TEST(ImagePreprocess, CropOffsetsRoundHalfToEven) {
  EXPECT_EQ(center_crop_offset(224, 224), 0);
  EXPECT_EQ(center_crop_offset(225, 224), 0);    // round(0.5) = 0
  EXPECT_EQ(center_crop_offset(227, 224), 2);    // round(1.5) = 2
  EXPECT_EQ(center_crop_offset(341, 224), 58);   // round(58.5) = 58
  EXPECT_EQ(center_crop_offset(343, 224), 60);   // round(59.5) = 60
  EXPECT_EQ(center_crop_offset(220, 224), -2);   // 2 zero columns padded before
  EXPECT_EQ(center_crop_offset(219, 224), -2);   // (224 - 219) // 2
}

RgbImage numbered_image(int width, int height) {
  RgbImage image{width, height, Bytes(static_cast<std::size_t>(width) * height * 3)};
  for (std::size_t i = 0; i < image.pixels.size(); ++i) image.pixels[i] = static_cast<std::uint8_t>(1 + i % 250);
  return image;
}

std::array<std::uint8_t, 3> pixel(const RgbImage& image, int x, int y) {
  const std::size_t at = (static_cast<std::size_t>(y) * image.width + x) * 3;
  return {image.pixels[at], image.pixels[at + 1], image.pixels[at + 2]};
}

TEST(ImagePreprocess, CenterCropPadsSmallImagesWithZeros) {
  const RgbImage source = numbered_image(3, 6);  // narrower than the crop, taller than it
  const RgbImage cropped = center_crop(source, 4);
  ASSERT_EQ(cropped.width, 4);
  ASSERT_EQ(cropped.height, 4);
  // Width: torchvision pads (4 - 3) // 2 = 0 columns on the left and 1 on the right.
  // Height: the crop starts at round((6 - 4) / 2) = 1.
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 3; ++x) EXPECT_EQ(pixel(cropped, x, y), pixel(source, x, y + 1)) << x << "," << y;
    EXPECT_EQ(pixel(cropped, 3, y), (std::array<std::uint8_t, 3>{0, 0, 0})) << y;
  }
  const RgbImage padded = center_crop(numbered_image(1, 1), 3);  // 1 pixel padded on every side
  for (int y = 0; y < 3; ++y) {
    for (int x = 0; x < 3; ++x) {
      const std::uint8_t expected = x == 1 && y == 1 ? 1 : 0;
      EXPECT_EQ(pixel(padded, x, y)[0], expected) << x << "," << y;
    }
  }
}

TEST(ImageResize, SameSizeIsACopyAndConstantsStayConstant) {
  const RgbImage source = numbered_image(7, 5);
  EXPECT_EQ(resize(source, 7, 5, ResizeFilter::Bicubic).pixels, source.pixels);
  RgbImage flat{9, 4, Bytes(9 * 4 * 3, 200)};
  for (ResizeFilter filter : {ResizeFilter::Bilinear, ResizeFilter::Bicubic}) {
    for (auto [w, h] : {std::pair{3, 11}, std::pair{20, 2}, std::pair{9, 7}, std::pair{1, 1}}) {
      const RgbImage out = resize(flat, w, h, filter);
      ASSERT_EQ(out.pixels.size(), static_cast<std::size_t>(w) * h * 3);
      EXPECT_TRUE(std::all_of(out.pixels.begin(), out.pixels.end(), [](std::uint8_t v) { return v == 200; }));
    }
  }
}

// Windows of every shape, including output sizes equal to the source's along one axis (no pass there).
TEST(ImageResize, AWindowHasTheFullResizesPixels) {
  const RgbImage source = numbered_image(37, 23);
  for (ResizeFilter filter : {ResizeFilter::Bilinear, ResizeFilter::Bicubic}) {
    for (auto [w, h] : {std::pair{16, 11}, std::pair{37, 9}, std::pair{50, 23}, std::pair{90, 70}}) {
      const RgbImage full = resize(source, w, h, filter);
      for (const PixelWindow window : {PixelWindow{0, 0, w, h}, PixelWindow{3, 2, w - 5, h - 4},
                                       PixelWindow{w - 1, h - 1, 1, 1}, PixelWindow{1, 0, 2, h}}) {
        const RgbImage part = resize_window(source, w, h, filter, window);
        ASSERT_EQ(part.width, window.width);
        ASSERT_EQ(part.height, window.height);
        for (int y = 0; y < window.height; ++y)
          for (int x = 0; x < window.width; ++x)
            ASSERT_EQ(pixel(part, x, y), pixel(full, x + window.left, y + window.top))
                << w << "x" << h << " window at " << window.left << "," << window.top << ", pixel " << x << "," << y;
      }
    }
    EXPECT_THROW(resize_window(source, 10, 10, filter, {5, 0, 6, 10}), Error);  // past the right edge
    EXPECT_THROW(resize_window(source, 10, 10, filter, {0, 0, 0, 10}), Error);  // empty
  }
}

TEST(ImageResize, ShorterSideTruncatesTheLongerSide) {
  const RgbImage source = numbered_image(1024, 683);
  const RgbImage out = resize_shorter_side(source, 256, ResizeFilter::Bilinear);
  EXPECT_EQ(out.width, 383);  // int(256 * 1024 / 683) = int(383.81)
  EXPECT_EQ(out.height, 256);
  EXPECT_THROW(resize(source, 0, 10, ResizeFilter::Bilinear), Error);
}

// ---- PNG variants written with libpng at test time ----

struct PngSpec {
  int width = 0;
  int height = 0;
  int bit_depth = 8;
  int color_type = PNG_COLOR_TYPE_RGB;
  Bytes rows;  // packed PNG rows, height * bytes_per_row
  std::vector<png_color> palette;
  bool interlaced = false;
};

PngSpec png_spec(int width, int height, int bit_depth, int color_type, Bytes rows,
                 std::vector<png_color> palette = {}) {
  PngSpec spec;
  spec.width = width;
  spec.height = height;
  spec.bit_depth = bit_depth;
  spec.color_type = color_type;
  spec.rows = std::move(rows);
  spec.palette = std::move(palette);
  return spec;
}

void append_png_bytes(png_structp png, png_bytep data, std::size_t length) {
  auto* out = static_cast<Bytes*>(png_get_io_ptr(png));
  out->insert(out->end(), data, data + length);
}

Bytes encode_png(const PngSpec& spec) {
  Bytes out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png)) != 0) {
    png_destroy_write_struct(&png, &info);
    ADD_FAILURE() << "libpng could not write the test image";
    return {};
  }
  png_set_write_fn(png, &out, append_png_bytes, nullptr);
  png_set_IHDR(png, info, spec.width, spec.height, spec.bit_depth, spec.color_type,
               spec.interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!spec.palette.empty()) {
    png_set_PLTE(png, info, spec.palette.data(), static_cast<int>(spec.palette.size()));
  }
  png_write_info(png, info);
  const std::size_t stride = spec.rows.size() / spec.height;
  std::vector<png_bytep> rows;
  for (int y = 0; y < spec.height; ++y) rows.push_back(const_cast<png_bytep>(spec.rows.data() + y * stride));
  png_write_image(png, rows.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

Bytes decode_png_spec(const PngSpec& spec) { return decode_image_bytes(encode_png(spec), "test.png").pixels; }

TEST(ImageDecode, Gray16BitPngClampsLikePil) {
  const PngSpec spec = png_spec(4, 1, 16, PNG_COLOR_TYPE_GRAY, {0x00, 0x00, 0x00, 0xC8, 0x01, 0x00, 0xFF, 0xFF});
  EXPECT_EQ(decode_png_spec(spec), (Bytes{0, 0, 0, 200, 200, 200, 255, 255, 255, 255, 255, 255}));
}

TEST(ImageDecode, Rgb16BitPngKeepsHighBytes) {
  const PngSpec spec = png_spec(1, 1, 16, PNG_COLOR_TYPE_RGB, {0x12, 0xFF, 0xAB, 0x01, 0x7F, 0x80});
  EXPECT_EQ(decode_png_spec(spec), (Bytes{0x12, 0xAB, 0x7F}));
}

TEST(ImageDecode, LowBitDepthGrayPngScalesTo255) {
  const PngSpec two_bit = png_spec(4, 1, 2, PNG_COLOR_TYPE_GRAY, {0b00011011});
  EXPECT_EQ(decode_png_spec(two_bit), (Bytes{0, 0, 0, 85, 85, 85, 170, 170, 170, 255, 255, 255}));
  const PngSpec one_bit = png_spec(3, 1, 1, PNG_COLOR_TYPE_GRAY, {0b10100000});
  EXPECT_EQ(decode_png_spec(one_bit), (Bytes{255, 255, 255, 0, 0, 0, 255, 255, 255}));
}

TEST(ImageDecode, PalettePngLooksUpEntriesAndGrayRampBeyondThePalette) {
  // Indices 1, 5 (beyond PLTE: PIL's palette keeps its initial gray ramp there) and 0.
  const PngSpec spec = png_spec(3, 1, 4, PNG_COLOR_TYPE_PALETTE, {0x15, 0x00}, {{10, 20, 30}, {40, 50, 60}});
  EXPECT_EQ(decode_png_spec(spec), (Bytes{40, 50, 60, 5, 5, 5, 10, 20, 30}));
}

TEST(ImageDecode, AlphaIsDroppedNotComposited) {
  const PngSpec gray_alpha = png_spec(2, 1, 8, PNG_COLOR_TYPE_GRAY_ALPHA, {10, 0, 200, 255});
  EXPECT_EQ(decode_png_spec(gray_alpha), (Bytes{10, 10, 10, 200, 200, 200}));
  const PngSpec gray_alpha16 = png_spec(1, 1, 16, PNG_COLOR_TYPE_GRAY_ALPHA, {0x34, 0xFF, 0x00, 0x00});
  EXPECT_EQ(decode_png_spec(gray_alpha16), (Bytes{0x34, 0x34, 0x34}));
  const PngSpec rgba = png_spec(1, 1, 8, PNG_COLOR_TYPE_RGB_ALPHA, {1, 2, 3, 0});
  EXPECT_EQ(decode_png_spec(rgba), (Bytes{1, 2, 3}));
}

TEST(ImageDecode, InterlacedPngDecodesAllPasses) {
  PngSpec spec = png_spec(9, 7, 8, PNG_COLOR_TYPE_RGB, {});
  spec.interlaced = true;
  for (int i = 0; i < 9 * 7 * 3; ++i) spec.rows.push_back(static_cast<std::uint8_t>(i * 7));
  EXPECT_EQ(decode_png_spec(spec), spec.rows);
}

TEST(ImageDecode, PngImageDataCrcIsNotCheckedLikePil) {
  PngSpec spec = png_spec(2, 2, 8, PNG_COLOR_TYPE_GRAY, {1, 2, 3, 4});
  Bytes png = encode_png(spec);
  const std::array<std::uint8_t, 4> idat{'I', 'D', 'A', 'T'};
  const auto type = std::search(png.begin(), png.end(), idat.begin(), idat.end());
  ASSERT_NE(type, png.end());
  const std::size_t length = (std::size_t{type[-4]} << 24) | (type[-3] << 16) | (type[-2] << 8) | type[-1];
  type[4 + static_cast<std::ptrdiff_t>(length)] ^= 0xFF;  // first CRC byte
  EXPECT_EQ(decode_image_bytes(png, "bad_idat_crc.png").pixels, (Bytes{1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4}));
}

// ---- bad files ----

class ImageDecodeErrors : public ::testing::Test {
 protected:
  // Writes `bytes` as `name` and expects decoding to fail with a message that names the file.
  void expect_rejected(const std::string& name, std::span<const std::uint8_t> bytes, const std::string& reason) {
    const fs::path path = directory_ / name;
    write_bytes(path, bytes);
    try {
      decode_image_file(path);
      ADD_FAILURE() << name << " was decoded";
    } catch (const Error& error) {
      const std::string message = error.what();
      EXPECT_NE(message.find(path.string()), std::string::npos) << message;
      EXPECT_NE(message.find(reason), std::string::npos) << message;
    }
  }

  testing::TemporaryFolder scratch_;
  const fs::path& directory_ = scratch_.path();
};

Bytes fixture_bytes(int i) {
  static const std::vector<std::string> paths = indexed_images();
  return read_bytes(fixture("images/" + paths.at(i)));
}

TEST_F(ImageDecodeErrors, EmptyGarbageAndMissingFiles) {
  expect_rejected("empty.jpg", {}, "empty");
  const Bytes garbage{'G', 'I', 'F', '8', '9', 'a', 1, 2, 3, 4, 5};
  expect_rejected("garbage.png", garbage, "not a JPEG or PNG");
  EXPECT_THROW(decode_image_file(directory_ / "missing.jpg"), Error);
  EXPECT_THROW(decode_image_file(directory_), Error);
}

TEST_F(ImageDecodeErrors, TruncatedFiles) {
  const Bytes jpeg = fixture_bytes(0);
  expect_rejected("truncated.jpg", std::span(jpeg).first(jpeg.size() / 2), "Premature end");
  const Bytes progressive = fixture_bytes(7);
  expect_rejected("truncated_progressive.jpeg", std::span(progressive).first(progressive.size() / 2),
                  "Premature end");
  const Bytes png = fixture_bytes(10);
  expect_rejected("truncated.png", std::span(png).first(png.size() / 2), "truncated");
  expect_rejected("header_only.png", std::span(png).first(20), "truncated");
}

TEST_F(ImageDecodeErrors, CorruptHeaders) {
  const Bytes jpeg_start{0xFF, 0xD8, 0xFF, 0x00, 0x13, 0x37, 0xAA, 0xBB};
  expect_rejected("corrupt.jpg", jpeg_start, "invalid JPEG");
  Bytes png = fixture_bytes(10);
  png[16] ^= 0x01;  // IHDR width changes, its CRC no longer matches
  expect_rejected("bad_crc.png", png, "invalid PNG");
}

void write_be32(Bytes& bytes, std::size_t at, std::uint32_t value) {
  for (int i = 0; i < 4; ++i) bytes[at + i] = static_cast<std::uint8_t>(value >> (24 - 8 * i));
}

TEST_F(ImageDecodeErrors, AbsurdDimensionsAreRejectedBeforeAllocating) {
  Bytes jpeg = fixture_bytes(0);
  const std::array<std::uint8_t, 2> start_of_frame{0xFF, 0xC0};
  const auto sof = std::search(jpeg.begin(), jpeg.end(), start_of_frame.begin(), start_of_frame.end());
  ASSERT_NE(sof, jpeg.end());
  for (int field : {5, 7}) {  // height and width: 40000 (libjpeg itself stops at 65500)
    sof[field] = 0x9C;
    sof[field + 1] = 0x40;
  }
  expect_rejected("huge.jpg", jpeg, "exceed");

  Bytes png = fixture_bytes(10);
  write_be32(png, 16, 100000);  // width
  write_be32(png, 20, 100000);  // height
  write_be32(png, 29, static_cast<std::uint32_t>(crc32(0, png.data() + 12, 17)));  // IHDR CRC
  expect_rejected("huge.png", png, "exceed");
}

}  // namespace
}  // namespace clipdissect
