// Probe images: listing them in the reference's order and turning them into preprocessed batches.
#pragma once

#include <filesystem>
#include <span>
#include <vector>

#include "clipdissect/image.h"

namespace clipdissect {

// A folder: torchvision ImageFolder order when it has class sub-folders (classes sorted byte-wise,
// each class walked recursively, files sorted), else its image files sorted; a text file: one image
// path per line (relative paths resolved against the list's folder).
std::vector<std::filesystem::path> list_images(const std::filesystem::path& folder_or_list);

// True for the extensions torchvision's ImageFolder accepts (case-insensitive).
bool has_image_extension(const std::filesystem::path& path);

// Decodes and preprocesses images [begin, end) of `paths` in parallel into a [end - begin, 3, S, S] batch.
std::vector<float> preprocess_batch(std::span<const std::filesystem::path> paths, const Preprocess& preprocess);

}  // namespace clipdissect
