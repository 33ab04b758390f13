// PNG decoding with libpng, reproducing PIL's PngImagePlugin + convert('RGB').
//
// PIL ignores gamma, colour profiles and transparency when converting to RGB. Per PNG type it does:
//   gray 1/2/4/8 bit -> modes 1/L (values scaled to 0..255), replicated;   gray 16 bit -> mode I, CLAMPED to 255;
//   gray+alpha -> LA (16 bit: high byte), alpha dropped;   RGB(A) -> high byte of 16-bit samples, alpha dropped;
//   palette -> indices looked up in a 256-entry palette whose entries beyond PLTE stay a gray ramp.
#include <algorithm>
#include <array>
#include <climits>
#include <csetjmp>
#include <cstdio>
#include <cstring>

#include <png.h>

#include "clipdissect/error.h"
#include "io/image_decoders.h"

namespace clipdissect::detail {
namespace {

struct PngInput {
  std::span<const std::uint8_t> data;
  std::size_t offset = 0;
  char message[256] = {};
};

// libpng's error handler must not return: it longjmps back into run_guarded.
[[noreturn]] void on_png_error(png_structp png, png_const_charp message) {
  auto* input = static_cast<PngInput*>(png_get_error_ptr(png));
  std::snprintf(input->message, sizeof input->message, "%s", message);
  png_longjmp(png, 1);
}

void ignore_png_warning(png_structp, png_const_charp) {}

void read_png_bytes(png_structp png, png_bytep out, std::size_t length) {
  auto* input = static_cast<PngInput*>(png_get_io_ptr(png));
  if (length > input->data.size() - input->offset) png_error(png, "the file is truncated");
  std::memcpy(out, input->data.data() + input->offset, length);
  input->offset += length;
}

// Owns a libpng reader over a memory buffer.
class PngReader {
 public:
  explicit PngReader(std::span<const std::uint8_t> data) {
    input_.data = data;
    png_ = png_create_read_struct(PNG_LIBPNG_VER_STRING, &input_, on_png_error, ignore_png_warning);
    if (png_) info_ = png_create_info_struct(png_);
  }
  ~PngReader() { png_destroy_read_struct(&png_, &info_, nullptr); }
  PngReader(const PngReader&) = delete;
  PngReader& operator=(const PngReader&) = delete;

  bool ready() const { return png_ && info_; }

  // Runs libpng calls; returns false when libpng reported an error (see message()). `step` must not own
  // objects with destructors while it calls libpng, because an error unwinds it with longjmp.
  template <typename Step>
  bool run_guarded(Step&& step) {
    if (setjmp(png_jmpbuf(png_)) != 0) return false;
    step();
    return true;
  }

  png_structp png() const { return png_; }
  png_infop info() const { return info_; }
  const char* message() const { return input_.message; }
  PngInput& input() { return input_; }

