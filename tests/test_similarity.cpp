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

// SoftWPMI straight from its definition over the materialised N x K matrix, in double.
std::vector<double> materialised_soft_wpmi(const std::vector<float>& images, const std::vector<float>& texts,
                                           std::int64_t n, std::int64_t d, std::int64_t k,
                                           const std::vector<std::vector<std::int32_t>>& tops,
                                           const SimilarityParams& p) {
  const auto unit = [d](const float* v) {
    double norm = 0;
    for (std::int64_t i = 0; i < d; ++i) norm += double(v[i]) * v[i];
    return std::sqrt(norm);
  };
  std::vector<double> softmax(n * k);
  for (std::int64_t i = 0; i < n; ++i) {
    double max = -INFINITY, sum = 0;
    for (std::int64_t t = 0; t < k; ++t) {
      double dot = 0;
      for (std::int64_t e = 0; e < d; ++e) dot += double(images[i * d + e]) * texts[t * d + e];
      softmax[i * k + t] = p.soft_wpmi_a * dot / unit(&images[i * d]) / unit(&texts[t * d]);
      max = std::max(max, softmax[i * k + t]);
    }
    for (std::int64_t t = 0; t < k; ++t) sum += (softmax[i * k + t] = std::exp(softmax[i * k + t] - max));
    for (std::int64_t t = 0; t < k; ++t) softmax[i * k + t] /= sum;
  }
  const std::int64_t c_count = static_cast<std::int64_t>(tops.size());
  const int top_k = p.soft_wpmi_top_k;
  std::vector<double> log_p(c_count * k, 0.0), out(c_count * k);
  for (std::int64_t c = 0; c < c_count; ++c)
    for (int j = 0; j < top_k; ++j) {
      const double member = p.p_start - double(j) / top_k * (p.p_start - p.p_end);
      for (std::int64_t t = 0; t < k; ++t)
        log_p[c * k + t] += std::log(1 + member * (softmax[tops[c][j] * k + t] - 1) + p.min_prob);
    }
  for (std::int64_t t = 0; t < k; ++t) {
    double max = -INFINITY, sum = 0;
    for (std::int64_t c = 0; c < c_count; ++c) max = std::max(max, log_p[c * k + t]);
    for (std::int64_t c = 0; c < c_count; ++c) sum += std::exp(log_p[c * k + t] - max);
    const double log_prior = max + std::log(sum) - std::log(double(c_count));
    for (std::int64_t c = 0; c < c_count; ++c) out[c * k + t] = log_p[c * k + t] - p.soft_wpmi_lambda * log_prior;
  }
  return out;
}

// Enough concepts that one image chunk's log terms exceed the working buffer, so neurons are taken in
// several groups per chunk: the result must not depend on the grouping.
// Rank reorder pairs the r-th lowest-scoring top image with the r-th lowest activation; images with equal scores
// keep their top-list order (highest activation first). Checked through the ratio of two concepts of one neuron,
// where the random baseline cancels: value_k = -(error_k / baseline) / sqrt(mean score_k).
TEST(RankReorder, TiedScoresKeepTheTopListOrder) {
  const std::int64_t n = 100, dim = 5;  // top 5 % = the 5 images with one-hot embeddings
  std::vector<float> images(n * dim, 1.f), activations(n, 0.f);
  for (int j = 0; j < 5; ++j) {
    std::fill_n(images.begin() + j * dim, dim, 0.f);
    images[j * dim + j] = 1.f;
    activations[j] = static_cast<float>(5 - j);  // image j is j-th in the neuron's top list
  }
  // Concept 0 scores images 0 and 1 the same, lowest; concept 1 orders them as the top list does.
  const std::vector<float> texts{1, 1, 2, 3, 4, 1, 1.5f, 2, 3, 4};
  const std::vector<float> got =
      compute_similarity(SimilarityFunction::RankReorder, {images, texts, activations, n, dim, 2, 1});
  // Images by rising score 0, 1, 2, 3, 4 (activations 5, 4, 3, 2, 1) against activations 1..5: |d|^3 summed is
  // 64 + 8 + 0 + 8 + 64 for both concepts (126 for concept 0 had the tie gone the other way).
  const auto mean_score = [&](int k) {
    double sum = 0, sq = 0;
    for (int j = 0; j < 5; ++j) sum += texts[k * 5 + j], sq += double(texts[k * 5 + j]) * texts[k * 5 + j];
    return sum / std::sqrt(sq) / 5;
  };
  EXPECT_NEAR(got[0] / got[1], std::sqrt(mean_score(1) / mean_score(0)), 1e-5);
}

TEST(SoftWpmi, MatchesTheMaterialisedDefinitionWhenTermsSpanSeveralGroups) {
  const std::int64_t n = 80, d = 8, k = 70000, c = 6;
  const auto images = testing::random_values(n * d, 31, -1.f, 1.f);
  const auto texts = testing::random_values(k * d, 32, -1.f, 1.f);
  const auto activations = testing::random_values(n * c, 33, 0.f, 1.f);
  SimilarityParams params;
  params.soft_wpmi_top_k = 20;
  const SimilarityInputs inputs{images, texts, activations, n, d, k, c};
  const std::vector<float> got = compute_similarity(SimilarityFunction::SoftWpmi, inputs, params);
  const std::vector<double> want =
      materialised_soft_wpmi(images, texts, n, d, k, top_images(activations, n, c, params.soft_wpmi_top_k), params);
  ASSERT_EQ(got.size(), want.size());
  double worst = 0;
  for (std::size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
  EXPECT_LT(worst, 1e-3) << "largest difference from the materialised computation";
}

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
