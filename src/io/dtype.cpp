#include "clipdissect/dtype.h"

#include <bit>
#include <cstring>

namespace clipdissect {

namespace {
struct DTypeInfo {
  DType dtype;
  std::size_t size;
  std::string_view name;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::F32, 4, "F32"}, {DType::F16, 2, "F16"}, {DType::BF16, 2, "BF16"}, {DType::F64, 8, "F64"},
    {DType::I64, 8, "I64"}, {DType::I32, 4, "I32"}, {DType::I16, 2, "I16"},   {DType::I8, 1, "I8"},
    {DType::U8, 1, "U8"},   {DType::Bool, 1, "BOOL"},
};
const DTypeInfo& info(DType dtype) { return kDTypes[static_cast<int>(dtype)]; }
}  // namespace

std::size_t dtype_size(DType dtype) { return info(dtype).size; }
std::string_view dtype_name(DType dtype) { return info(dtype).name; }

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& entry : kDTypes)
    if (entry.name == name) return entry.dtype;
  return std::nullopt;
}

float half_to_float(std::uint16_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  std::uint32_t exponent = (bits >> 10) & 0x1fu;
  std::uint32_t mantissa = bits & 0x3ffu;
  std::uint32_t out;
  if (exponent == 0x1f) {
    out = sign | 0x7f800000u | (mantissa << 13);  // inf / nan
  } else if (exponent != 0) {
    out = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    out = sign;
  } else {  // subnormal half: normalise
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    out = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(out);
}

float bfloat16_to_float(std::uint16_t bits) { return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16); }

std::uint16_t float_to_bfloat16(float value) {
  std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}

}  // namespace clipdissect
