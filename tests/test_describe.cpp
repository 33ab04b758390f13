// describe end to end on the reference's e2e fixture: labels, scores and top-5 concepts.
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <gtest/gtest.h>

#include "clipdissect/describe.h"
#include "clipdissect/error.h"
#include "clipdissect/network.h"
#include "clipdissect/probe.h"
#include "clipdissect/weights.h"
#include "fixtures.h"
#include "test_files.h"

namespace clipdissect {
namespace {

namespace fs = std::filesystem;
using testing::fixture;

struct ReferenceRow {
  std::string description;
  double similarity = 0;
};

// layer,unit,description,similarity (descriptions here contain no commas or quotes).
std::map<std::pair<std::string, int>, ReferenceRow> read_reference_csv(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "layer,unit,description,similarity");
  std::map<std::pair<std::string, int>, ReferenceRow> rows;
  while (std::getline(in, line)) {
    std::stringstream fields(line);
    std::string layer, unit, description, similarity;
    std::getline(fields, layer, ',');
    std::getline(fields, unit, ',');
    std::getline(fields, description, ',');
    std::getline(fields, similarity, ',');
    rows[{layer, std::stoi(unit)}] = {description, std::stod(similarity)};
  }
  return rows;
}

struct Top5Entry {
  std::int64_t concept_index;
  double similarity;
};

// top5.tsv: layer unit rank concept_index concept similarity tie_sensitive
std::map<std::pair<std::string, int>, std::vector<Top5Entry>> read_top5(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  std::map<std::pair<std::string, int>, std::vector<Top5Entry>> top;
  while (std::getline(in, line)) {
    std::stringstream fields(line);
    std::string layer, unit, rank, index, name, similarity;
    std::getline(fields, layer, '\t');
    std::getline(fields, unit, '\t');
    std::getline(fields, rank, '\t');
    std::getline(fields, index, '\t');
    std::getline(fields, name, '\t');
    std::getline(fields, similarity, '\t');
    top[{layer, std::stoi(unit)}].push_back({std::stoll(index), std::stod(similarity)});
  }
  return top;
}

class DescribeE2E : public ::testing::Test {
 protected:

  DescribeConfig config(std::vector<std::string> layers) const {
    DescribeConfig c;
    c.clip = fixture("models/clip_vit.pt");
    c.target = fixture("models/resnet_bottleneck.pth");
    c.probes = {fixture("images")};
    c.concepts = fixture("e2e/concepts.txt");
    c.layers = std::move(layers);
    c.batch_size = 50;
    c.threads = 2;
    c.cache_dir = dir_ / "cache";
    c.bpe = fixture("clip/bpe_simple_vocab_16e6.txt.gz");
    c.quiet = true;
    return c;
  }

  // Neurons whose top-k images come in another order from our activations than from the reference's
  // (e2e/activations.safetensors). Our activations match the reference's to about 1e-6 of the layer's
  // scale, the order of the reference's own batch-size noise, so images whose activations are that close
  // may swap ranks; SoftWPMI weights images by rank, so those neurons' scores may move beyond 1e-3
  // although nothing is wrong. The test checks that every swap is between near-equal activations.
  static std::set<std::pair<std::string, int>> rank_swaps(PoolMode mode, const std::vector<std::string>& layers, int k) {
    const WeightMap reference = load_weights(fixture("e2e/activations.safetensors"));
    auto backend = make_cpu_backend(2);
    const auto network = load_target(*backend, fixture("models/resnet_bottleneck.pth"));
    const ProbeSet probe = ProbeSet::open(fixture("images"));
    Recorder recorder(*backend, mode, layers);
    const Preprocess preprocess = network->preprocess();
    for (std::size_t first = 0; first < probe.size(); first += 50) {
      const std::size_t count = std::min<std::size_t>(50, probe.size() - first);
      const PreprocessedBatch batch = preprocess_batch(probe, first, count, std::span(&preprocess, 1));
      network->forward(backend->upload(batch.pixels[0], {static_cast<std::int64_t>(count), 3, 224, 224}), &recorder);
    }
    std::set<std::pair<std::string, int>> swapped;
    for (const std::string& layer : layers) {
      const HostTensor& t = reference.at("target/" + std::string(mode == PoolMode::Max ? "max/" : "avg/") + layer);
      const std::vector<float> theirs = to_f32(t);
      const std::vector<float>& ours = recorder.summary(layer).values;
      const std::int64_t n = t.shape[0], c = t.shape[1];
      const auto their_tops = top_images(theirs, n, c, k), our_tops = top_images(ours, n, c, k);
      for (std::int64_t unit = 0; unit < c; ++unit) {
        if (their_tops[unit] == our_tops[unit]) continue;
        swapped.insert({layer, static_cast<int>(unit)});
        for (int j = 0; j < k; ++j)
          EXPECT_LE(std::abs(theirs[their_tops[unit][j] * c + unit] - theirs[our_tops[unit][j] * c + unit]), 5e-5)
              << layer << " " << unit << " rank " << j << ": a swap between activations that are not near-equal";
      }
    }
    return swapped;
  }

