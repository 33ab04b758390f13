// Engine tensors: a logical shape plus storage owned by a backend. Model code never touches the data;
// the backend keeps it in whatever layout its kernels prefer (blocked for oneDNN convolutions, device
// memory for CUDA) and converts only when the host asks for it.
#pragma once

#include <cstdint>
#include <memory>

#include "clipdissect/weights.h"

namespace clipdissect {

class Backend;

// Backend-defined storage: CPU keeps a oneDNN memory, CUDA a device allocation.
class TensorStorage {
 public:
  virtual ~TensorStorage() = default;
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(Shape shape, std::shared_ptr<TensorStorage> storage) : shape_(std::move(shape)), storage_(std::move(storage)) {}

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  std::int64_t dim(int axis) const { return shape_.at(axis < 0 ? shape_.size() + axis : axis); }
  std::int64_t numel() const { return shape_numel(shape_); }

  TensorStorage* storage() const { return storage_.get(); }

 private:
  Shape shape_;
  std::shared_ptr<TensorStorage> storage_;
};

}  // namespace clipdissect
