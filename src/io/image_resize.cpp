// Pillow 9.4's antialiased resampling (libImaging/Resample.c) for 8-bit RGB images, reproduced bit for bit:
// separable passes (horizontal, then vertical) with filter support widened by the downscale factor, weights
// normalised in double and then rounded to 22-bit fixed point, accumulation in int with a rounding bias.
#include <algorithm>
#include <cmath>
#include <limits>

#include "clipdissect/error.h"
#include "clipdissect/image.h"
#include "io/image_decoders.h"

namespace clipdissect {
namespace {

// 8 bits of result, 2 bits of headroom for overshooting (negative-lobed) filters.
constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr int kRoundingBias = 1 << (kPrecisionBits - 1);

double bilinear_filter(double x) {
  x = std::abs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

// Keys' cubic convolution with a = -0.5, written in Pillow's operation order so that doubles round alike.
double bicubic_filter(double x) {
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Fixed-point weights of one pass: output sample i reads `count[i]` input samples from `first[i]` on.
struct PassCoefficients {
  int taps = 0;  // stride of `weights`
  std::vector<int> first;
  std::vector<int> count;
  std::vector<std::int32_t> weights;
};

std::int32_t to_fixed_point(double weight) {
  const double scaled = weight * (1 << kPrecisionBits);
  return static_cast<std::int32_t>(weight < 0 ? scaled - 0.5 : scaled + 0.5);
}

// Pillow's precompute_coeffs followed by normalize_coeffs_8bpc, for output samples [begin, end) of `out_size`:
// each sample's weights depend only on its own position.
PassCoefficients compute_coefficients(int in_size, int out_size, ResizeFilter filter, int begin, int end) {
  const bool bicubic = filter == ResizeFilter::Bicubic;
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = (bicubic ? 2.0 : 1.0) * filter_scale;
  const double inverse_filter_scale = 1.0 / filter_scale;  // Pillow multiplies by the reciprocal

  PassCoefficients pass;
  pass.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  pass.first.resize(end - begin);
  pass.count.resize(end - begin);
  pass.weights.assign(static_cast<std::size_t>(end - begin) * pass.taps, 0);
  std::vector<double> weights(pass.taps);
  for (int out = begin; out < end; ++out) {
    const double center = (out + 0.5) * scale;
    const int first = std::max(static_cast<int>(center - support + 0.5), 0);
    const int count = std::min(static_cast<int>(center + support + 0.5), in_size) - first;
    double total = 0.0;
    for (int i = 0; i < count; ++i) {
      const double x = (i + first - center + 0.5) * inverse_filter_scale;
      weights[i] = bicubic ? bicubic_filter(x) : bilinear_filter(x);
      total += weights[i];
    }
    std::int32_t* fixed = &pass.weights[static_cast<std::size_t>(out - begin) * pass.taps];
    for (int i = 0; i < count; ++i) fixed[i] = to_fixed_point(total != 0.0 ? weights[i] / total : weights[i]);
    pass.first[out - begin] = first;
    pass.count[out - begin] = std::max(count, 0);
  }
  return pass;
}

std::uint8_t clip8(std::int32_t accumulator) {
  return static_cast<std::uint8_t>(std::clamp(accumulator >> kPrecisionBits, 0, 255));
}

// Rows that the horizontal pass resamples together.
constexpr int kRowBlock = 8;

// Resamples rows [row_begin, row_end) of `source` horizontally. The rows go through in blocks of kRowBlock,
// each held column by column ([column][channel][row], int32) so that one weight multiplies the same sample of
// every row of the block at once: loops the compiler vectorises, with the same exact integer sums.
// The AVX2 clone has 8-lane 32-bit multiplies, which SSE2 lacks.
__attribute__((target_clones("avx2", "default"))) RgbImage resample_horizontal(const RgbImage& source,
                                                                                int row_begin, int row_end,
                                                                                const PassCoefficients& pass) {
  constexpr int kLanes = 3 * kRowBlock;
  RgbImage out;
  out.width = static_cast<int>(pass.first.size());
  out.height = row_end - row_begin;
  out.pixels.resize(static_cast<std::size_t>(out.width) * out.height * 3);
  // The source columns the pass reads.
  const int column_begin = pass.first.front(), column_end = pass.first.back() + pass.count.back();
  std::vector<std::int32_t> block(static_cast<std::size_t>(column_end - column_begin) * kLanes);
  for (int y0 = row_begin; y0 < row_end; y0 += kRowBlock) {
    const int rows = std::min(kRowBlock, row_end - y0);
    const std::uint8_t* row[kRowBlock];
    for (int r = 0; r < kRowBlock; ++r) {  // a partial block repeats its last row
      const std::size_t y = static_cast<std::size_t>(y0 + std::min(r, rows - 1));
      row[r] = source.pixels.data() + (y * source.width + column_begin) * 3;
    }
    for (int x = 0; x < column_end - column_begin; ++x)
      for (int c = 0; c < 3; ++c)
        for (int r = 0; r < kRowBlock; ++r)
          block[static_cast<std::size_t>(x) * kLanes + c * kRowBlock + r] = row[r][x * 3 + c];
    for (int x = 0; x < out.width; ++x) {
      std::int32_t sums[kLanes];
      std::fill(std::begin(sums), std::end(sums), kRoundingBias);
      const std::int32_t* weights = &pass.weights[static_cast<std::size_t>(x) * pass.taps];
      const std::int32_t* column = block.data() + static_cast<std::size_t>(pass.first[x] - column_begin) * kLanes;
      for (int i = 0; i < pass.count[x]; ++i, column += kLanes)
        for (int lane = 0; lane < kLanes; ++lane) sums[lane] += column[lane] * weights[i];
      std::uint8_t bytes[kLanes];
      for (int lane = 0; lane < kLanes; ++lane) bytes[lane] = clip8(sums[lane]);
      for (int r = 0; r < rows; ++r) {
        std::uint8_t* dst = out.pixels.data() + (static_cast<std::size_t>(y0 - row_begin + r) * out.width + x) * 3;
        for (int c = 0; c < 3; ++c) dst[c] = bytes[c * kRowBlock + r];
      }
    }
  }
  return out;
}

// Resamples vertically; `source` row 0 is input row `row_offset` (rows before it were not needed).
__attribute__((target_clones("avx2", "default"))) RgbImage resample_vertical(const RgbImage& source, int row_offset,
                                                                              const PassCoefficients& pass) {
  RgbImage out;
  out.width = source.width;
  out.height = static_cast<int>(pass.first.size());
  const std::size_t stride = static_cast<std::size_t>(source.width) * 3;
  out.pixels.resize(stride * out.height);
  // Integer sums are exact, so accumulating row by row (cache friendly) equals Pillow's column-wise order.
  std::vector<std::int32_t> sums(stride);
  for (int y = 0; y < out.height; ++y) {
    std::fill(sums.begin(), sums.end(), kRoundingBias);
    const std::int32_t* weights = &pass.weights[static_cast<std::size_t>(y) * pass.taps];
    for (int i = 0; i < pass.count[y]; ++i) {
      const std::uint8_t* row = source.pixels.data() + (pass.first[y] - row_offset + i) * stride;
      for (std::size_t j = 0; j < stride; ++j) sums[j] += row[j] * weights[i];
    }
    std::transform(sums.begin(), sums.end(), out.pixels.begin() + y * stride, clip8);
  }
  return out;
}

void check_resize_arguments(const RgbImage& image, int width, int height, const PixelWindow& window) {
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != static_cast<std::size_t>(image.width) * image.height * 3) {
    fail("resize: invalid source image {}x{} with {} bytes (expected width * height * 3)", image.width,
         image.height, image.pixels.size());
  }
  if (width <= 0 || height <= 0 ||
      static_cast<std::uint64_t>(width) * static_cast<std::uint64_t>(height) > detail::kMaxImagePixels) {
    fail("resize: invalid target size {}x{} (expected positive, at most {} pixels)", width, height,
         detail::kMaxImagePixels);
  }
  if (window.left < 0 || window.top < 0 || window.width <= 0 || window.height <= 0 ||
      window.width > width - window.left || window.height > height - window.top) {
    fail("resize: window {}x{} at ({}, {}) is not a non-empty part of the {}x{} output", window.width, window.height,
         window.left, window.top, width, height);
  }
}

// Columns [left, left + width) of rows [row_begin, row_end).
RgbImage copy_columns(const RgbImage& image, int row_begin, int row_end, int left, int width) {
  RgbImage out;
  out.width = width;
  out.height = row_end - row_begin;
  out.pixels.resize(static_cast<std::size_t>(width) * out.height * 3);
  for (int y = row_begin; y < row_end; ++y) {
    std::copy_n(image.pixels.begin() + (static_cast<std::size_t>(y) * image.width + left) * 3,
                static_cast<std::size_t>(width) * 3,
                out.pixels.begin() + static_cast<std::size_t>(y - row_begin) * width * 3);
  }
  return out;
}

}  // namespace

RgbImage resize_window(const RgbImage& image, int width, int height, ResizeFilter filter, const PixelWindow& window) {
  check_resize_arguments(image, width, height, window);
  // Pillow skips the pass of an axis whose size does not change.
  const bool horizontal = width != image.width, vertical = height != image.height;
  int row_begin = window.top, row_end = window.top + window.height;
  PassCoefficients rows_pass;
  if (vertical) {
    rows_pass = compute_coefficients(image.height, height, filter, window.top, window.top + window.height);
    // Only the source rows that the vertical pass reads go through the horizontal pass.
    row_begin = rows_pass.first.front();
    row_end = rows_pass.first.back() + rows_pass.count.back();
  }
  RgbImage columns_done =
      horizontal ? resample_horizontal(image, row_begin, row_end,
                                       compute_coefficients(image.width, width, filter, window.left,
                                                            window.left + window.width))
                 : copy_columns(image, row_begin, row_end, window.left, window.width);
  return vertical ? resample_vertical(columns_done, row_begin, rows_pass) : columns_done;
}

RgbImage resize(const RgbImage& image, int width, int height, ResizeFilter filter) {
  return resize_window(image, width, height, filter, PixelWindow{0, 0, width, height});
}

std::pair<int, int> shorter_side_size(const RgbImage& image, int size) {
  if (size <= 0) fail("resize: shorter side must be positive, got {}", size);
  const bool portrait = image.width <= image.height;
  const int shorter = portrait ? image.width : image.height;
  const int longer = portrait ? image.height : image.width;
  if (shorter <= 0) fail("resize: invalid source image {}x{}", image.width, image.height);
  // torchvision: int(size * long / short), a float division then truncation.
  const double exact_longer = static_cast<double>(static_cast<std::int64_t>(size) * longer) / shorter;
  if (exact_longer > std::numeric_limits<int>::max()) {
    fail("resize: {}x{} scaled to a shorter side of {} is too large", image.width, image.height, size);
  }
  const int new_longer = static_cast<int>(exact_longer);
  return portrait ? std::pair{size, new_longer} : std::pair{new_longer, size};
}

RgbImage resize_shorter_side(const RgbImage& image, int size, ResizeFilter filter) {
  const auto [width, height] = shorter_side_size(image, size);
  return resize(image, width, height, filter);
}

}  // namespace clipdissect
