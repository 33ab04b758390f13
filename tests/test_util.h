// Helpers shared by the tests: reading fixture tensors and comparing float arrays.
#pragma once

#include <cmath>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "clipdissect/weights.h"

namespace clipdissect::testing {

inline std::vector<float> fixture_tensor(const WeightMap& map, const std::string& name, Shape* shape = nullptr) {
  const HostTensor& t = map.at(name);
  if (shape) *shape = t.shape;
  return to_f32(t);
}

// n values drawn uniformly from [lo, hi), reproducibly from `seed`.
inline std::vector<float> random_values(std::size_t n, unsigned seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// max |a - b| / max |b|: the error relative to the tensor's scale (an element-wise ratio is meaningless
// for outputs near zero, which carry absolute rounding noise). NaN on both sides at an index agrees; NaN on one
// side only counts as infinite error.
inline double max_relative_error(std::span<const float> actual, std::span<const float> expected) {
  EXPECT_EQ(actual.size(), expected.size());
  double worst = 0, scale = 0;
  for (std::size_t i = 0; i < std::min(actual.size(), expected.size()); ++i) {
    if (std::isnan(actual[i]) && std::isnan(expected[i])) continue;
    const double err = std::abs(double(actual[i]) - expected[i]);
    if (std::isnan(err)) return INFINITY;
    worst = std::max(worst, err);
    scale = std::max(scale, std::abs(double(expected[i])));
  }
  return scale > 0 ? worst / scale : worst;
}

// Normalises HWC uint8 crops ([N, S, S, 3]) into CHW float batches, independently of the library.
inline std::vector<float> normalize_batch(std::span<const std::byte> hwc, int count, int size,
                                          const float mean[3], const float std_dev[3]) {
  std::vector<float> out(static_cast<std::size_t>(count) * 3 * size * size);
  for (int n = 0; n < count; ++n)
    for (int c = 0; c < 3; ++c)
      for (int p = 0; p < size * size; ++p) {
        const float x = static_cast<float>(std::to_integer<int>(hwc[(static_cast<std::size_t>(n) * size * size + p) * 3 + c])) / 255.0f;
        out[(static_cast<std::size_t>(n) * 3 + c) * size * size + p] = (x - mean[c]) / std_dev[c];
      }
  return out;
}

}  // namespace clipdissect::testing