  // Same label unless the reference's own best two differ by < 1e-4; score within 1e-3 (relative above 1);
  // top-5 scores rank by rank within 1e-3, and the same concepts where the reference's scores are more
  // than twice that apart from both neighbours. Neurons in `skip` (rank swaps of near-equal activations) are only counted.
  static void expect_matches(const DescribeResult& result, const fs::path& csv, const fs::path& tsv,
                             const std::set<std::pair<std::string, int>>& skip) {
    const auto reference = read_reference_csv(csv);
    const auto top5 = read_top5(tsv);
    std::size_t compared = 0, skipped = 0;
    for (const LayerDescription& layer : result.layers)
      for (const NeuronDescription& neuron : layer.neurons) {
        const auto key = std::make_pair(layer.name, static_cast<int>(neuron.unit));
        ASSERT_TRUE(reference.count(key)) << layer.name << " " << neuron.unit;
        if (skip.count(key)) {
          ++skipped;
          continue;
        }
        const ReferenceRow& want = reference.at(key);
        const std::vector<Top5Entry>& ref_top = top5.at(key);
        const double scale = std::max(1.0, std::abs(want.similarity));
        EXPECT_LE(std::abs(neuron.similarity - want.similarity) / scale, 1e-3) << layer.name << " " << neuron.unit;
        const bool near_tie = ref_top.size() > 1 && ref_top[0].similarity - ref_top[1].similarity < 1e-4;
        if (!near_tie) {
          EXPECT_EQ(result.concepts[neuron.concept_index], want.description) << layer.name << " " << neuron.unit;
        }
        ASSERT_GE(neuron.top_concepts.size(), ref_top.size());
        for (std::size_t r = 0; r < ref_top.size(); ++r) {
          const double s = std::max(1.0, std::abs(ref_top[r].similarity));
          EXPECT_LE(std::abs(neuron.top_concepts[r].score - ref_top[r].similarity) / s, 1e-3);
          // The concept at a rank is determined when its score is apart from its neighbours' (the 6th best,
          // beyond the file, is unknown: the last rank's concept is compared by score only).
          const double gap = 2e-3 * s;
          const bool separated = (r == 0 || ref_top[r - 1].similarity - ref_top[r].similarity > gap) &&
                                 r + 1 < ref_top.size() && ref_top[r].similarity - ref_top[r + 1].similarity > gap;
          if (separated) {
            EXPECT_EQ(neuron.top_concepts[r].index, ref_top[r].concept_index)
                << layer.name << " " << neuron.unit << " rank " << r;
          }
        }
        ++compared;
      }
    EXPECT_EQ(compared + skipped, reference.size());
    EXPECT_LE(skipped, reference.size() / 10) << "too many rank swaps for the comparison to mean much";
  }

