// How the CUDA backends of this process have run their convolutions: as cuDNN's fused conv + bias + ReLU call,
// or as a convolution followed by our epilogue kernel. The GPU tests check with it that the fused path runs
// where cuDNN offers it, since either path gives the same values.
#pragma once

#include <cstdint>

namespace clipdissect::cuda {

struct ConvolutionCounts {
  std::int64_t fused = 0;
  std::int64_t separate = 0;
};

ConvolutionCounts convolution_counts();

}  // namespace clipdissect::cuda
