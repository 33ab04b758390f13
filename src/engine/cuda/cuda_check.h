// Error checks for CUDA runtime, cuBLAS and cuDNN calls: each failure becomes an Error naming the call.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "clipdissect/error.h"

namespace clipdissect::cuda {

inline void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess) fail("cuda backend: {} failed: {} ({})", call, cudaGetErrorString(status), cudaGetErrorName(status));
}
inline void check(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS) fail("cuda backend: {} failed: {}", call, cublasGetStatusString(status));
}
inline void check(cudnnStatus_t status, const char* call) {
  if (status != CUDNN_STATUS_SUCCESS) fail("cuda backend: {} failed: {}", call, cudnnGetErrorString(status));
}

// After a kernel launch: a bad launch configuration shows up here, not at the next synchronisation.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

}  // namespace clipdissect::cuda

#define CLIPDISSECT_CUDA_CHECK(call) ::clipdissect::cuda::check((call), #call)