 private:
  PngInput input_;
  png_structp png_ = nullptr;
  png_infop info_ = nullptr;
};

struct PngLayout {
  png_uint_32 width = 0;
  png_uint_32 height = 0;
  int color_type = 0;
  int bit_depth = 0;
  int channels = 0;  // samples per pixel after the transforms requested by request_transforms
  std::size_t row_bytes = 0;
};

// Asks libpng for one byte per sample (palette indices unpacked, low gray depths scaled up, 16-bit samples
// reduced to their high byte) except 16-bit gray, which stays 16 bit so that it can be clamped like PIL does.
void request_transforms(png_structp png, const PngLayout& layout) {
  if (layout.color_type == PNG_COLOR_TYPE_PALETTE) png_set_packing(png);
  if (layout.color_type == PNG_COLOR_TYPE_GRAY && layout.bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (layout.bit_depth == 16 && layout.color_type != PNG_COLOR_TYPE_GRAY) png_set_strip_16(png);
  png_set_interlace_handling(png);
}

PngLayout read_layout(PngReader& reader, const std::filesystem::path& name) {
  png_structp png = reader.png();
  png_infop info = reader.info();
  PngLayout layout;
  const bool header_read = reader.run_guarded([&] {
    png_set_read_fn(png, &reader.input(), read_png_bytes);
    png_set_user_limits(png, INT_MAX, INT_MAX);  // check_image_size applies PIL's limit instead
    // PIL verifies the CRC of every chunk before the image data but never the CRC of IDAT chunks.
    png_set_crc_action(png, PNG_CRC_DEFAULT, PNG_CRC_ERROR_QUIT);
    png_read_info(png, info);
    png_set_crc_action(png, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE);
    layout.width = png_get_image_width(png, info);
    layout.height = png_get_image_height(png, info);
    layout.color_type = png_get_color_type(png, info);
    layout.bit_depth = png_get_bit_depth(png, info);
  });
  if (!header_read) fail_decode(name, fmt::format("invalid PNG: {}", reader.message()));
  check_image_size(layout.width, layout.height, name);
  const bool transforms_set = reader.run_guarded([&] {
    request_transforms(png, layout);
    png_read_update_info(png, info);
    layout.channels = png_get_channels(png, info);
    layout.row_bytes = png_get_rowbytes(png, info);
  });
  if (!transforms_set) fail_decode(name, fmt::format("invalid PNG: {}", reader.message()));
  return layout;
}

// All rows after libpng's transforms, de-interlaced.
std::vector<std::uint8_t> read_samples(PngReader& reader, const PngLayout& layout,
                                       const std::filesystem::path& name) {
  std::vector<std::uint8_t> samples(layout.row_bytes * layout.height);
  std::vector<png_bytep> rows(layout.height);
  for (png_uint_32 y = 0; y < layout.height; ++y) rows[y] = samples.data() + y * layout.row_bytes;
  if (!reader.run_guarded([&] { png_read_image(reader.png(), rows.data()); })) {
    fail_decode(name, fmt::format("invalid PNG: {}", reader.message()));
  }
  return samples;
}

using Palette = std::array<std::array<std::uint8_t, 3>, 256>;

Palette read_palette(png_structp png, png_infop info) {
  Palette palette;
  for (int i = 0; i < 256; ++i) palette[i].fill(static_cast<std::uint8_t>(i));
  png_colorp entries = nullptr;
  int count = 0;
  if (png_get_PLTE(png, info, &entries, &count) != 0) {
    for (int i = 0; i < std::min(count, 256); ++i) palette[i] = {entries[i].red, entries[i].green, entries[i].blue};
  }
  return palette;
}

void convert_row(const std::uint8_t* in, std::uint8_t* out, int width, const PngLayout& layout,
                 const Palette& palette) {
  if (layout.color_type == PNG_COLOR_TYPE_PALETTE) {
    for (int x = 0; x < width; ++x, out += 3) std::memcpy(out, palette[in[x]].data(), 3);
  } else if (layout.color_type == PNG_COLOR_TYPE_GRAY && layout.bit_depth == 16) {
    for (int x = 0; x < width; ++x, in += 2, out += 3) {
      const int value = (in[0] << 8) | in[1];
      std::fill_n(out, 3, static_cast<std::uint8_t>(std::min(value, 255)));
    }
  } else if (layout.channels <= 2) {  // gray, gray + alpha
    for (int x = 0; x < width; ++x, in += layout.channels, out += 3) std::fill_n(out, 3, in[0]);
  } else {  // RGB, RGBA
    for (int x = 0; x < width; ++x, in += layout.channels, out += 3) std::memcpy(out, in, 3);
  }
}

}  // namespace

RgbImage decode_png(std::span<const std::uint8_t> data, const std::filesystem::path& name) {
  PngReader reader(data);
  if (!reader.ready()) fail_decode(name, "libpng could not be initialised");
  const PngLayout layout = read_layout(reader, name);
  const std::vector<std::uint8_t> samples = read_samples(reader, layout, name);
  const Palette palette = read_palette(reader.png(), reader.info());

  RgbImage image;
  image.width = static_cast<int>(layout.width);
  image.height = static_cast<int>(layout.height);
  const std::size_t stride = static_cast<std::size_t>(layout.width) * 3;
  image.pixels.resize(stride * layout.height);
  for (png_uint_32 y = 0; y < layout.height; ++y) {
    convert_row(samples.data() + y * layout.row_bytes, image.pixels.data() + y * stride, image.width, layout,
                palette);
  }
  return image;
}

}  // namespace clipdissect::detail
