// Float32 host memory for data on its way to Backend::upload. Backend::host_buffer hands out the memory that
// backend's transfers read fastest (page-locked on a GPU, so that the copy starts straight from it instead of
// going through a staging buffer); any other memory works too.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <span>

namespace clipdissect {

class HostBuffer {
 public:
  HostBuffer() = default;
  // `size` floats at owner.get(), released (or returned to their pool) with the last copy of the buffer.
  HostBuffer(std::shared_ptr<void> owner, std::size_t size) : owner_(std::move(owner)), size_(size) {}
  // `size` floats on the heap, not initialised.
  static HostBuffer on_heap(std::size_t size) {
    return HostBuffer(std::shared_ptr<void>(new float[size], [](void* p) { delete[] static_cast<float*>(p); }), size);
  }

  float* data() const { return static_cast<float*>(owner_.get()); }
  std::size_t size() const { return size_; }
  float* begin() const { return data(); }
  float* end() const { return data() + size_; }
  operator std::span<float>() const { return {data(), size_}; }
  operator std::span<const float>() const { return {data(), size_}; }
  // Keeps the first `size` values, in place.
  void shrink(std::size_t size) { size_ = std::min(size_, size); }

 private:
  std::shared_ptr<void> owner_;
  std::size_t size_ = 0;
};

// Where a producer of upload data gets its buffers (Backend::host_buffer, or HostBuffer::on_heap).
using MakeHostBuffer = std::function<HostBuffer(std::size_t floats)>;

}  // namespace clipdissect
