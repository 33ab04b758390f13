#include "clipdissect/probe.h"

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <sstream>

#include "clipdissect/error.h"
#include "io/cifar.h"

namespace clipdissect {

namespace fs = std::filesystem;

bool has_image_extension(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const char* known : {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})
    if (ext == known) return true;
  return false;
}

std::string file_fingerprint(const fs::path& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) return path.string() + " missing\n";
  return fmt::format("{} {} {}.{:09}\n", path.string(), info.st_size, info.st_mtim.tv_sec, info.st_mtim.tv_nsec);
}

namespace {

std::vector<fs::path> sorted_entries(const fs::path& folder, bool directories) {
  std::vector<fs::path> entries;
  for (const fs::directory_entry& entry : fs::directory_iterator(folder)) {
    const bool is_dir = entry.is_directory();
    if (is_dir == directories && (is_dir || has_image_extension(entry.path()))) entries.push_back(entry.path());
  }
  // Byte-wise, as Python sorts str.
  std::sort(entries.begin(), entries.end(),
            [](const fs::path& a, const fs::path& b) { return a.filename().string() < b.filename().string(); });
  return entries;
}

// ImageFolder walks each class with sorted(os.walk(folder)): every folder of the tree ordered by its full
// path string ("a b" sorts before "a/x"), each contributing its files sorted by name.
void walk_sorted(const fs::path& folder, std::vector<fs::path>& out) {
  std::vector<fs::path> folders{folder};
  for (const auto& entry : fs::recursive_directory_iterator(folder, fs::directory_options::follow_directory_symlink))
    if (entry.is_directory()) folders.push_back(entry.path());
  std::sort(folders.begin(), folders.end(),
            [](const fs::path& a, const fs::path& b) { return a.string() < b.string(); });
  for (const fs::path& sub : folders) {
    const std::vector<fs::path> files = sorted_entries(sub, false);
    out.insert(out.end(), files.begin(), files.end());
  }
}

std::vector<fs::path> read_list(const fs::path& list) {
  std::ifstream in(list);
  if (!in) fail("{}: cannot read the image list", list.string());
  std::vector<fs::path> paths;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    fs::path path(line);
    paths.push_back(path.is_relative() ? list.parent_path() / path : path);
  }
  if (paths.empty()) fail("{}: the image list is empty", list.string());
  return paths;
}

// Broden's index.csv: a header whose first column is "image", then one row per image, relative to images/.
std::vector<fs::path> read_broden_index(const fs::path& folder) {
  const fs::path index = folder / "index.csv";
  std::ifstream in(index);
  if (!in) fail("{}: cannot read the Broden index", index.string());
  std::string line;
  if (!std::getline(in, line) || line.rfind("image,", 0) != 0)
    fail("{}: expected a header starting with 'image,'", index.string());
  std::vector<fs::path> paths;
  while (std::getline(in, line)) {
    const std::string image = line.substr(0, line.find(','));
    if (!image.empty()) paths.push_back(folder / "images" / image);
  }
  if (paths.empty()) fail("{}: no images listed", index.string());
  return paths;
}

class FileSource final : public ProbeSource {
 public:
  explicit FileSource(std::vector<fs::path> paths) : paths_(std::move(paths)) {}
  std::size_t size() const override { return paths_.size(); }
  std::string name(std::size_t index) const override { return paths_.at(index).string(); }
  RgbImage load(std::size_t index) const override { return decode_image_file(paths_.at(index)); }
  std::string fingerprint() const override {
    std::string text;
    for (const fs::path& p : paths_) text += file_fingerprint(p);
    return text;
  }

 private:
  std::vector<fs::path> paths_;
};

}  // namespace

std::vector<fs::path> list_images(const fs::path& folder_or_list) {
  if (!fs::exists(folder_or_list)) fail("{}: no such image folder or list", folder_or_list.string());
  if (!fs::is_directory(folder_or_list)) return read_list(folder_or_list);
  std::vector<fs::path> images;
  const std::vector<fs::path> classes = sorted_entries(folder_or_list, true);
  if (classes.empty()) images = sorted_entries(folder_or_list, false);
  for (const fs::path& cls : classes) walk_sorted(cls, images);
  if (images.empty()) fail("{}: no images found (extensions .jpg .jpeg .png ...)", folder_or_list.string());
  return images;
}

