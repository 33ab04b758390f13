// Binds checkpoint tensors to model parameters by name, loudly: a missing tensor, a wrong shape or a
// tensor that no module takes is an error naming the file and the tensor.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "clipdissect/weights.h"

namespace clipdissect {

class WeightBinder {
 public:
  explicit WeightBinder(const WeightMap& weights) : weights_(weights) {}

  bool has(const std::string& name) const { return weights_.contains(name); }
  const Shape& shape_of(const std::string& name) const { return weights_.at(name).shape; }
  // Float32 values of `name`, which must have `shape`.
  std::vector<float> take(const std::string& name, const Shape& shape);
  // Ditto when present, else empty (optional biases).
  std::vector<float> take_optional(const std::string& name, const Shape& shape);
  // Marks tensors that the model knowingly ignores (e.g. BatchNorm's num_batches_tracked).
  void ignore(const std::string& name) { used_.insert(name); }
  // Throws listing every tensor that no module took.
  void expect_all_used() const;

  const WeightMap& weights() const { return weights_; }

 private:
  const WeightMap& weights_;
  std::set<std::string> used_;
};

// "prefix.name", or "name" for an empty prefix.
std::string join_name(const std::string& prefix, const std::string& name);

}  // namespace clipdissect
