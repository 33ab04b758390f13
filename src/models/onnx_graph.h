// ONNX targets, internals: the values flowing through a graph, node attributes, and the operator kernels
// (one file per operator group: onnx_ops_nn.cpp, onnx_ops_elementwise.cpp, onnx_ops_shape.cpp).
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "clipdissect/backend.h"
#include "clipdissect/error.h"
#include "io/mapped_file.h"

namespace clipdissect::onnx_target {

// Int64 also carries ONNX's narrower integer types; Bool holds 0 / 1.
enum class ElementType { Float, Int64, Bool };

class Value;
using ValuePtr = std::shared_ptr<const Value>;

// A tensor flowing through the graph: float data lives on the backend or on the host (each copy made
// once, when first asked for); integer and boolean data (shapes, indices, masks) on the host.
class Value {
 public:
  static ValuePtr floats(Shape shape, std::vector<float> data);
  static ValuePtr ints(Shape shape, std::vector<std::int64_t> data, ElementType type = ElementType::Int64);
  static ValuePtr device(Tensor tensor);

  ElementType type() const { return type_; }
  bool is_float() const { return type_ == ElementType::Float; }
  const Shape& shape() const { return shape_; }
  std::int64_t numel() const { return shape_numel(shape_); }
  int rank() const { return static_cast<int>(shape_.size()); }

  // Float data, row-major (integers converted).
  const std::vector<float>& host(Backend& backend) const;
  // Integer or boolean data; throws for a float tensor.
  const std::vector<std::int64_t>& ints() const;
  // The float data as a backend tensor.
  const Tensor& tensor(Backend& backend) const;
  bool on_device() const { return tensor_.defined(); }

  // The same data under another shape of the same size.
  ValuePtr reshaped(Shape shape, Backend& backend) const;

 private:
  ElementType type_ = ElementType::Float;
  Shape shape_;
  mutable std::shared_ptr<const std::vector<float>> floats_;
  std::shared_ptr<const std::vector<std::int64_t>> ints_;
  mutable Tensor tensor_;
};

// One node of the graph with its attributes; errors name the model file, the node and its operator.
// Kernels keep copies for their run-time errors; they share one copy of the node, which outlives the model.
class OnnxNode {
 public:
  OnnxNode(const onnx::NodeProto& proto, std::string source, int opset)
      : proto_(std::make_shared<const onnx::NodeProto>(proto)), source_(std::move(source)), opset_(opset) {}

  const std::string& op() const { return proto_->op_type(); }
  const std::string& name() const { return proto_->name(); }
  int opset() const { return opset_; }
  int input_count() const { return proto_->input_size(); }
  int output_count() const { return proto_->output_size(); }
  // "model.onnx: node '/layer1/Conv' (Conv)"
  std::string where() const;

  bool has_attr(const std::string& name) const { return find(name) != nullptr; }
  std::int64_t attr_int(const std::string& name, std::int64_t fallback) const;
  float attr_float(const std::string& name, float fallback) const;
  std::string attr_string(const std::string& name, const std::string& fallback) const;
  std::vector<std::int64_t> attr_ints(const std::string& name, std::vector<std::int64_t> fallback = {}) const;
  const onnx::TensorProto& attr_tensor(const std::string& name) const;

  template <typename... Args>
  [[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) const {
    clipdissect::fail("{}: {}", where(), fmt::format(format, std::forward<Args>(args)...));
  }

 private:
  const onnx::AttributeProto* find(const std::string& name) const;

  std::shared_ptr<const onnx::NodeProto> proto_;
  std::string source_;
  int opset_;
};

// A compiled node: inputs in the node's order (null where an optional input is omitted) -> outputs.
using Kernel = std::function<std::vector<ValuePtr>(Backend& backend, const std::vector<ValuePtr>& inputs)>;
// Compiles a node once, at load time. `constants` holds the inputs known then (initializers and values
// computed from them), null for those that depend on the image; weights are prepared on the backend here.
using KernelFactory = Kernel (*)(const OnnxNode& node, const std::vector<ValuePtr>& constants, Backend& backend);
using KernelTable = std::map<std::string, KernelFactory>;

void add_nn_kernels(KernelTable& table);
void add_elementwise_kernels(KernelTable& table);
void add_shape_kernels(KernelTable& table);
// Every supported operator, by ONNX op_type.
const KernelTable& kernel_table();

// Conv, then BatchNormalization (optional), then Relu (when `relu`) as one backend convolution.
Kernel make_fused_conv(const OnnxNode& conv, const std::vector<ValuePtr>& conv_constants, const OnnxNode* batch_norm,
                       const std::vector<ValuePtr>& batch_norm_constants, bool relu, Backend& backend);

// Input `index` of a node as a constant, or an error saying the operator needs it known at load time.
const Value& constant_input(const OnnxNode& node, const std::vector<ValuePtr>& constants, int index,
                            const char* what);
// Normalises a possibly negative axis against `rank`; an error names the node when it is out of range.
int normalize_axis(const OnnxNode& node, std::int64_t axis, int rank);

// A shape read from a tensor (ConstantOfShape, Expand, Resize sizes): an error names the node when a
// dimension is negative or the shape holds more than 2^31 elements.
Shape shape_from_values(const OnnxNode& node, const Value& values);

// Numpy-style broadcasting of `shapes` to one shape; an error names the node when they do not broadcast.
Shape broadcast_shape(const OnnxNode& node, const std::vector<Shape>& shapes);
// For each element of a tensor of shape `out` (row-major), the index of the element of a tensor of shape
// `in` broadcast to it; empty when `in` equals `out` (every element maps to itself).
std::vector<std::int64_t> broadcast_indices(const Shape& in, const Shape& out);
// out[i] = in[source[i]] (source empty: a copy), in the input's element type.
ValuePtr gather_elements(const Value& in, Shape shape, const std::vector<std::int64_t>& source, Backend& backend);
// For each element of `shape` walked row-major, its index in a buffer laid out with `strides`.
std::vector<std::int64_t> strided_indices(const Shape& shape, const std::vector<std::int64_t>& strides);
// Row-major strides of `shape`.
std::vector<std::int64_t> strides_of(const Shape& shape);

// Where tensors stored outside the model file ("external data") are read from.
class ExternalData {
 public:
  explicit ExternalData(std::filesystem::path model_path) : model_path_(std::move(model_path)) {}
  // The bytes at `location` (relative to the model's folder, which it may not leave), bounds-checked;
  // valid while this object lives (the data files are memory-mapped).
  std::span<const std::byte> read(const onnx::TensorProto& tensor);
  // The data files read so far.
  std::vector<std::filesystem::path> files() const;

 private:
  std::filesystem::path model_path_;
  std::map<std::filesystem::path, std::shared_ptr<const io::MappedFile>> files_;
};

// A TensorProto (initializer or Constant attribute) as a host value; `where` prefixes errors.
ValuePtr value_from_proto(const onnx::TensorProto& proto, ExternalData* external, const std::string& where);

}  // namespace clipdissect::onnx_target
