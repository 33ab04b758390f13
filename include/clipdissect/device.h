// Where models run (the CPU or a CUDA GPU) and in which floating-point type a GPU computes.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "clipdissect/backend.h"

namespace clipdissect {

// The element type a CUDA backend stores activations and weights in; products and sums accumulate in
// float32 whichever is chosen. The CPU backend always computes in float32.
enum class Precision { F32, F16, BF16 };

// "fp32", "fp16", "bf16".
std::optional<Precision> parse_precision(std::string_view name);
std::string_view precision_name(Precision precision);

struct Device {
  bool cuda = false;
  int index = 0;  // CUDA device ordinal
  bool operator==(const Device&) const = default;
};

// "cpu", "cuda" (device 0) or "cuda:N"; throws Error naming the expected forms otherwise.
Device parse_device(std::string_view name);
std::string device_name(const Device& device);

// Whether this build has the CUDA backend (-DCLIPDISSECT_CUDA=ON).
bool cuda_compiled();
// The GPUs the CUDA runtime sees; 0 without CUDA, without a driver or without a GPU.
int cuda_device_count();

// A CUDA backend on GPU `device`. Throws Error on a build without CUDA (saying how to build it) and when
// the device does not exist (with the CUDA runtime's own reason, e.g. no driver or no GPU).
std::unique_ptr<Backend> make_cuda_backend(int device, Precision precision);

// make_cpu_backend(threads) or make_cuda_backend(device.index, precision).
std::unique_ptr<Backend> make_backend(const Device& device, Precision precision, int threads);

}  // namespace clipdissect
