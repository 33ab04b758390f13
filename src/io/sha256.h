// SHA-256 (OpenSSL) of bytes and files, as lowercase hex.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

namespace clipdissect {

std::string sha256_hex(std::string_view bytes);
// A file's content; for a folder (a transformers checkpoint), its regular files' names and contents.
std::string sha256_file(const std::filesystem::path& path);

}  // namespace clipdissect
