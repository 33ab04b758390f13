#include "engine/cuda/allocator.h"

#include "engine/cuda/cuda_check.h"

namespace clipdissect::cuda {

std::shared_ptr<CachingAllocator> open_device(int device) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess)
    fail("no CUDA device: cudaGetDeviceCount failed: {} ({})", cudaGetErrorString(status), cudaGetErrorName(status));
  if (count == 0) fail("no CUDA device: cudaGetDeviceCount found none");
  if (device < 0 || device >= count)
    fail("--device cuda:{}: no such GPU ({} CUDA device{} present, numbered from 0)", device, count,
         count == 1 ? "" : "s");
  return std::make_shared<CachingAllocator>(device);
}

CachingAllocator::CachingAllocator(int device) : device_(device) {
  CLIPDISSECT_CUDA_CHECK(cudaSetDevice(device_));
  CLIPDISSECT_CUDA_CHECK(cudaStreamCreateWithFlags(&compute_stream_, cudaStreamNonBlocking));
}

CachingAllocator::~CachingAllocator() {
  // Blocks still in use hold a shared_ptr to this allocator, so only pooled blocks remain here; no error
  // may escape a destructor.
  cudaSetDevice(device_);
  cudaStreamSynchronize(compute_stream_);
  for (const Block& block : pool_.drain()) {
    cudaFree(block.ptr);
    if (block.freed) cudaEventDestroy(block.freed);
  }
  cudaStreamDestroy(compute_stream_);
}

std::shared_ptr<void> CachingAllocator::allocate(std::size_t bytes, cudaStream_t stream) {
  const std::size_t size = allocation_size(bytes);
  Block block = pool_.take(size).value_or(Block{});
  if (!block.ptr) {
    block.bytes = size;
    CLIPDISSECT_CUDA_CHECK(cudaSetDevice(device_));
    if (cudaMalloc(&block.ptr, size) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky out-of-memory status before retrying
      free_cached();
      const cudaError_t status = cudaMalloc(&block.ptr, size);
      if (status != cudaSuccess)
        fail("cuda backend: cannot allocate {} MiB on GPU {}: {} (lower --batch-size)", size >> 20, device_,
             cudaGetErrorString(status));
    }
    CLIPDISSECT_CUDA_CHECK(cudaEventCreateWithFlags(&block.freed, cudaEventDisableTiming));
  } else if (stream != compute_stream_) {
    CLIPDISSECT_CUDA_CHECK(cudaStreamWaitEvent(stream, block.freed, 0));
  }
  std::shared_ptr<CachingAllocator> self = shared_from_this();
  return std::shared_ptr<void>(block.ptr, [self, block](void*) { self->release(block); });
}

void CachingAllocator::release(Block block) {
  // Called from a deleter: report nothing, a failed record only delays reuse to the next synchronisation.
  if (cudaEventRecord(block.freed, compute_stream_) != cudaSuccess) cudaStreamSynchronize(compute_stream_);
  pool_.put(block.bytes, block);
}

void CachingAllocator::free_cached() {
  CLIPDISSECT_CUDA_CHECK(cudaDeviceSynchronize());
  for (const Block& block : pool_.drain()) {
    CLIPDISSECT_CUDA_CHECK(cudaFree(block.ptr));
    CLIPDISSECT_CUDA_CHECK(cudaEventDestroy(block.freed));
  }
}

}  // namespace clipdissect::cuda
