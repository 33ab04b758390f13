// report.html: the run's overview and every neuron's card, rendered in the browser from compact JSON
// embedded in a self-contained page (inline CSS and script, no network).
#include <cstdlib>
#include <map>
#include <string_view>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "clipdissect/error.h"
#include "clipdissect/report.h"
#include "io/json_file.h"
#include "io/atomic_file.h"
#include "report/thumbnails.h"

namespace clipdissect {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The page: inline CSS and script around the placeholder for the data.
constexpr std::string_view kPage =
#include "report/report_page.inc"
    ;
constexpr std::string_view kDataPlaceholder = "@REPORT_DATA@";

json read_run_file(const fs::path& path) {
  if (!fs::exists(path)) fail("{}: missing (is {} the --out folder of a finished describe run?)", path.string(),
                              path.parent_path().string());
  return read_json_file(path);
}

// Fields of one JSON file, with errors that name the file and where the field is.
class Fields {
 public:
  explicit Fields(fs::path file) : file_(std::move(file)) {}

  const json& at(const json& object, const char* key, const std::string& where) const {
    if (!object.is_object() || !object.contains(key)) fail("{}: {}: field '{}' is missing", file_.string(), where, key);
    return object[key];
  }
  const json& array(const json& object, const char* key, const std::string& where) const {
    const json& value = at(object, key, where);
    if (!value.is_array()) fail("{}: {}.{}: expected an array", file_.string(), where, key);
    return value;
  }
  std::string text(const json& object, const char* key, const std::string& where) const {
    const json& value = at(object, key, where);
    if (!value.is_string()) fail("{}: {}.{}: expected a string", file_.string(), where, key);
    return value.get<std::string>();
  }
  std::vector<std::string> texts(const json& object, const char* key, const std::string& where) const {
    std::vector<std::string> values;
    for (const json& value : array(object, key, where)) {
      if (!value.is_string()) fail("{}: {}.{}: expected an array of strings", file_.string(), where, key);
      values.push_back(value.get<std::string>());
    }
    return values;
  }
  std::int64_t count(const json& object, const char* key, const std::string& where) const {
    const json& value = at(object, key, where);
    if (!value.is_number_integer() || value.get<std::int64_t>() < 0)
      fail("{}: {}.{}: expected a non-negative integer", file_.string(), where, key);
    return value.get<std::int64_t>();
  }
  // A score: a number, or null where the run had a NaN or infinity.
  json score(const json& object, const char* key, const std::string& where) const {
    const json& value = at(object, key, where);
    if (value.is_null()) return nullptr;
    if (!value.is_number()) fail("{}: {}.{}: expected a number or null", file_.string(), where, key);
    // Four significant digits are all a reader compares; the page stays small.
    return std::strtod(fmt::format("{:.4g}", value.get<double>()).c_str(), nullptr);
  }

 private:
  fs::path file_;
};

// "a/b/apple/03.jpg" -> "apple/03.jpg": enough of an image's name to recognise it.
std::string short_image_name(const std::string& name) {
  const fs::path path(name);
  const fs::path folder = path.parent_path().filename();
  return folder.empty() ? path.filename().string() : (folder / path.filename()).string();
}

// The page's data, collected from descriptions.json: concept names once each, neurons as compact arrays
// [unit, label, score, [concept, score, ...] alternatives, [probe index, activation, ...] top images].
class PageData {
 public:
  explicit PageData(const fs::path& file) : fields_(file) {}

  json layers(const json& descriptions) {
    json layers = json::array();
    const json& list = fields_.array(descriptions, "layers", "top level");
    for (std::size_t l = 0; l < list.size(); ++l) {
      const std::string where = fmt::format("layers[{}]", l);
      json neurons = json::array();
      const json& described = fields_.array(list[l], "neurons", where);
      for (std::size_t n = 0; n < described.size(); ++n)
        neurons.push_back(neuron(described[n], fmt::format("{}.neurons[{}]", where, n)));
      layers.push_back({{"name", fields_.text(list[l], "layer", where)}, {"neurons", std::move(neurons)}});
    }
    return layers;
  }

  const std::vector<std::string>& concepts() const { return concepts_; }
  const std::map<std::int64_t, std::string>& images() const { return images_; }

