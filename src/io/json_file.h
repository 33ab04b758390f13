// Small JSON settings files (model configs, tokenizer files) read with errors that name the file.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "clipdissect/error.h"

namespace clipdissect {

// Deepest nesting of arrays and objects accepted. Real configs and headers nest a few levels; nlohmann builds
// a document recursively, so a hostile one nested millions deep would exhaust memory (and the stack) first.
inline constexpr int kMaxJsonDepth = 64;

// Parses `text`; throws Error naming `source` when it is not JSON or nests deeper than kMaxJsonDepth, which
// is rejected as soon as the parser reaches that depth.
template <typename JsonType = nlohmann::json>
JsonType parse_json_text(std::string_view text, const std::string& source) {
  const typename JsonType::parser_callback_t limit_depth = [&](int depth, nlohmann::json::parse_event_t event,
                                                               JsonType&) {
    const bool opens = event == nlohmann::json::parse_event_t::object_start ||
                       event == nlohmann::json::parse_event_t::array_start;
    if (opens && depth >= kMaxJsonDepth) fail("{}: JSON nested deeper than {} levels", source, kMaxJsonDepth);
    return true;
  };
  JsonType json = JsonType::parse(text, limit_depth, /*allow_exceptions=*/false);
  if (json.is_discarded()) fail("{}: not valid JSON", source);
  return json;
}

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
