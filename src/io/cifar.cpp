// CIFAR-100 as torchvision's datasets.CIFAR100 serves it: 32x32 RGB images in file order.
#include "io/cifar.h"

#include <fstream>
#include <optional>

#include "clipdissect/error.h"
#include "io/unpickler.h"

namespace clipdissect {

namespace fs = std::filesystem;

namespace {

constexpr std::size_t kSide = 32, kPlane = kSide * kSide, kPixels = 3 * kPlane;

// Images stored as planes (1024 R, 1024 G, 1024 B) in records of `stride` bytes, the planes `offset`
// bytes into each record.
class CifarSource final : public ProbeSource {
 public:
  CifarSource(fs::path file, std::vector<std::uint8_t> bytes, std::size_t offset, std::size_t stride)
      : file_(std::move(file)), bytes_(std::move(bytes)), offset_(offset), stride_(stride) {}

  std::size_t size() const override { return bytes_.size() / stride_; }
  std::string name(std::size_t index) const override { return fmt::format("{}#{}", file_.string(), index); }
  RgbImage load(std::size_t index) const override {
    if (index >= size()) fail("{}: image {} out of range", file_.string(), index);
    const std::uint8_t* planes = bytes_.data() + offset_ + index * stride_;
    RgbImage image{static_cast<int>(kSide), static_cast<int>(kSide), std::vector<std::uint8_t>(kPixels)};
    for (std::size_t p = 0; p < kPlane; ++p)
      for (std::size_t c = 0; c < 3; ++c) image.pixels[p * 3 + c] = planes[c * kPlane + p];
    return image;
  }
  std::string fingerprint() const override { return file_fingerprint(file_); }

 private:
  fs::path file_;
  std::vector<std::uint8_t> bytes_;
  std::size_t offset_, stride_;
};

std::vector<std::uint8_t> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot read", path.string());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Binary release: records of coarse label, fine label, then the 3072 pixel bytes.
std::shared_ptr<const ProbeSource> open_binary(const fs::path& file) {
  constexpr std::size_t kRecord = 2 + kPixels;
  std::vector<std::uint8_t> bytes = read_bytes(file);
  if (bytes.empty() || bytes.size() % kRecord != 0)
    fail("{}: {} bytes is not a whole number of CIFAR-100 records of {} bytes", file.string(), bytes.size(), kRecord);
  return std::make_shared<CifarSource>(file, std::move(bytes), 2, kRecord);
}

// Python release: a pickled dict whose 'data' is a numpy uint8 array [N, 3072], pickled as
// numpy.core.multiarray._reconstruct(...) with the BUILD state (version, shape, dtype, fortran, raw bytes).
// The numpy globals load as plain objects; nothing is called.
std::shared_ptr<const ProbeSource> open_python(const fs::path& file) {
  const std::vector<std::uint8_t> bytes = read_bytes(file);
  io::Unpickler unpickler(std::as_bytes(std::span(bytes)), file.string(), {},
                          {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"});
  const io::Value& root = unpickler.load();
  const io::Value* data = root.find("data");
  const auto bad = [&](std::string_view what) -> void {
    fail("{}: not a CIFAR-100 python split ({}); expected a pickled dict with a uint8 'data' array [N, 3072]",
         file.string(), what);
  };
  if (!data || data->kind != io::Kind::Object || !data->state || data->state->kind != io::Kind::Tuple ||
      data->state->items.size() != 5)
    bad("no 'data' array");
  const std::vector<io::Value*>& state = data->state->items;
  const io::Value& shape = *state[1];
  const io::Value& dtype = *state[2];
  const io::Value& raw = *state[4];
  if (shape.kind != io::Kind::Tuple || shape.items.size() != 2 || shape.items[1]->integer != kPixels)
    bad("'data' is not [N, 3072]");
  if (dtype.kind != io::Kind::Object || dtype.items.empty() || dtype.items[0]->text != "u1") bad("'data' is not uint8");
  if (state[3]->kind == io::Kind::Bool && state[3]->boolean) bad("'data' is Fortran-ordered");
  if ((raw.kind != io::Kind::String && raw.kind != io::Kind::Bytes) ||
      static_cast<std::int64_t>(raw.text.size()) != shape.items[0]->integer * static_cast<std::int64_t>(kPixels))
    bad("'data' has the wrong number of bytes");
  std::vector<std::uint8_t> pixels(raw.text.begin(), raw.text.end());
  return std::make_shared<CifarSource>(file, std::move(pixels), 0, kPixels);
}

// "<folder>:train" / "<folder>:test" -> the split file inside a release folder.
std::optional<fs::path> split_file(const fs::path& path) {
  const std::string text = path.string();
  for (const std::string split : {"train", "test"}) {
    const std::string suffix = ":" + split;
    if (text.size() <= suffix.size() || text.compare(text.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const fs::path folder = text.substr(0, text.size() - suffix.size());
    if (fs::exists(folder / (split + ".bin"))) return folder / (split + ".bin");
    if (fs::exists(folder / split)) return folder / split;
    fail("{}: no CIFAR-100 '{}' split (expected {} or {})", folder.string(), split, (folder / split).string(),
         (folder / (split + ".bin")).string());
  }
  return std::nullopt;
}

}  // namespace

std::shared_ptr<const ProbeSource> open_cifar100(const fs::path& path) {
  const fs::path file = split_file(path).value_or(path);
  if (!fs::is_regular_file(file)) return nullptr;
  const std::string name = file.filename().string();
  if (name == "train.bin" || name == "test.bin") return open_binary(file);
  if ((name == "train" || name == "test") && fs::exists(file.parent_path() / "meta")) return open_python(file);
  return nullptr;
}

}  // namespace clipdissect
