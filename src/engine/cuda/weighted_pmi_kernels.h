// Launchers of weighted_pmi's kernels (weighted_pmi_kernels.cu); all queue on `stream` and return.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace clipdissect::cuda {

// lse[r] = log sum_k exp(a * scores[r, k]) over rows of scores [rows, concepts].
void scaled_log_sum_exp(float* lse, const float* scores, std::int64_t rows, std::int64_t concepts, float a,
                        cudaStream_t stream);

// log_p[c, k] = sum_j log(1 + p_j (s_jk - 1) + min_prob) (SoftWPMI; membership non-null) or
// sum_j log(s_jk + min_prob) (WPMI), where s_jk = exp(a * <images[members[c, j]], texts[k]> - lse[members[c, j]]).
void member_log_probabilities(double* log_p, const float* images, const float* texts, const float* lse,
                              const std::int32_t* members, const float* membership, std::int64_t neurons,
                              std::int64_t concepts, std::int64_t dim, int top_k, float a, float min_prob,
                              cudaStream_t stream);

// out[c, k] = log_p[c, k] - lambda * (logsumexp_c log_p[c, k] - log C), in float32.
void subtract_log_prior(float* out, const double* log_p, std::int64_t neurons, std::int64_t concepts, float lambda,
                        cudaStream_t stream);

}  // namespace clipdissect::cuda
