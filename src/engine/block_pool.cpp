#include "engine/block_pool.h"

#include <algorithm>

namespace clipdissect {

std::size_t allocation_size(std::size_t bytes) {
  constexpr std::size_t kSmall = 512, kLarge = std::size_t{2} << 20, kLargeFrom = std::size_t{1} << 20;
  const std::size_t unit = bytes < kLargeFrom ? kSmall : kLarge;
  return std::max<std::size_t>(unit, (bytes + unit - 1) / unit * unit);
}

}  // namespace clipdissect
