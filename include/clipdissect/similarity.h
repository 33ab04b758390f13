// The similarity functions of CLIP-Dissect between neurons and concepts (the reference's similarity.py),
// computed from the embeddings without materialising the N x K image-concept matrix where the function
// allows: SoftWPMI, WPMI and rank reorder only need the rows of images that are in some neuron's top set.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "clipdissect/device.h"

namespace clipdissect {

enum class SimilarityFunction { SoftWpmi, Wpmi, RankReorder, Cos, CosCubed };

// "soft_wpmi", "wpmi", "rank_reorder", "cos", "cos3" (also the reference's "cos_similarity",
// "cos_similarity_cubed").
std::optional<SimilarityFunction> parse_similarity_function(std::string_view name);
std::string_view similarity_function_name(SimilarityFunction function);

// The reference's defaults.
struct SimilarityParams {
  int soft_wpmi_top_k = 100;
  float soft_wpmi_a = 10, soft_wpmi_lambda = 1, p_start = 0.998f, p_end = 0.97f;
  int wpmi_top_k = 28;
  float wpmi_a = 2, wpmi_lambda = 0.6f;
  float min_prob = 1e-7f;
  float rank_p = 3, rank_top_fraction = 0.05f, rank_scale_p = 0.5f;
  unsigned rank_seed = 0;  // rank reorder's random baseline (scales each neuron's row only)
  float cos_cubed_min_norm = 1e-3f;
};

// Row-major matrices.
struct SimilarityInputs {
  std::span<const float> image_embeddings;  // [N, D], un-normalised CLIP image features
  std::span<const float> text_embeddings;   // [K, D], un-normalised CLIP text features
  std::span<const float> activations;       // [N, C], per-image neuron summaries
  std::int64_t images = 0, dim = 0, concepts = 0, neurons = 0;
  // Each neuron's top images when already known ([C][k], descending), else ranked from the activations.
  // Lets a caller reproduce a recorded tie order.
  const std::vector<std::vector<std::int32_t>>* top_images = nullptr;
};

// The images each neuron ranks highest, descending, in torch.topk's order (ties included): [C][k].
std::vector<std::vector<std::int32_t>> top_images(std::span<const float> activations, std::int64_t images,
                                                  std::int64_t neurons, int k);

// The number of top images a function needs (0 for cos, cos3).
int required_top_images(SimilarityFunction function, std::int64_t images, const SimilarityParams& params);

// [C, K] similarity of every neuron to every concept.
std::vector<float> compute_similarity(SimilarityFunction function, const SimilarityInputs& inputs,
                                      const SimilarityParams& params = {});
// The same on `device`: with a CUDA device, SoftWPMI and WPMI run on that GPU (equal to the CPU's within
// float rounding: the image-concept products are summed in another order); the other functions run on the
// CPU. Throws Error on a build without CUDA.
std::vector<float> compute_similarity(SimilarityFunction function, const SimilarityInputs& inputs,
                                      const SimilarityParams& params, const Device& device);

}  // namespace clipdissect
