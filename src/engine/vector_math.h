// Element-wise math on host arrays with oneDNN's vectorised kernels, for the similarity stage's
// billions of logs and exps (std::log and std::exp do not vectorise).
#pragma once

#include <cstddef>
#include <cstdint>

namespace clipdissect {

// data[i] = log(data[i]) for i < n.
void log_inplace(float* data, std::size_t n);

// Each row of data [rows, cols]: softmax(scale * row), in place.
void scaled_softmax_rows(float* data, std::int64_t rows, std::int64_t cols, float scale);

}  // namespace clipdissect