 private:
  json neuron(const json& entry, const std::string& where) {
    const std::string label = fields_.text(entry, "description", where);
    json alternatives = json::array(), top_images = json::array();
    const json& concepts = fields_.array(entry, "top_concepts", where);
    for (std::size_t c = 0; c < concepts.size(); ++c) {
      const std::string at = fmt::format("{}.top_concepts[{}]", where, c);
      const std::string name = fields_.text(concepts[c], "concept", at);
      if (name == label) continue;  // the label itself, shown as such
      alternatives.push_back(concept_id(name));
      alternatives.push_back(fields_.score(concepts[c], "score", at));
    }
    const json& images = fields_.array(entry, "top_images", where);
    for (std::size_t i = 0; i < images.size(); ++i) {
      const std::string at = fmt::format("{}.top_images[{}]", where, i);
      const std::int64_t index = fields_.count(images[i], "index", at);
      images_.emplace(index, short_image_name(fields_.text(images[i], "path", at)));
      top_images.push_back(index);
      top_images.push_back(fields_.score(images[i], "activation", at));
    }
    return json::array({fields_.count(entry, "unit", where), concept_id(label), fields_.score(entry, "similarity", where),
                        std::move(alternatives), std::move(top_images)});
  }

  std::size_t concept_id(const std::string& name) {
    const auto [it, added] = concept_ids_.emplace(name, concepts_.size());
    if (added) concepts_.push_back(name);
    return it->second;
  }

  Fields fields_;
  std::vector<std::string> concepts_;
  std::map<std::string, std::size_t> concept_ids_;
  std::map<std::int64_t, std::string> images_;  // probe index -> short name
};

// The probe sets and their listing's checksum, from run.json.
RunProbes run_probes(const json& run, const Fields& fields) {
  RunProbes probes;
  for (const std::string& path : fields.texts(fields.at(run, "settings", "top level"), "probe", "settings"))
    probes.paths.emplace_back(path);
  probes.listing_sha256 = fields.text(fields.at(run, "inputs", "top level"), "probe_listing_sha256", "inputs");
  return probes;
}

// The overview's facts, from run.json.
json run_summary(const json& run, const Fields& fields) {
  const json& settings = fields.at(run, "settings", "top level");
  const json& counts = fields.at(run, "counts", "top level");
  return {{"version", fields.text(run, "version", "top level")},
          {"clip", fields.text(settings, "clip", "settings")},
          {"target", fields.text(settings, "target", "settings")},
          {"probe", fields.texts(settings, "probe", "settings")},
          {"concepts", fields.text(settings, "concepts", "settings")},
          {"similarity", fields.text(settings, "similarity", "settings")},
          {"pool", fields.text(settings, "pool", "settings")},
          {"probe_images", fields.count(counts, "probe_images", "counts")},
          {"used_images", fields.count(counts, "used_images", "counts")},
          {"skipped_images", fields.count(counts, "skipped_images", "counts")},
          {"concept_count", fields.count(counts, "concepts", "counts")}};
}

// The data as the page's <script type="application/json"> holds it: no "<" can end the element early.
std::string embeddable(const json& data) {
  const std::string text = data.dump(-1, ' ', false, json::error_handler_t::replace);
  std::string out;
  out.reserve(text.size());
  for (const char c : text) out += c == '<' ? std::string_view("\\u003c") : std::string_view(&c, 1);
  return out;
}

}  // namespace

void write_report(const fs::path& run_dir) {
  const fs::path run_file = run_dir / "run.json", descriptions_file = run_dir / "descriptions.json";
  const json run = read_run_file(run_file), descriptions = read_run_file(descriptions_file);
  const Fields run_fields(run_file);

  PageData data(descriptions_file);
  json page = {{"run", run_summary(run, run_fields)}, {"layers", data.layers(descriptions)}};
  page["concepts"] = data.concepts();
  json images = json::object();
  std::vector<std::int64_t> indices;
  for (const auto& [index, name] : data.images()) {
    images[std::to_string(index)] = name;
    indices.push_back(index);
  }
  page["images"] = std::move(images);

  write_report_images(run_dir, indices, run_probes(run, run_fields));
  const std::size_t split = kPage.find(kDataPlaceholder);
  std::string html(kPage.substr(0, split));
  html += embeddable(page);
  html += kPage.substr(split + kDataPlaceholder.size());
  write_file_atomically(run_dir / "report.html", html);
}

}  // namespace clipdissect
