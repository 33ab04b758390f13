#include "engine/host_allocator.h"

#include <malloc.h>
#include <sys/mman.h>

#include <cstdlib>

#include "clipdissect/error.h"

namespace clipdissect {
namespace {

constexpr std::size_t kHugePage = std::size_t{2} << 20;

void* allocate_block(std::size_t bytes) {
  const bool huge = bytes % kHugePage == 0;  // allocation_size rounds blocks of 1 MiB and more to 2 MiB
  void* ptr = std::aligned_alloc(huge ? kHugePage : 64, bytes);
  // Fewer page faults and TLB misses in the GEMMs; only advice, so a refusal changes nothing.
  if (ptr && huge) madvise(ptr, bytes, MADV_HUGEPAGE);
  return ptr;
}

}  // namespace

HostAllocator::HostAllocator(std::size_t cache_limit) : cache_limit_(cache_limit) {}

HostAllocator::~HostAllocator() {
  for (const Block& block : pool_.drain()) std::free(block.ptr);
}

std::shared_ptr<void> HostAllocator::allocate(std::size_t bytes) {
  const std::size_t size = allocation_size(bytes);
  Block block = pool_.take(size).value_or(Block{});
  if (!block.ptr) {
    block = {allocate_block(size), size};
    if (!block.ptr) {
      for (const Block& cached : pool_.drain()) std::free(cached.ptr);
      block.ptr = allocate_block(size);
    }
    if (!block.ptr) fail("cpu backend: cannot allocate {} MiB of memory (lower --batch-size)", size >> 20);
  }
  std::shared_ptr<HostAllocator> self = shared_from_this();
  return std::shared_ptr<void>(block.ptr, [self, block](void*) { self->release(block); });
}

void HostAllocator::release(Block block) {
  if (!pool_.put(block.bytes, block, cache_limit_)) std::free(block.ptr);
}

void keep_freed_heap_memory() {
  // Below 32 MiB from the heap rather than fresh mappings (larger blocks are the tensors, pooled above);
  // up to 256 MiB of free memory at the top of a heap stays there.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

}  // namespace clipdissect
