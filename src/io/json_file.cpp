#include "io/json_file.h"

#include <fstream>
#include <iterator>

namespace clipdissect {

nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot read this file", path.string());
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  return parse_json_text(text, path.string());
}

nlohmann::json read_json_object(const std::filesystem::path& path) {
  nlohmann::json json = read_json_file(path);
  if (!json.is_object()) fail("{}: expected a JSON object at the top level", path.string());
  return json;
}

}  // namespace clipdissect
