// Math on host arrays with oneDNN's kernels, for the similarity stage's billions of logs and exps (std::log and
// std::exp do not vectorise) and its matrix products.
#pragma once

#include <cstddef>
#include <cstdint>

namespace clipdissect {

// data[i] = log(data[i]) for i < n.
void log_inplace(float* data, std::size_t n);

// Each row of data [rows, cols]: softmax(scale * row), in place.
void scaled_softmax_rows(float* data, std::int64_t rows, std::int64_t cols, float scale);

// Row-major c = alpha * op(a) * op(b) + beta * c, op(a) [m, k], op(b) [k, n], in float32 (oneDNN's sgemm).
// Its threads are the OpenMP threads of the rest of the program: a BLAS with a thread pool of its own, called
// between OpenMP loops, had its threads and OpenMP's idle ones spin against each other for the cores.
void sgemm(bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
           const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
           std::int64_t ldc);

}  // namespace clipdissect
