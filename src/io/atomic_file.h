// Writing a whole file so that readers see the old content or the new one, never a part: a unique
// temporary file in the same folder, written, fsynced and renamed over the destination.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <string_view>

namespace clipdissect {

// Writes the concatenation of `parts` to `path`. sync = false skips the fsyncs: readers and a killed
// process still see all or nothing, but after a power loss the file may be empty; for the many small
// files whose readers check them before reuse.
void write_file_atomically(const std::filesystem::path& path, std::span<const std::span<const std::byte>> parts,
                           bool sync = true);
void write_file_atomically(const std::filesystem::path& path, std::string_view content, bool sync = true);

// Creates `folder` if needed and checks that files can be created in it; `role` names it in the error.
void check_writable_folder(const std::filesystem::path& folder, std::string_view role);

}  // namespace clipdissect
