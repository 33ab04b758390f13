// Similarity functions against the reference's similarity.py outputs (fixtures similarity/case1, case2).
#include <algorithm>
#include <cmath>

#include <gtest/gtest.h>

#include "clipdissect/error.h"
#include "clipdissect/similarity.h"
#include "fixtures.h"
#include "test_util.h"

namespace clipdissect {
namespace {

using testing::fixture;

struct Case {
  std::vector<float> images, texts, activations;
  std::int64_t n = 0, d = 0, k = 0, c = 0;
  WeightMap outputs;

  SimilarityInputs inputs(const std::vector<std::vector<std::int32_t>>* tops = nullptr) const {
    return {images, texts, activations, n, d, k, c, tops};
  }
  // The reference's torch.topk indices ([k, C] in the fixture) as per-neuron lists.
  std::vector<std::vector<std::int32_t>> recorded_tops(int top_k) const {
    const HostTensor& t = outputs.at("topk_idx/" + std::to_string(top_k));
    const auto* idx = reinterpret_cast<const std::int64_t*>(t.bytes.data());
    std::vector<std::vector<std::int32_t>> tops(c);
    for (int j = 0; j < top_k; ++j)
      for (std::int64_t i = 0; i < c; ++i) tops[i].push_back(static_cast<std::int32_t>(idx[j * c + i]));
    return tops;
  }
};

Case load_case(const std::string& name) {
  Case c;
  const WeightMap in = load_weights(fixture("similarity/" + name + "_inputs.safetensors"));
  Shape shape;
  c.activations = testing::fixture_tensor(in, "target_feats", &shape);
  c.n = shape[0];
  c.c = shape[1];
  c.images = testing::fixture_tensor(in, "image_embeddings", &shape);
  c.d = shape[1];
  c.texts = testing::fixture_tensor(in, "text_embeddings", &shape);
  c.k = shape[0];
  c.outputs = load_weights(fixture("similarity/" + name + "_outputs.safetensors"));
  return c;
}

// torch.max(row): the first maximum, or the first NaN when the row has one.
std::int64_t reference_argmax(const float* row, std::int64_t n) {
  std::int64_t best = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    if (std::isnan(row[i])) return i;
    if (row[i] > row[best]) best = i;
  }
  return best;
}

// Compares [C, K] rows: same NaN entries, |diff| <= tol elsewhere, same argmax.
void expect_rows_match(const std::vector<float>& got, const std::vector<float>& want, std::int64_t c,
                       std::int64_t k, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (std::int64_t i = 0; i < c; ++i) {
    double worst = 0;
    for (std::int64_t j = 0; j < k; ++j) {
      const float a = got[i * k + j], b = want[i * k + j];
      ASSERT_EQ(std::isnan(a), std::isnan(b)) << "neuron " << i << " concept " << j;
      if (!std::isnan(b)) worst = std::max(worst, std::abs(double(a) - b));
    }
    EXPECT_LE(worst, tol) << "neuron " << i;
    EXPECT_EQ(reference_argmax(&got[i * k], k), reference_argmax(&want[i * k], k)) << "neuron " << i;
  }
}

class SimilarityFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(SimilarityFixture, WpmiFamilyMatchesWithRecordedAndOwnTopImages) {
  const Case c = load_case(GetParam());
  struct Fn {
    SimilarityFunction function;
    std::string name;
    int top_k;
  };
  for (const Fn& fn : {Fn{SimilarityFunction::SoftWpmi, "soft_wpmi", 100}, Fn{SimilarityFunction::Wpmi, "wpmi", 28}}) {
    const std::vector<float> want = testing::fixture_tensor(c.outputs, fn.name);
    // With the reference's recorded top-k order every neuron must match, ties included.
    const auto recorded = c.recorded_tops(fn.top_k);
    expect_rows_match(compute_similarity(fn.function, c.inputs(&recorded)), want, c.c, c.k, 1e-3);
    // Ranking ourselves gives torch.topk's order, tied activations included, so every neuron matches too.
    expect_rows_match(compute_similarity(fn.function, c.inputs()), want, c.c, c.k, 1e-3);
  }
}

TEST_P(SimilarityFixture, CosineAndCubedMatchIncludingNaNRows) {
  const Case c = load_case(GetParam());
  expect_rows_match(compute_similarity(SimilarityFunction::Cos, c.inputs()),
                    testing::fixture_tensor(c.outputs, "cos_similarity"), c.c, c.k, 1e-3);
  expect_rows_match(compute_similarity(SimilarityFunction::CosCubed, c.inputs()),
                    testing::fixture_tensor(c.outputs, "cos_similarity_cubed"), c.c, c.k, 1e-3);
}

TEST_P(SimilarityFixture, RankReorderMatchesUpToOnePositiveFactorPerNeuron) {
  const Case c = load_case(GetParam());
  const std::vector<float> want = testing::fixture_tensor(c.outputs, "rank_reorder");
  const int top_n = static_cast<int>(c.n * 0.05);
  const auto recorded = c.recorded_tops(top_n);
  const std::vector<float> got = compute_similarity(SimilarityFunction::RankReorder, c.inputs(&recorded));
  for (std::int64_t i = 0; i < c.c; ++i) {
    std::vector<double> ratios;
    for (std::int64_t j = 0; j < c.k; ++j) {
      const float a = got[i * c.k + j], b = want[i * c.k + j];
      ASSERT_EQ(std::isnan(a), std::isnan(b)) << "neuron " << i << " concept " << j;
      if (!std::isnan(b) && b != 0) ratios.push_back(double(a) / b);
    }
    if (ratios.empty()) continue;  // a NaN row
    std::sort(ratios.begin(), ratios.end());
    const double factor = ratios[ratios.size() / 2];
    EXPECT_GT(factor, 0) << "neuron " << i;
    // The scores' ranks among a neuron's top images decide each concept's error; scores that differ
    // by float rounding only (~1e-7) may swap, so a few concepts per neuron may leave the common factor.
    const auto off = std::count_if(ratios.begin(), ratios.end(),
                                   [&](double r) { return std::abs(r - factor) > 1e-4 * factor; });
    EXPECT_LE(off, static_cast<long>(ratios.size() / 100 + 1)) << "neuron " << i;
    EXPECT_EQ(reference_argmax(&got[i * c.k], c.k), reference_argmax(&want[i * c.k], c.k)) << "neuron " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SimilarityFixture, ::testing::Values("case1", "case2"));

TEST(TopImages, DescendingAndTheSameAsTorchTopkOnTies) {
  // Two neurons over five images.
  const std::vector<float> act{1, 5, 3, 3, 2, 2, 3, 1, 0, 9};
  const auto tops = top_images(act, 5, 2, 3);
  EXPECT_EQ(tops[1], (std::vector<std::int32_t>{4, 0, 1}));  // neuron 1: [5, 3, 2, 1, 9]
  EXPECT_EQ(act[tops[0][0] * 2], 3);  // neuron 0: [1, 3, 2, 3, 0]: images 1 and 3 tie at 3, then image 2
  EXPECT_EQ(act[tops[0][1] * 2], 3);
  EXPECT_EQ(tops[0][2], 2);
  EXPECT_THROW(top_images(act, 5, 2, 6), Error);

  // The fixtures record torch.topk's indices, ties included (quantised, constant, dead and tied-maximum
  // neurons in case2): both selection strategies (k * 64 <= N and not) reproduce them.
  for (const std::string name : {"case1", "case2"}) {
    const WeightMap in = load_weights(fixture("similarity/" + name + "_inputs.safetensors"));
    const WeightMap out = load_weights(fixture("similarity/" + name + "_outputs.safetensors"));
    Shape shape;
    const std::vector<float> target = testing::fixture_tensor(in, "target_feats", &shape);
    for (const HostTensor& t : out.tensors()) {
      if (t.name.rfind("topk_idx/", 0) != 0) continue;
      const int k = static_cast<int>(t.shape[0]);
      const auto ours = top_images(target, shape[0], shape[1], k);
      const auto* idx = reinterpret_cast<const std::int64_t*>(t.bytes.data());
      for (std::int64_t c = 0; c < shape[1]; ++c)
        for (int j = 0; j < k; ++j) ASSERT_EQ(ours[c][j], idx[j * shape[1] + c]) << name << " k=" << k << " neuron " << c << " rank " << j;
    }
  }
}

TEST(SimilarityNames, ParseBothSpellings) {
  EXPECT_EQ(parse_similarity_function("soft_wpmi"), SimilarityFunction::SoftWpmi);
  EXPECT_EQ(parse_similarity_function("cos_similarity_cubed"), SimilarityFunction::CosCubed);
  EXPECT_EQ(parse_similarity_function("cos3"), SimilarityFunction::CosCubed);
  EXPECT_FALSE(parse_similarity_function("pmi").has_value());
  EXPECT_EQ(similarity_function_name(SimilarityFunction::RankReorder), "rank_reorder");
}

}  // namespace
}  // namespace clipdissect
