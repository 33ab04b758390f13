// Page-locked host memory for uploads (Backend::host_buffer on a GPU): preprocessing writes each batch
// straight into it, and the copy engine reads it from there while the CPU goes on, with no staging copy.
//
// One allocator per GPU serves every CUDA backend of the process on that GPU (describe runs CLIP and the
// target on two backends when their precisions differ), so a backend can copy from a buffer the other one
// handed out. Freed blocks are pooled; a block is handed out again only after the copies that read it are
// done: each upload records the block's event after its copy, and reuse waits for that event.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "engine/block_pool.h"

namespace clipdissect::cuda {

class PinnedAllocator : public std::enable_shared_from_this<PinnedAllocator> {
 public:
  // The allocator of GPU `device`, shared while anything holds it.
  static std::shared_ptr<PinnedAllocator> for_device(int device);

  explicit PinnedAllocator(int device);
  ~PinnedAllocator();
  PinnedAllocator(const PinnedAllocator&) = delete;
  PinnedAllocator& operator=(const PinnedAllocator&) = delete;

  // At least `bytes` of page-locked memory, from any thread; back to the pool with the last copy of the pointer.
  std::shared_ptr<void> allocate(std::size_t bytes);

  // The event to record after a copy that reads [data, data + bytes), when that range lies in a block handed
  // out and not yet freed; null when it does not (pageable memory, or another GPU's buffer).
  cudaEvent_t read_event(const void* data, std::size_t bytes) const;

 private:
  struct Block {
    void* ptr = nullptr;
    std::size_t bytes = 0;
    cudaEvent_t read = nullptr;  // recorded after each copy from the block
  };
  void release(Block block);
  static void free_block(const Block& block);

  int device_;
  BlockPool<Block> pool_;
  mutable std::mutex mutex_;
  std::map<std::uintptr_t, Block> in_use_;  // by start address
};

}  // namespace clipdissect::cuda
