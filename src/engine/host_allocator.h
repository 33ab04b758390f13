// Host memory for the CPU backend's tensors, recycled through a BlockPool. Without it every large tensor
// (tens of MB at batch 32) is a fresh mmap from the C library, and the kernel zero-fills its pages on first
// touch: a fifth of a dissection's time went to page faults before this existed.
#pragma once

#include <cstddef>
#include <memory>

#include "engine/block_pool.h"

namespace clipdissect {

class HostAllocator : public std::enable_shared_from_this<HostAllocator> {
 public:
  // Keeps at most `cache_limit` bytes of freed blocks; beyond that, freed blocks go back to the system.
  explicit HostAllocator(std::size_t cache_limit);
  ~HostAllocator();
  HostAllocator(const HostAllocator&) = delete;
  HostAllocator& operator=(const HostAllocator&) = delete;

  // At least `bytes`, 64-byte aligned (2 MiB aligned and backed by huge pages where the system allows, for
  // blocks of 1 MiB and more). Returns to the pool when the last copy of the pointer is dropped.
  std::shared_ptr<void> allocate(std::size_t bytes);

 private:
  struct Block {
    void* ptr = nullptr;
    std::size_t bytes = 0;
  };
  void release(Block block);

  std::size_t cache_limit_;
  BlockPool<Block> pool_;
};

}  // namespace clipdissect
