// JPEG decoding with libjpeg(-turbo), reproducing PIL's JpegImagePlugin + convert('RGB'), and encoding.
//
// PIL keeps libjpeg's defaults (JDCT_ISLOW, fancy upsampling) and lets libjpeg convert grayscale and YCbCr;
// four-component JPEGs are read as Adobe-style inverted CMYK ("CMYK;I") and converted with Pillow's cmyk2rgb.
#include <algorithm>
#include <csetjmp>
#include <cstdio>  // jpeglib.h needs FILE and size_t declared first
#include <cstdlib>
#include <vector>

#include <jerror.h>
#include <jpeglib.h>

#include "clipdissect/error.h"
#include "io/image_decoders.h"

namespace clipdissect::detail {
namespace {

// libjpeg's error handler must not return: it longjmps back into run_guarded.
struct JpegErrorManager {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void on_jpeg_error(j_common_ptr cinfo) {
  auto* manager = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  cinfo->err->format_message(cinfo, manager->message);
  std::longjmp(manager->jump, 1);
}

// PIL ignores libjpeg's warnings (corrupt data is decoded as well as possible) except running out of data,
// which it reports as a truncated file.
void on_jpeg_message(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) on_jpeg_error(cinfo);
}

// Pillow's MULDIV255: a * b / 255 rounded, in integers.
int muldiv255(int a, int b) {
  const int product = a * b + 128;
  return ((product >> 8) + product) >> 8;
}

// libjpeg's raw Adobe CMYK -> PIL "CMYK;I" (inverted) -> Pillow's cmyk2rgb.
void adobe_cmyk_row_to_rgb(const std::uint8_t* cmyk, std::uint8_t* rgb, int width) {
  for (int x = 0; x < width; ++x, cmyk += 4, rgb += 3) {
    const int not_k = cmyk[3];  // 255 - inverted K
    for (int c = 0; c < 3; ++c) {
      rgb[c] = static_cast<std::uint8_t>(std::clamp(not_k - muldiv255(255 - cmyk[c], not_k), 0, 255));
    }
  }
}

// Runs libjpeg calls; returns false when libjpeg reported an error (in errors.message). `step` must not own
// objects with destructors while it calls libjpeg, because an error unwinds it with longjmp.
template <typename Step>
bool run_guarded(JpegErrorManager& errors, Step&& step) {
  if (setjmp(errors.jump) != 0) return false;
  step();
  return true;
}

// Owns a libjpeg decompressor reading from memory.
class JpegReader {
 public:
  JpegReader() {
    cinfo_.err = jpeg_std_error(&errors_.pub);
    errors_.pub.error_exit = on_jpeg_error;
    errors_.pub.emit_message = on_jpeg_message;
    errors_.message[0] = '\0';
  }
  ~JpegReader() {
    if (created_) jpeg_destroy_decompress(&cinfo_);
  }
  JpegReader(const JpegReader&) = delete;
  JpegReader& operator=(const JpegReader&) = delete;

  bool read_header(std::span<const std::uint8_t> data) {
    return run_guarded(errors_, [&] {
      jpeg_create_decompress(&cinfo_);
      created_ = true;
      jpeg_mem_src(&cinfo_, data.data(), static_cast<unsigned long>(data.size()));
      jpeg_read_header(&cinfo_, TRUE);
    });
  }

  // Decodes all scanlines into `image` (already sized); CMYK rows go through a conversion buffer.
  bool read_pixels(RgbImage& image, bool cmyk) {
    std::vector<std::uint8_t> cmyk_row(cmyk ? static_cast<std::size_t>(image.width) * 4 : 0);
    const std::size_t stride = static_cast<std::size_t>(image.width) * 3;
    return run_guarded(errors_, [&] {
      jpeg_start_decompress(&cinfo_);
      while (cinfo_.output_scanline < cinfo_.output_height) {
        std::uint8_t* const out = image.pixels.data() + cinfo_.output_scanline * stride;
        JSAMPROW row = cmyk ? cmyk_row.data() : out;
        jpeg_read_scanlines(&cinfo_, &row, 1);
        if (cmyk) adobe_cmyk_row_to_rgb(cmyk_row.data(), out, image.width);
      }
      // jpeg_finish_decompress is skipped on purpose: like PIL, data after the last scanline (even a missing
      // EOI marker) does not matter.
    });
  }

  jpeg_decompress_struct& cinfo() { return cinfo_; }
  const char* message() const { return errors_.message; }

 private:
  jpeg_decompress_struct cinfo_{};
  JpegErrorManager errors_{};
  bool created_ = false;
};

}  // namespace

RgbImage decode_jpeg(std::span<const std::uint8_t> data, const std::filesystem::path& name) {
  JpegReader reader;
  if (!reader.read_header(data)) fail_decode(name, fmt::format("invalid JPEG: {}", reader.message()));
  jpeg_decompress_struct& cinfo = reader.cinfo();
  check_image_size(cinfo.image_width, cinfo.image_height, name);
  const int components = cinfo.num_components;
  if (components != 1 && components != 3 && components != 4) {
    fail_decode(name, fmt::format("cannot handle {}-component JPEG (expected 1, 3 or 4)", components));
  }
  const bool cmyk = components == 4;
  cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;  // grayscale -> RGB replicates, as PIL's L -> RGB

  RgbImage image;
  image.width = static_cast<int>(cinfo.image_width);
  image.height = static_cast<int>(cinfo.image_height);
  image.pixels.resize(static_cast<std::size_t>(image.width) * image.height * 3);
  if (!reader.read_pixels(image, cmyk)) fail_decode(name, fmt::format("invalid JPEG: {}", reader.message()));
  return image;
}

}  // namespace clipdissect::detail

namespace clipdissect {

std::vector<std::uint8_t> encode_jpeg(const RgbImage& image, int quality) {
  const std::size_t stride = static_cast<std::size_t>(std::max(image.width, 0)) * 3;
  if (image.width <= 0 || image.height <= 0 || image.pixels.size() != stride * image.height) {
    fail("cannot encode a {}x{} image with {} bytes of pixels as JPEG", image.width, image.height, image.pixels.size());
  }
  detail::JpegErrorManager errors{};
  jpeg_compress_struct cinfo{};
  cinfo.err = jpeg_std_error(&errors.pub);
  errors.pub.error_exit = detail::on_jpeg_error;
  unsigned char* buffer = nullptr;  // grown by libjpeg with malloc
  unsigned long size = 0;
  const bool encoded = detail::run_guarded(errors, [&] {
    jpeg_create_compress(&cinfo);
    jpeg_mem_dest(&cinfo, &buffer, &size);
    cinfo.image_width = static_cast<JDIMENSION>(image.width);
    cinfo.image_height = static_cast<JDIMENSION>(image.height);
    cinfo.input_components = 3;
    cinfo.in_color_space = JCS_RGB;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, quality, TRUE);
    cinfo.optimize_coding = TRUE;  // a few percent smaller for small images, at no visible cost
    jpeg_start_compress(&cinfo, TRUE);
    while (cinfo.next_scanline < cinfo.image_height) {
      JSAMPROW row = const_cast<std::uint8_t*>(image.pixels.data() + cinfo.next_scanline * stride);
      jpeg_write_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_compress(&cinfo);
  });
  std::vector<std::uint8_t> bytes;
  if (encoded) bytes.assign(buffer, buffer + size);
  jpeg_destroy_compress(&cinfo);
  std::free(buffer);
  if (!encoded) fail("cannot encode a {}x{} image as JPEG: {}", image.width, image.height, errors.message);
  return bytes;
}

}  // namespace clipdissect
