#include "models/weight_binder.h"

#include "clipdissect/error.h"

namespace clipdissect {

std::vector<float> WeightBinder::take(const std::string& name, const Shape& shape) {
  const HostTensor& tensor = weights_.at(name);
  if (tensor.shape != shape)
    fail("{}: tensor '{}' has shape {}, expected {}", weights_.source(), name, shape_to_string(tensor.shape),
         shape_to_string(shape));
  used_.insert(name);
  return to_f32(tensor);
}

std::vector<float> WeightBinder::take_optional(const std::string& name, const Shape& shape) {
  return has(name) ? take(name, shape) : std::vector<float>{};
}

void WeightBinder::expect_all_used() const {
  std::string unused;
  int count = 0;
  for (const HostTensor& tensor : weights_.tensors()) {
    if (used_.count(tensor.name)) continue;
    if (++count <= 10) unused += (unused.empty() ? "" : ", ") + tensor.name;
  }
  if (count > 0)
    fail("{}: {} unexpected tensor(s) that the inferred architecture does not use: {}{} (is this the right model "
         "type?)",
         weights_.source(), count, unused, count > 10 ? ", ..." : "");
}

std::string join_name(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

}  // namespace clipdissect
