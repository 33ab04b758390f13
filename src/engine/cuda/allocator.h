// A caching device allocator: freed blocks return to a pool and serve later requests of about the same
// size, so a forward pass allocates from the driver only on its first batch.
//
// The allocator owns the backend's compute stream, so that tensors outliving their backend can still be
// freed in order. Blocks are stream-ordered on that stream: a block freed while kernels that use it are
// still queued may be handed out again at once, because later compute work runs after them. Work on
// another stream (the upload stream) first waits for the event recorded when the block was freed.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>

#include "engine/block_pool.h"

namespace clipdissect::cuda {

class CachingAllocator : public std::enable_shared_from_this<CachingAllocator> {
 public:
  explicit CachingAllocator(int device);
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // At least `bytes` of device memory, usable by work queued on `stream` (the compute stream or another).
  // The memory goes back to the pool when the last copy of the pointer is dropped.
  std::shared_ptr<void> allocate(std::size_t bytes, cudaStream_t stream);

  int device() const { return device_; }
  cudaStream_t compute_stream() const { return compute_stream_; }

 private:
  struct Block {
    void* ptr = nullptr;
    std::size_t bytes = 0;
    cudaEvent_t freed = nullptr;  // recorded on the compute stream when the block was last freed
  };
  void release(Block block);
  void free_cached();  // every pooled block back to the driver

  int device_;
  cudaStream_t compute_stream_ = nullptr;
  BlockPool<Block> pool_;
};

// The allocator of GPU `device` after checking that it exists: Error "no CUDA device: ..." with the CUDA
// runtime's reason when there is none (no driver, no GPU), and one naming the count when `device` is too high.
std::shared_ptr<CachingAllocator> open_device(int device);

}  // namespace clipdissect::cuda
