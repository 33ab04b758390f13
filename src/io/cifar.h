// Probe sources that are archives rather than image files.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "clipdissect/probe.h"

namespace clipdissect {

// "path size mtime" line identifying a file's current content.
std::string file_fingerprint(const std::filesystem::path& path);

// CIFAR-100 (python or binary release) when `path` names one of its splits, else null.
std::shared_ptr<const ProbeSource> open_cifar100(const std::filesystem::path& path);

}  // namespace clipdissect
