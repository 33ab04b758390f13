#include "io/json_file.h"

#include <fstream>

namespace clipdissect {

nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot read this file", path.string());
  nlohmann::json json = nlohmann::json::parse(in, nullptr, false);
  if (json.is_discarded()) fail("{}: not valid JSON", path.string());
  return json;
}

nlohmann::json read_json_object(const std::filesystem::path& path) {
  nlohmann::json json = read_json_file(path);
  if (!json.is_object()) fail("{}: expected a JSON object at the top level", path.string());
  return json;
}

}  // namespace clipdissect