  testing::TemporaryFolder scratch_;
  const fs::path& dir_ = scratch_.path();
};

TEST_F(DescribeE2E, SoftWpmiAvgAllLayersMatchesReferenceThenWarmCacheDoesNoForwardPass) {
  const DescribeConfig c = config({"conv1", "layer1", "layer2", "layer3", "layer4", "fc"});
  const DescribeResult first = describe(c);
  EXPECT_EQ(first.used_images.size(), 130u);
  EXPECT_TRUE(first.skipped_images.empty());
  expect_matches(first, fixture("e2e/descriptions.csv"), fixture("e2e/top5.tsv"),
                 rank_swaps(PoolMode::Avg, c.layers, 100));
  EXPECT_FALSE(first.stats.image_cache_hit);

  const DescribeResult second = describe(c);
  EXPECT_TRUE(second.stats.image_cache_hit);
  EXPECT_TRUE(second.stats.text_cache_hit);
  EXPECT_EQ(second.stats.layer_cache_hits, 6);
  for (std::size_t l = 0; l < first.layers.size(); ++l)
    for (std::size_t u = 0; u < first.layers[l].neurons.size(); ++u) {
      EXPECT_EQ(second.layers[l].neurons[u].concept_index, first.layers[l].neurons[u].concept_index);
      EXPECT_EQ(second.layers[l].neurons[u].similarity, first.layers[l].neurons[u].similarity);
    }
}

// The similarity stage alone, fed the reference's own cached embeddings and activations, reproduces every
// neuron's similarity row (the fixture keeps full rows for conv1, layer1 and fc).
TEST(DescribeReferenceActivations, SimilarityRowsMatchForEveryNeuron) {
  const WeightMap cached = load_weights(fixture("e2e/activations.safetensors"));
  const std::vector<float> images = to_f32(cached.at("clip_image_features")), texts = to_f32(cached.at("clip_text_features"));
  for (const std::string name : {"soft_wpmi/avg/conv1", "soft_wpmi/avg/layer1", "soft_wpmi/avg/fc", "wpmi/avg/fc"}) {
    const std::string fn = name.substr(0, name.find('/')), layer = name.substr(name.rfind('/') + 1);
    const HostTensor& act = cached.at("target/avg/" + layer);
    const std::vector<float> activations = to_f32(act);
    const SimilarityInputs inputs{images, texts, activations, 130, 64, 1000, act.shape[1]};
    const std::vector<float> got = compute_similarity(*parse_similarity_function(fn), inputs);
    const std::vector<float> want = to_f32(cached.at("similarity/" + name));
    ASSERT_EQ(got.size(), want.size());
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(double(got[i]) - want[i]));
    EXPECT_LE(worst, 1e-3) << name;
  }
}

TEST_F(DescribeE2E, SoftWpmiMaxPoolLayer4MatchesReference) {
  DescribeConfig c = config({"layer4"});
  c.pool = PoolMode::Max;
  expect_matches(describe(c), fixture("e2e/descriptions_max_layer4.csv"), fixture("e2e/top5_max_layer4.tsv"),
                 rank_swaps(PoolMode::Max, c.layers, 100));
}

TEST_F(DescribeE2E, WpmiFcMatchesReference) {
  DescribeConfig c = config({"fc"});
  c.similarity = SimilarityFunction::Wpmi;
  c.use_cache = false;
  expect_matches(describe(c), fixture("e2e/descriptions_wpmi_fc.csv"), fixture("e2e/top5_wpmi_fc.tsv"),
                 rank_swaps(PoolMode::Avg, c.layers, 28));
}

TEST_F(DescribeE2E, OutputsAreWrittenWithTheReferenceColumns) {
  DescribeConfig c = config({"fc"});
  c.similarity = SimilarityFunction::Wpmi;
  c.top_images = 3;
  const DescribeResult result = describe(c);
  write_describe_outputs(c, result, dir_ / "out");
  const auto ours = read_reference_csv(dir_ / "out" / "descriptions.csv");
  const auto reference = read_reference_csv(fixture("e2e/descriptions_wpmi_fc.csv"));
  ASSERT_EQ(ours.size(), reference.size());
  for (const auto& [key, row] : reference) EXPECT_EQ(ours.at(key).description, row.description);
  std::ifstream json(dir_ / "out" / "descriptions.json");
  const std::string text{std::istreambuf_iterator<char>(json), std::istreambuf_iterator<char>()};
  EXPECT_NE(text.find("\"top_images\""), std::string::npos);
  EXPECT_NE(text.find("Zebra_stripes"), std::string::npos);  // image paths are listed
  EXPECT_TRUE(fs::exists(dir_ / "out" / "run.json"));
}

}  // namespace
}  // namespace clipdissect
