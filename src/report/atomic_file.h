// Writing a whole file so that readers see the old content or the new one, never a part.
#pragma once

#include <filesystem>
#include <string_view>

namespace clipdissect {

// Writes `content` to a temporary file in the same folder, fsyncs it and renames it over `path`.
void write_file_atomically(const std::filesystem::path& path, std::string_view content);

}  // namespace clipdissect
