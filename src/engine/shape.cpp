#include <fmt/format.h>
#include <fmt/ranges.h>

#include "clipdissect/error.h"
#include "clipdissect/weights.h"

namespace clipdissect {

std::int64_t shape_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) {
    if (d < 0 || (d > 0 && n > INT64_MAX / d)) fail("shape {} has a negative or overflowing size", fmt::join(shape, "x"));
    n *= d;
  }
  return n;
}

std::string shape_to_string(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

}  // namespace clipdissect
