#include "report/thumbnails.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <string_view>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "clipdissect/error.h"
#include "clipdissect/probe.h"
#include "io/sha256.h"
#include "io/atomic_file.h"

namespace clipdissect {

namespace fs = std::filesystem;

namespace {

fs::path image_path(const fs::path& run_dir, const char* kind, std::int64_t index) {
  return run_dir / kReportImagesFolder / kind / fmt::format("{}.jpg", index);
}

// What the files in report_images were made from: when this changes they are made again.
std::string provenance(const RunProbes& probes) {
  return fmt::format("probe listing sha256 {}\nthumbnails {} px quality {}, full images {} px quality {}\n",
                     probes.listing_sha256, kThumbnailSide, kThumbnailQuality, kFullImageSide, kFullImageQuality);
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// "<digits>.jpg" or a temporary file of one: the names this code gives. Nothing else is ever removed.
bool is_made_image_name(std::string_view name) {
  const std::size_t digits = std::min(name.find_first_not_of("0123456789"), name.size());
  return digits > 0 && name.substr(digits).starts_with(".jpg") &&
         (name.size() == digits + 4 || name.substr(digits + 4).starts_with(".tmp-"));
}

// Readies report_images for images made from `probes`, removing those made from anything else.
void prepare_folders(const fs::path& run_dir, const RunProbes& probes) {
  const fs::path root = run_dir / kReportImagesFolder, stamp = root / "made-from.txt";
  const std::string wanted = provenance(probes);
  for (const char* kind : {"thumbs", "full"}) fs::create_directories(root / kind);
  if (read_text(stamp) == wanted) return;
  for (const char* kind : {"thumbs", "full"})
    for (const fs::directory_entry& entry : fs::directory_iterator(root / kind))
      if (is_made_image_name(entry.path().filename().string())) fs::remove(entry.path());
  write_file_atomically(stamp, wanted);
}

// The run's probe sets, refusing them when their listing (paths, sizes, modification times) changed.
ProbeSet open_unchanged(const RunProbes& probes) {
  std::vector<ProbeSet> sets;
  for (const fs::path& path : probes.paths) sets.push_back(ProbeSet::open(path));
  ProbeSet probe = ProbeSet::join(sets);
  if (sha256_hex(probe.fingerprint()) != probes.listing_sha256) {
    std::vector<std::string> names;
    for (const fs::path& path : probes.paths) names.push_back(path.string());
    fail("{}: the probe images changed since the run (their listing's SHA-256 is not run.json's {}), so the "
         "report's missing thumbnails cannot be made from them; run describe again",
         fmt::join(names, ","), probes.listing_sha256);
  }
  return probe;
}

void write_jpeg(const fs::path& path, const RgbImage& image, int quality) {
  const std::vector<std::uint8_t> bytes = encode_jpeg(image, quality);
  // Without fsync: is_complete_jpeg checks every file before it is reused.
  write_file_atomically(path, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), false);
}

}  // namespace

RgbImage fit_within(const RgbImage& image, int side) {
  const int longer = std::max(image.width, image.height);
  if (longer <= side) return image;
  const double scale = static_cast<double>(side) / longer;
  const int width = std::max(1, static_cast<int>(std::lround(image.width * scale)));
  const int height = std::max(1, static_cast<int>(std::lround(image.height * scale)));
  return resize(image, width, height, ResizeFilter::Bicubic);
}

bool is_complete_jpeg(const fs::path& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in || in.tellg() < 4) return false;
  char end[2], start[2];
  in.seekg(-2, std::ios::end);
  in.read(end, 2);
  in.seekg(0);
  in.read(start, 2);
  return in && start[0] == '\xFF' && start[1] == '\xD8' && end[0] == '\xFF' && end[1] == '\xD9';
}

void write_report_images(const fs::path& run_dir, const std::vector<std::int64_t>& indices, const RunProbes& probes) {
  prepare_folders(run_dir, probes);
  std::vector<std::int64_t> missing;
  for (const std::int64_t index : indices)
    if (!is_complete_jpeg(image_path(run_dir, "thumbs", index)) || !is_complete_jpeg(image_path(run_dir, "full", index)))
      missing.push_back(index);
  if (missing.empty()) return;

  const ProbeSet probe = open_unchanged(probes);
  spdlog::info("report: making thumbnails of {} images", missing.size());
  std::vector<std::string> errors(missing.size());
#pragma omp parallel for schedule(dynamic)
  for (std::size_t i = 0; i < missing.size(); ++i) {
    try {
      // The thumbnail comes from the full copy: the same look for a fraction of the resampling work.
      const RgbImage full = fit_within(probe.load(static_cast<std::size_t>(missing[i])), kFullImageSide);
      write_jpeg(image_path(run_dir, "full", missing[i]), full, kFullImageQuality);
      write_jpeg(image_path(run_dir, "thumbs", missing[i]), fit_within(full, kThumbnailSide), kThumbnailQuality);
    } catch (const std::exception& e) {
      errors[i] = e.what();
    }
  }
  for (const std::string& error : errors)
    if (!error.empty()) fail("report: {}", error);
}

}  // namespace clipdissect
