// Small JSON settings files (model configs, tokenizer files) read with errors that name the file.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "clipdissect/error.h"

namespace clipdissect {

// The file's JSON value; throws Error when it cannot be read or is not JSON.
nlohmann::json read_json_file(const std::filesystem::path& path);
// Ditto, and the value must be an object.
nlohmann::json read_json_object(const std::filesystem::path& path);

// Runs `read()`, turning nlohmann's errors (a field of the wrong type, a missing key) into an Error naming
// the file.
template <typename Read>
auto with_json_errors(const std::filesystem::path& path, Read read) -> decltype(read()) {
  try {
    return read();
  } catch (const nlohmann::json::exception& e) {
    fail("{}: unexpected content: {}", path.string(), e.what());
  }
}

}  // namespace clipdissect
