#include "engine/cuda/weighted_pmi.h"

#include <algorithm>
#include <memory>

#include "engine/cuda/allocator.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/weighted_pmi_kernels.h"

namespace clipdissect::cuda {

namespace {

// Image rows whose [rows, concepts] score block is kept at once while computing the log-sum-exps.
constexpr std::size_t kScoreBlockBytes = std::size_t{256} << 20;

template <typename T>
std::shared_ptr<void> to_device(CachingAllocator& allocator, std::span<const T> values) {
  std::shared_ptr<void> out = allocator.allocate(values.size_bytes(), allocator.compute_stream());
  // Pageable source: staged by the runtime before the call returns.
  CLIPDISSECT_CUDA_CHECK(cudaMemcpyAsync(out.get(), values.data(), values.size_bytes(), cudaMemcpyHostToDevice,
                                         allocator.compute_stream()));
  return out;
}

template <typename T>
T* as(const std::shared_ptr<void>& p) {
  return static_cast<T*>(p.get());
}

}  // namespace

std::vector<float> weighted_pmi(const WeightedPmiProblem& p, int device) {
  const std::shared_ptr<CachingAllocator> allocator = open_device(device);
  const cudaStream_t stream = allocator->compute_stream();
  cublasHandle_t handle = nullptr;
  CLIPDISSECT_CUDA_CHECK(cublasCreate(&handle));
  const std::unique_ptr<cublasContext, decltype(&cublasDestroy)> blas(handle, &cublasDestroy);
  CLIPDISSECT_CUDA_CHECK(cublasSetStream(handle, stream));

  const auto images = to_device(*allocator, p.images), texts = to_device(*allocator, p.texts);
  const auto members = to_device(*allocator, p.members);
  const auto membership = p.membership.empty() ? nullptr : to_device(*allocator, p.membership);

  // Each top image's log-sum-exp of its scaled scores over all concepts (the softmax's denominator),
  // from fp32 GEMMs over blocks of image rows.
  const std::int64_t block_rows = std::max<std::int64_t>(
      1, std::min(static_cast<std::int64_t>(kScoreBlockBytes / (sizeof(float) * p.concepts)), p.rows));
  const auto scores = allocator->allocate(sizeof(float) * block_rows * p.concepts, stream);
  const auto lse = allocator->allocate(sizeof(float) * p.rows, stream);
  const float one = 1.f, zero = 0.f;
  for (std::int64_t first = 0; first < p.rows; first += block_rows) {
    const std::int64_t count = std::min(block_rows, p.rows - first);
    // Row-major scores = images texts^T, i.e. column-major scores^T = texts images^T.
    CLIPDISSECT_CUDA_CHECK(cublasSgemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(p.concepts),
                                       static_cast<int>(count), static_cast<int>(p.dim), &one, as<float>(texts),
                                       static_cast<int>(p.dim), as<float>(images) + first * p.dim,
                                       static_cast<int>(p.dim), &zero, as<float>(scores),
                                       static_cast<int>(p.concepts)));
    scaled_log_sum_exp(as<float>(lse) + first, as<float>(scores), count, p.concepts, p.a, stream);
    check_launch("scaled_log_sum_exp");
  }

  const auto log_p = allocator->allocate(sizeof(double) * p.neurons * p.concepts, stream);
  member_log_probabilities(as<double>(log_p), as<float>(images), as<float>(texts), as<float>(lse),
                           as<std::int32_t>(members), as<float>(membership), p.neurons, p.concepts, p.dim, p.top_k,
                           p.a, p.min_prob, stream);
  check_launch("member_log_probabilities");
  const auto out = allocator->allocate(sizeof(float) * p.neurons * p.concepts, stream);
  subtract_log_prior(as<float>(out), as<double>(log_p), p.neurons, p.concepts, p.lambda, stream);
  check_launch("subtract_log_prior");

  std::vector<float> host(static_cast<std::size_t>(p.neurons * p.concepts));
  CLIPDISSECT_CUDA_CHECK(
      cudaMemcpyAsync(host.data(), out.get(), host.size() * sizeof(float), cudaMemcpyDeviceToHost, stream));
  CLIPDISSECT_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

}  // namespace clipdissect::cuda
