#include <algorithm>
#include <cmath>

#include "engine/cuda/weighted_pmi_kernels.h"

namespace clipdissect::cuda {
namespace {

// member_log_probabilities' tiling: a block of 16 x 16 threads computes 64 member rows x 64 concepts of one
// neuron, 4 x 4 per thread, stepping through the embedding dimension 16 at a time.
constexpr int kTile = 64, kStep = 16, kPerThread = 4, kSide = kTile / kPerThread;

__global__ void scaled_log_sum_exp_kernel(float* lse, const float* scores, std::int64_t concepts, float a) {
  __shared__ float partial[32];
  const float* row = scores + blockIdx.x * concepts;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  // Pass 1: the row maximum.
  float m = -INFINITY;
  for (std::int64_t k = threadIdx.x; k < concepts; k += blockDim.x) m = fmaxf(m, a * row[k]);
  for (int offset = 16; offset > 0; offset /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
  if (lane == 0) partial[warp] = m;
  __syncthreads();
  m = partial[0];
  for (int w = 1; w < warps; ++w) m = fmaxf(m, partial[w]);
  __syncthreads();
  // Pass 2: the sum of exponentials.
  float sum = 0.f;
  for (std::int64_t k = threadIdx.x; k < concepts; k += blockDim.x) sum += expf(a * row[k] - m);
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) partial[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int w = 0; w < warps; ++w) total += partial[w];
    lse[blockIdx.x] = m + logf(total);
  }
}

__global__ void member_log_probabilities_kernel(double* log_p, const float* images, const float* texts,
                                                const float* lse, const std::int32_t* members,
                                                const float* membership, std::int64_t concepts, std::int64_t dim,
                                                int top_k, float a, float min_prob) {
  __shared__ float image_tile[kStep][kTile];    // [d][member row]
  __shared__ float concept_tile[kStep][kTile];  // [d][concept]
  __shared__ double column_sums[kSide][kTile];
  const std::int64_t neuron = blockIdx.x, first_concept = std::int64_t{blockIdx.y} * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y, thread = ty * kSide + tx;
  const std::int32_t* neuron_members = members + neuron * top_k;
  double sums[kPerThread] = {0, 0, 0, 0};

  for (int first_member = 0; first_member < top_k; first_member += kTile) {
    float acc[kPerThread][kPerThread] = {};
    for (std::int64_t d0 = 0; d0 < dim; d0 += kStep) {
      // 64 rows x 16 dims of each operand: 4 values per thread, consecutive threads along d.
      for (int l = thread; l < kTile * kStep; l += kSide * kSide) {
        const int r = l / kStep, dd = l % kStep;
        const std::int64_t d = d0 + dd;
        const int member = first_member + r;
        const std::int64_t concept_index = first_concept + r;
        image_tile[dd][r] = member < top_k && d < dim ? images[std::int64_t{neuron_members[member]} * dim + d] : 0.f;
        concept_tile[dd][r] = concept_index < concepts && d < dim ? texts[concept_index * dim + d] : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int dd = 0; dd < kStep; ++dd) {
        float x[kPerThread], y[kPerThread];
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) {
          x[i] = image_tile[dd][ty * kPerThread + i];
          y[i] = concept_tile[dd][tx * kPerThread + i];
        }
#pragma unroll
        for (int i = 0; i < kPerThread; ++i)
#pragma unroll
          for (int j = 0; j < kPerThread; ++j) acc[i][j] = fmaf(x[i], y[j], acc[i][j]);
      }
      __syncthreads();
    }
    // The reference's float operations on the softmax probability s: 1 + p (s - 1) + min_prob, or s + min_prob,
    // each rounded on its own as on the CPU (nvcc would fuse the multiply and add: about 1e-5 apart per term).
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int member = first_member + ty * kPerThread + i;
      if (member >= top_k) continue;
      const float row_lse = lse[neuron_members[member]];
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const float s = expf(a * acc[i][j] - row_lse);
        const float term =
            membership ? __fadd_rn(__fadd_rn(1.0f, __fmul_rn(membership[member], __fsub_rn(s, 1.0f))), min_prob)
                       : __fadd_rn(s, min_prob);
        sums[j] += static_cast<double>(logf(term));
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) column_sums[ty][tx * kPerThread + j] = sums[j];
  __syncthreads();
  if (thread < kTile && first_concept + thread < concepts) {
    double total = 0;
    for (int r = 0; r < kSide; ++r) total += column_sums[r][thread];
    log_p[neuron * concepts + first_concept + thread] = total;
  }
}

// One thread per concept: the column's log-sum-exp over neurons, then every entry of the column.
__global__ void subtract_log_prior_kernel(float* out, const double* log_p, std::int64_t neurons, std::int64_t concepts,
                                          float lambda) {
  const std::int64_t k = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x;
  if (k >= concepts) return;
  double m = -INFINITY;
  for (std::int64_t c = 0; c < neurons; ++c) m = fmax(m, log_p[c * concepts + k]);
  double sum = 0;
  for (std::int64_t c = 0; c < neurons; ++c) sum += exp(log_p[c * concepts + k] - m);
  const double log_prior = m + log(sum) - log(static_cast<double>(neurons));
  for (std::int64_t c = 0; c < neurons; ++c)
    out[c * concepts + k] = static_cast<float>(log_p[c * concepts + k] - lambda * log_prior);
}

}  // namespace

void scaled_log_sum_exp(float* lse, const float* scores, std::int64_t rows, std::int64_t concepts, float a,
                        cudaStream_t stream) {
  scaled_log_sum_exp_kernel<<<static_cast<unsigned>(rows), 256, 0, stream>>>(lse, scores, concepts, a);
}

void member_log_probabilities(double* log_p, const float* images, const float* texts, const float* lse,
                              const std::int32_t* members, const float* membership, std::int64_t neurons,
                              std::int64_t concepts, std::int64_t dim, int top_k, float a, float min_prob,
                              cudaStream_t stream) {
  // Neurons along x: a grid's y extent stops at 65,535, x's at 2^31 - 1.
  const dim3 grid(static_cast<unsigned>(neurons), static_cast<unsigned>((concepts + kTile - 1) / kTile));
  member_log_probabilities_kernel<<<grid, dim3(kSide, kSide), 0, stream>>>(log_p, images, texts, lse, members,
                                                                           membership, concepts, dim, top_k, a,
                                                                           min_prob);
}

void subtract_log_prior(float* out, const double* log_p, std::int64_t neurons, std::int64_t concepts, float lambda,
                        cudaStream_t stream) {
  subtract_log_prior_kernel<<<static_cast<unsigned>((concepts + 255) / 256), 256, 0, stream>>>(out, log_p, neurons,
                                                                                                concepts, lambda);
}

}  // namespace clipdissect::cuda
