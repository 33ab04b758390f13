#include "clipdissect/device.h"

#include <charconv>

#include "clipdissect/error.h"

namespace clipdissect {

namespace {

struct NamedPrecision {
  std::string_view name;
  Precision precision;
};
constexpr NamedPrecision kPrecisions[] = {
    {"fp32", Precision::F32}, {"fp16", Precision::F16}, {"bf16", Precision::BF16}};

}  // namespace

std::optional<Precision> parse_precision(std::string_view name) {
  for (const auto& entry : kPrecisions)
    if (entry.name == name) return entry.precision;
  return std::nullopt;
}

std::string_view precision_name(Precision precision) {
  for (const auto& entry : kPrecisions)
    if (entry.precision == precision) return entry.name;
  return "unknown";
}

Device parse_device(std::string_view name) {
  if (name == "cpu") return {};
  if (name == "cuda") return {true, 0};
  constexpr std::string_view prefix = "cuda:";
  if (name.starts_with(prefix)) {
    const std::string_view digits = name.substr(prefix.size());
    int index = -1;
    const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (error == std::errc() && end == digits.data() + digits.size() && !digits.empty() && index >= 0)
      return {true, index};
  }
  fail("--device: '{}' is not a device (expected cpu, cuda or cuda:N with N a GPU number)", name);
}

std::string device_name(const Device& device) {
  return device.cuda ? "cuda:" + std::to_string(device.index) : "cpu";
}

std::unique_ptr<Backend> make_backend(const Device& device, Precision precision, int threads) {
  if (device.cuda) return make_cuda_backend(device.index, precision);
  if (precision != Precision::F32)
    fail("--precision {}: the CPU backend computes in fp32 only (use --device cuda for fp16 or bf16)",
         precision_name(precision));
  return make_cpu_backend(threads);
}

#ifndef CLIPDISSECT_WITH_CUDA
bool cuda_compiled() { return false; }
int cuda_device_count() { return 0; }

std::unique_ptr<Backend> make_cuda_backend(int device, Precision) {
  fail("--device cuda:{}: this clipdissect was built without CUDA; rebuild it with -DCLIPDISSECT_CUDA=ON "
       "(needs the CUDA toolkit with cuBLAS and cuDNN)",
       device);
}
#endif

}  // namespace clipdissect
