// The main job: label every neuron of the chosen layers of a target network with the concept whose
// CLIP scores over the probe images best match the neuron's activations.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "clipdissect/backend.h"
#include "clipdissect/device.h"
#include "clipdissect/similarity.h"

namespace clipdissect {

struct DescribeConfig {
  std::filesystem::path clip, target;
  std::optional<std::filesystem::path> target_config;
  std::vector<std::filesystem::path> probes;  // joined in order
  std::filesystem::path concepts;
  std::vector<std::string> layers;
  SimilarityFunction similarity = SimilarityFunction::SoftWpmi;
  SimilarityParams similarity_params;
  PoolMode pool = PoolMode::Avg;
  int batch_size = 32;
  int threads = 1;
  // With a CUDA device, the models run there (CLIP and the target each in its precision) and so do SoftWPMI
  // and WPMI; images are decoded on the CPU one batch ahead of the GPU.
  Device device;
  Precision clip_precision = Precision::F32, target_precision = Precision::F32;
  std::optional<std::filesystem::path> cache_dir;  // default: <cache folder>/activations
  bool use_cache = true;
  int top_concepts = 5;
  int top_images = 10;
  std::optional<std::filesystem::path> bpe;
  bool strict = false;  // fail on an unreadable image instead of skipping it
  bool quiet = false;
  // A layer whose whole [neurons, concepts] similarity matrix is kept and written (similarity_matrix_path).
  std::optional<std::string> save_similarity;
};

struct ScoredIndex {
  std::int64_t index = 0;
  float score = 0;
};

struct NeuronDescription {
  std::int64_t unit = 0;
  std::int64_t concept_index = 0;  // argmax as torch.max: the first maximum, or the first NaN
  float similarity = 0;
  std::vector<ScoredIndex> top_concepts;  // best first
  std::vector<ScoredIndex> top_images;    // probe image index and activation, highest first
};

struct LayerDescription {
  std::string name;
  std::vector<NeuronDescription> neurons;
};

struct DescribeResult {
  std::vector<std::string> concepts;
  std::vector<std::string> image_names;            // every probe image, by probe index
  std::vector<std::int64_t> used_images;           // probe indices that decoded, in activation row order
  std::vector<std::pair<std::int64_t, std::string>> skipped_images;  // probe index, reason
  std::vector<LayerDescription> layers;
  std::vector<float> saved_similarity;  // config.save_similarity's matrix, row-major [neurons, concepts]
  struct Inputs {
    std::string clip_sha256, target_sha256, concepts_sha256, probe_fingerprint_sha256;
  } inputs;
  struct Stats {
    bool image_cache_hit = false, text_cache_hit = false;
    int layer_cache_hits = 0;
    std::int64_t continued_from = 0;  // probe images covered by a stopped run whose image pass this one continued
    // Wall-clock seconds per stage (0 for a stage served by the cache) and in all.
    double decode_seconds = 0, clip_image_seconds = 0, target_seconds = 0, clip_text_seconds = 0,
           similarity_seconds = 0, seconds = 0;
  } stats;
};

// Non-empty lines of a concept file (LF, CRLF or CR line ends), in order. Duplicates are kept: they
// get identical scores and the first occurrence wins the argmax, as in the reference.
std::vector<std::string> read_concepts(const std::filesystem::path& path);

// Runs the whole dissection; throws Error on bad input before writing anything.
DescribeResult describe(const DescribeConfig& config);

// Where write_describe_outputs puts the kept similarity matrix: tensor "similarity" [neurons, concepts] with
// metadata "layer", "similarity_function" and "concepts_sha256" (SHA-256 of the concepts joined by newlines).
std::filesystem::path similarity_matrix_path(const std::filesystem::path& out_dir, const std::string& layer);

// descriptions.csv, descriptions.json, the kept similarity matrix if any, and run.json in `out_dir`, each
// written atomically, then the report made from them (write_report in clipdissect/report.h).
void write_describe_outputs(const DescribeConfig& config, const DescribeResult& result,
                            const std::filesystem::path& out_dir);

}  // namespace clipdissect
