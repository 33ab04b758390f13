#include "engine/cuda/pinned_allocator.h"

#include <iterator>
#include <optional>

#include "engine/cuda/cuda_check.h"

namespace clipdissect::cuda {

namespace {

// Freed page-locked memory kept for reuse: two batches in flight, each with both pipelines' pixels, are
// 4 x 154 MB at batch 256.
constexpr std::size_t kCacheLimit = std::size_t{1} << 30;

}  // namespace

std::shared_ptr<PinnedAllocator> PinnedAllocator::for_device(int device) {
  static std::mutex mutex;
  static std::map<int, std::weak_ptr<PinnedAllocator>> allocators;
  std::lock_guard lock(mutex);
  std::shared_ptr<PinnedAllocator> allocator = allocators[device].lock();
  if (!allocator) {
    allocator = std::make_shared<PinnedAllocator>(device);
    allocators[device] = allocator;
  }
  return allocator;
}

PinnedAllocator::PinnedAllocator(int device) : device_(device) {}

PinnedAllocator::~PinnedAllocator() {
  // Every block handed out holds this allocator, so only pooled blocks remain here.
  for (const Block& block : pool_.drain()) free_block(block);
}

std::shared_ptr<void> PinnedAllocator::allocate(std::size_t bytes) {
  const std::size_t size = allocation_size(bytes);
  const std::optional<Block> pooled = pool_.take(size);
  Block block = pooled.value_or(Block{});
  CLIPDISSECT_CUDA_CHECK(cudaSetDevice(device_));  // the calling thread (a decoder) may not have used the GPU yet
  if (pooled) {
    CLIPDISSECT_CUDA_CHECK(cudaEventSynchronize(block.read));  // the caller is about to write into it
  } else {
    block.bytes = size;
    if (cudaHostAlloc(&block.ptr, size, cudaHostAllocPortable) != cudaSuccess) {
      cudaGetLastError();
      for (const Block& cached : pool_.drain()) free_block(cached);
      const cudaError_t status = cudaHostAlloc(&block.ptr, size, cudaHostAllocPortable);
      if (status != cudaSuccess)
        fail("cuda backend: cannot allocate {} MiB of page-locked host memory: {} (lower --batch-size)", size >> 20,
             cudaGetErrorString(status));
    }
    CLIPDISSECT_CUDA_CHECK(cudaEventCreateWithFlags(&block.read, cudaEventDisableTiming));
  }
  {
    std::lock_guard lock(mutex_);
    in_use_[reinterpret_cast<std::uintptr_t>(block.ptr)] = block;
  }
  std::shared_ptr<PinnedAllocator> self = shared_from_this();
  return std::shared_ptr<void>(block.ptr, [self, block](void*) { self->release(block); });
}

cudaEvent_t PinnedAllocator::read_event(const void* data, std::size_t bytes) const {
  const auto address = reinterpret_cast<std::uintptr_t>(data);
  std::lock_guard lock(mutex_);
  const auto after = in_use_.upper_bound(address);
  if (after == in_use_.begin()) return nullptr;
  const Block& block = std::prev(after)->second;
  const auto start = reinterpret_cast<std::uintptr_t>(block.ptr);
  const std::uintptr_t offset = address - start;
  return offset < block.bytes && bytes <= block.bytes - offset ? block.read : nullptr;
}

void PinnedAllocator::release(Block block) {
  {
    std::lock_guard lock(mutex_);
    in_use_.erase(reinterpret_cast<std::uintptr_t>(block.ptr));
  }
  if (!pool_.put(block.bytes, block, kCacheLimit)) free_block(block);
}

// From destructors and deleters: nothing may be thrown; a copy still reading the block is waited for.
void PinnedAllocator::free_block(const Block& block) {
  cudaEventSynchronize(block.read);
  cudaFreeHost(block.ptr);
  cudaEventDestroy(block.read);
}

}  // namespace clipdissect::cuda
