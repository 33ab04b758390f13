// SoftWPMI and WPMI on a CUDA GPU (dissect/similarity.cpp's weighted_pmi, same inputs and results within
// float rounding). The image-concept scores of a neuron's top images are never stored: one fused kernel
// multiplies each neuron's top image rows with a tile of concepts, turns the products into softmax
// probabilities with each image's precomputed log-sum-exp, and sums their logs.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace clipdissect::cuda {

struct WeightedPmiProblem {
  std::span<const float> images;  // [rows, dim]: normalised embeddings of the images in some neuron's top set
  std::span<const float> texts;   // [concepts, dim]: normalised text embeddings
  std::int64_t rows = 0, dim = 0, concepts = 0, neurons = 0;
  int top_k = 0;
  std::span<const std::int32_t> members;  // [neurons, top_k]: row in `images` of each neuron's j-th top image
  std::span<const float> membership;      // [top_k] SoftWPMI's p_j; empty for WPMI
  float a = 0, lambda = 0, min_prob = 0;
};

// [neurons, concepts] log p(concept | top images) - lambda * log p(concept).
std::vector<float> weighted_pmi(const WeightedPmiProblem& problem, int device);

}  // namespace clipdissect::cuda
