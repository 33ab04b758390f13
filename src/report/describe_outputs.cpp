// describe's files: descriptions.csv (the reference's columns and number format), descriptions.json
// (top concepts and top images per neuron), run.json (settings, version, checksums, skipped images) and
// the HTML report made from them.
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "clipdissect/describe.h"
#include "clipdissect/error.h"
#include "clipdissect/report.h"
#include "clipdissect/weights.h"
#include "io/atomic_file.h"
#include "report/float_format.h"

namespace clipdissect {

namespace {

// Python csv's QUOTE_MINIMAL, as pandas.to_csv writes.
std::string csv_field(const std::string& field) {
  if (field.find_first_of(",\"\r\n") == std::string::npos) return field;
  std::string quoted = "\"";
  for (char c : field) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

std::string descriptions_csv(const DescribeResult& result) {
  std::string csv = "layer,unit,description,similarity\n";
  for (const LayerDescription& layer : result.layers)
    for (const NeuronDescription& neuron : layer.neurons) {
      // pandas writes NaN as an empty field
      const std::string score = std::isnan(neuron.similarity) ? "" : format_float32_like_numpy(neuron.similarity);
      csv += fmt::format("{},{},{},{}\n", csv_field(layer.name), neuron.unit,
                         csv_field(result.concepts[neuron.concept_index]), score);
    }
  return csv;
}

nlohmann::json number(float value) { return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(nullptr); }

nlohmann::json descriptions_json(const DescribeConfig& config, const DescribeResult& result) {
  nlohmann::json layers = nlohmann::json::array();
  for (const LayerDescription& layer : result.layers) {
    nlohmann::json neurons = nlohmann::json::array();
    for (const NeuronDescription& neuron : layer.neurons) {
      nlohmann::json concepts = nlohmann::json::array(), images = nlohmann::json::array();
      for (const ScoredIndex& c : neuron.top_concepts)
        concepts.push_back({{"concept", result.concepts[c.index]}, {"index", c.index}, {"score", number(c.score)}});
      for (const ScoredIndex& image : neuron.top_images)
        images.push_back({{"index", image.index},
                          {"path", result.image_names[image.index]},
                          {"activation", number(image.score)}});
      neurons.push_back({{"unit", neuron.unit},
                         {"description", result.concepts[neuron.concept_index]},
                         {"similarity", number(neuron.similarity)},
                         {"top_concepts", concepts},
                         {"top_images", images}});
    }
    layers.push_back({{"layer", layer.name}, {"neurons", neurons}});
  }
  return {{"similarity_function", similarity_function_name(config.similarity)},
          {"pool", config.pool == PoolMode::Max ? "max" : "avg"},
          {"concepts", result.concepts.size()},
          {"images", result.used_images.size()},
          {"layers", layers}};
}

nlohmann::json run_json(const DescribeConfig& config, const DescribeResult& result) {
  nlohmann::json probes = nlohmann::json::array(), skipped = nlohmann::json::array();
  for (const auto& p : config.probes) probes.push_back(p.string());
  for (const auto& [index, reason] : result.skipped_images)
    skipped.push_back({{"index", index}, {"path", result.image_names[index]}, {"reason", reason}});
  const SimilarityParams& s = config.similarity_params;
  return {
      {"program", "clipdissect"},
      {"version", CLIPDISSECT_VERSION},
      {"settings",
       {{"clip", config.clip.string()},
        {"target", config.target.string()},
        {"target_config", config.target_config ? nlohmann::json(config.target_config->string()) : nlohmann::json()},
        {"probe", probes},
        {"concepts", config.concepts.string()},
        {"layers", config.layers},
        {"similarity", similarity_function_name(config.similarity)},
        {"similarity_params",
         {{"soft_wpmi", {{"top_k", s.soft_wpmi_top_k}, {"a", s.soft_wpmi_a}, {"lam", s.soft_wpmi_lambda},
                         {"p_start", s.p_start}, {"p_end", s.p_end}, {"min_prob", s.min_prob}}},
          {"wpmi", {{"top_k", s.wpmi_top_k}, {"a", s.wpmi_a}, {"lam", s.wpmi_lambda}, {"min_prob", s.min_prob}}},
          {"rank_reorder", {{"p", s.rank_p}, {"top_fraction", s.rank_top_fraction}, {"scale_p", s.rank_scale_p}}},
          {"cos3", {{"min_norm", s.cos_cubed_min_norm}}}}},
        {"pool", config.pool == PoolMode::Max ? "max" : "avg"},
        {"batch_size", config.batch_size},
        {"threads", config.threads},
        {"device", device_name(config.device)},
        {"clip_precision", precision_name(config.clip_precision)},
        {"target_precision", precision_name(config.target_precision)},
        {"cache", config.use_cache},
        {"top_concepts", config.top_concepts},
        {"top_images", config.top_images},
        {"strict", config.strict},
        {"save_similarity", config.save_similarity ? nlohmann::json(*config.save_similarity) : nlohmann::json()}}},
      {"inputs",
       {{"clip_sha256", result.inputs.clip_sha256},
        {"target_sha256", result.inputs.target_sha256},
        {"concepts_sha256", result.inputs.concepts_sha256},
        {"probe_listing_sha256", result.inputs.probe_fingerprint_sha256}}},
      {"counts",
       {{"probe_images", result.image_names.size()},
        {"used_images", result.used_images.size()},
        {"skipped_images", result.skipped_images.size()},
        {"concepts", result.concepts.size()}}},
      {"skipped_images", skipped},
      {"cache",
       {{"clip_images", result.stats.image_cache_hit},
        {"clip_texts", result.stats.text_cache_hit},
        {"target_layers", result.stats.layer_cache_hits},
        {"continued_from_image", result.stats.continued_from}}},
      {"seconds",
       {{"decode_and_preprocess", result.stats.decode_seconds},
        {"clip_image", result.stats.clip_image_seconds},
        {"clip_text", result.stats.clip_text_seconds},
        {"target_forward", result.stats.target_seconds},
        {"similarity", result.stats.similarity_seconds},
        {"total", result.stats.seconds}}},
  };
}

void write_similarity_matrix(const DescribeConfig& config, const DescribeResult& result,
                             const std::filesystem::path& out_dir) {
  const std::string& layer = *config.save_similarity;
  const auto concepts = static_cast<std::int64_t>(result.concepts.size());
  save_safetensors(similarity_matrix_path(out_dir, layer),
                   {make_f32_tensor("similarity", {static_cast<std::int64_t>(result.saved_similarity.size()) / concepts,
                                                   concepts},
                                    result.saved_similarity)},
                   {{"layer", layer},
                    {"similarity_function", std::string(similarity_function_name(config.similarity))},
                    {"concepts_sha256", result.inputs.concepts_sha256}});
}

}  // namespace

std::filesystem::path similarity_matrix_path(const std::filesystem::path& out_dir, const std::string& layer) {
  return out_dir / ("similarity_" + layer + ".safetensors");
}

void write_describe_outputs(const DescribeConfig& config, const DescribeResult& result,
                            const std::filesystem::path& out_dir) {
  check_writable_folder(out_dir, "output folder");
  // An earlier run's run.json would vouch for the files replaced below until the new one is written.
  if (::unlink((out_dir / "run.json").c_str()) != 0 && errno != ENOENT)
    fail("{}: cannot remove the earlier run's file: {}", (out_dir / "run.json").string(), std::strerror(errno));
  write_file_atomically(out_dir / "descriptions.csv", descriptions_csv(result));
  write_file_atomically(out_dir / "descriptions.json", descriptions_json(config, result).dump(1) + "\n");
  if (config.save_similarity && !result.saved_similarity.empty()) write_similarity_matrix(config, result, out_dir);
  // run.json last: its presence says the run completed.
  write_file_atomically(out_dir / "run.json", run_json(config, result).dump(1) + "\n");
  // The report is made from those files, as `clipdissect report` makes it again.
  write_report(out_dir);
}

}  // namespace clipdissect
