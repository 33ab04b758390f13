// The report's copies of the top images: small thumbnails for the cards and larger images for the viewer,
// so that the page depends neither on the original paths nor on the browser decoding CIFAR archives.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "clipdissect/image.h"

namespace clipdissect {

inline constexpr const char* kReportImagesFolder = "report_images";
inline constexpr int kThumbnailSide = 128, kThumbnailQuality = 80;
inline constexpr int kFullImageSide = 512, kFullImageQuality = 85;

// `image` scaled down (antialiased bicubic) so that its longer side is at most `side`; smaller images as they are.
RgbImage fit_within(const RgbImage& image, int side);

// True when `path` holds a whole JPEG (starts with SOI, ends with EOI).
bool is_complete_jpeg(const std::filesystem::path& path);

// The probe sets and listing checksum of a run, as run.json records them.
struct RunProbes {
  std::vector<std::filesystem::path> paths;
  std::string listing_sha256;
};

// Makes report_images/thumbs/<index>.jpg and report_images/full/<index>.jpg in `run_dir` for every probe
// index in `indices`, in parallel, each image decoded once. Complete files made for the same probe listing
// are kept; the probe sets are opened only when something is missing, and must still have the run's listing.
void write_report_images(const std::filesystem::path& run_dir, const std::vector<std::int64_t>& indices,
                         const RunProbes& probes);

}  // namespace clipdissect