ProbeSet ProbeSet::open(const fs::path& path) {
  if (path.extension() == ".zip")
    fail("{}: a zip archive; extract it (e.g. `unzip {}`) and pass the extracted folder as the probe set",
         path.string(), path.filename().string());
  ProbeSet set;
  std::shared_ptr<const ProbeSource> source;
  if (auto cifar = open_cifar100(path)) source = std::move(cifar);
  else if (fs::is_directory(path) && fs::exists(path / "index.csv") && fs::is_directory(path / "images"))
    source = std::make_shared<FileSource>(read_broden_index(path));
  else
    source = std::make_shared<FileSource>(list_images(path));
  set.sources_.push_back(source);
  set.offsets_.push_back(source->size());
  return set;
}

ProbeSet ProbeSet::join(const std::vector<ProbeSet>& sets) {
  ProbeSet joined;
  for (const ProbeSet& set : sets)
    for (const auto& source : set.sources_) {
      joined.sources_.push_back(source);
      joined.offsets_.push_back(joined.size() + source->size());
    }
  return joined;
}

std::pair<const ProbeSource*, std::size_t> ProbeSet::locate(std::size_t index) const {
  const auto it = std::upper_bound(offsets_.begin(), offsets_.end(), index);
  if (it == offsets_.end()) fail("probe image {} out of range ({} images)", index, size());
  const std::size_t source = it - offsets_.begin();
  return {sources_[source].get(), index - (source == 0 ? 0 : offsets_[source - 1])};
}

std::string ProbeSet::name(std::size_t index) const {
  const auto [source, local] = locate(index);
  return source->name(local);
}

RgbImage ProbeSet::load(std::size_t index) const {
  const auto [source, local] = locate(index);
  return source->load(local);
}

std::string ProbeSet::fingerprint() const {
  std::string text;
  for (const auto& source : sources_) text += source->fingerprint() + "--\n";
  return text;
}

PreprocessedBatch preprocess_batch(const ProbeSet& probe, std::size_t first, std::size_t count,
                                   std::span<const Preprocess> preprocesses, const MakeHostBuffer& make_buffer) {
  // Image i writes straight into slot i of each output; an image that fails leaves its slots to be closed up.
  PreprocessedBatch batch;
  std::vector<std::size_t> floats_per_image;
  for (const Preprocess& preprocess : preprocesses) {
    floats_per_image.push_back(static_cast<std::size_t>(3) * preprocess.crop * preprocess.crop);
    batch.pixels.push_back(make_buffer(count * floats_per_image.back()));
  }
  const auto slot = [&](std::size_t p, std::size_t i) {
    return std::span<float>(batch.pixels[p]).subspan(i * floats_per_image[p], floats_per_image[p]);
  };
  std::vector<std::optional<std::string>> errors(count);
#pragma omp parallel for schedule(dynamic)
  for (std::size_t i = 0; i < count; ++i) {
    try {
      const RgbImage image = probe.load(first + i);
      for (std::size_t p = 0; p < preprocesses.size(); ++p)
        normalize_to_chw(apply_geometry(image, preprocesses[p]), preprocesses[p], slot(p, i));
    } catch (const std::exception& e) {
      errors[i] = e.what();
    }
  }
  for (std::size_t i = 0; i < count; ++i) {
    if (errors[i]) {
      batch.failures.emplace_back(first + i, std::move(*errors[i]));
      continue;
    }
    const std::size_t kept = batch.images.size();
    if (kept != i)
      for (std::size_t p = 0; p < preprocesses.size(); ++p) std::ranges::copy(slot(p, i), slot(p, kept).begin());
    batch.images.push_back(first + i);
  }
  for (std::size_t p = 0; p < preprocesses.size(); ++p)
    batch.pixels[p].shrink(batch.images.size() * floats_per_image[p]);
  return batch;
}

}  // namespace clipdissect
