// Freed memory blocks kept by size for reuse: the part that the CPU and CUDA caching allocators share.
// A forward pass asks for the same sizes batch after batch, so after the first batch every request is
// served from the pool instead of the operating system or the driver.
#pragma once

#include <cstddef>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

namespace clipdissect {

// Rounds a request to its size class: 512 bytes below 1 MiB, 2 MiB above, so that the same shapes map
// to the same blocks and the pool stays small.
std::size_t allocation_size(std::size_t bytes);

template <typename Block>
class BlockPool {
 public:
  // A pooled block of `size` bytes (a size class) up to twice that: larger ones stay for larger requests.
  std::optional<Block> take(std::size_t size) {
    std::lock_guard lock(mutex_);
    const auto found = blocks_.lower_bound(size);
    if (found == blocks_.end() || found->first > 2 * size) return std::nullopt;
    Block block = found->second;
    cached_bytes_ -= found->first;
    blocks_.erase(found);
    return block;
  }

  // Keeps `block` unless the pool would then hold more than `limit` bytes; false when it was not kept.
  bool put(std::size_t size, Block block, std::size_t limit = static_cast<std::size_t>(-1)) {
    std::lock_guard lock(mutex_);
    if (cached_bytes_ + size > limit) return false;
    blocks_.emplace(size, block);
    cached_bytes_ += size;
    return true;
  }

  // Empties the pool, handing every block back to the caller to free.
  std::vector<Block> drain() {
    std::lock_guard lock(mutex_);
    std::vector<Block> all;
    for (auto& [size, block] : blocks_) all.push_back(block);
    blocks_.clear();
    cached_bytes_ = 0;
    return all;
  }

 private:
  std::mutex mutex_;
  std::multimap<std::size_t, Block> blocks_;
  std::size_t cached_bytes_ = 0;
};

}  // namespace clipdissect
