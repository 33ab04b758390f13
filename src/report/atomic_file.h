// Writing a whole file so that readers see the old content or the new one, never a part.
#pragma once

#include <filesystem>
#include <string_view>

namespace clipdissect {

// Writes `content` to a temporary file in the same folder, fsyncs it and renames it over `path`.
// sync = false skips the fsync: readers and a killed process still see all or nothing, but after a power
// loss the file may be empty; for the many small files whose readers check them before reuse.
void write_file_atomically(const std::filesystem::path& path, std::string_view content, bool sync = true);

}  // namespace clipdissect
