#include "clipdissect/probe.h"

#include <algorithm>
#include <exception>
#include <fstream>

#include "clipdissect/error.h"

namespace clipdissect {

namespace fs = std::filesystem;

bool has_image_extension(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const char* known : {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})
    if (ext == known) return true;
  return false;
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
  return paths;
}

}  // namespace

std::vector<fs::path> list_images(const fs::path& folder_or_list) {
  if (!fs::exists(folder_or_list)) fail("{}: no such image folder or list", folder_or_list.string());
  if (!fs::is_directory(folder_or_list)) return read_list(folder_or_list);
  std::vector<fs::path> images;
  const std::vector<fs::path> classes = sorted_entries(folder_or_list, true);
  if (classes.empty()) return sorted_entries(folder_or_list, false);
  for (const fs::path& cls : classes) walk_sorted(cls, images);
  if (images.empty()) fail("{}: no images found (extensions .jpg .jpeg .png ...)", folder_or_list.string());
  return images;
}

std::vector<float> preprocess_batch(std::span<const fs::path> paths, const Preprocess& preprocess) {
  const std::size_t plane = static_cast<std::size_t>(3) * preprocess.crop * preprocess.crop;
  std::vector<float> batch(paths.size() * plane);
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic)
  for (std::size_t i = 0; i < paths.size(); ++i) {
    try {
      const RgbImage cropped = apply_geometry(decode_image_file(paths[i]), preprocess);
      normalize_to_chw(cropped, preprocess, std::span<float>(batch).subspan(i * plane, plane));
    } catch (...) {
#pragma omp critical
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
  return batch;
}

}  // namespace clipdissect
