// ONNX graph values, node attributes and tensors read from the model (inline or external data).
#include <cstring>

#include "models/onnx_graph.h"

namespace clipdissect::onnx_target {

ValuePtr Value::floats(Shape shape, std::vector<float> data) {
  if (static_cast<std::int64_t>(data.size()) != shape_numel(shape))
    fail("onnx: {} float values for shape {}", data.size(), shape_to_string(shape));
  auto value = std::make_shared<Value>();
  value->shape_ = std::move(shape);
  value->floats_ = std::make_shared<const std::vector<float>>(std::move(data));
  return value;
}

ValuePtr Value::ints(Shape shape, std::vector<std::int64_t> data, ElementType type) {
  if (static_cast<std::int64_t>(data.size()) != shape_numel(shape))
    fail("onnx: {} integer values for shape {}", data.size(), shape_to_string(shape));
  auto value = std::make_shared<Value>();
  value->type_ = type;
  value->shape_ = std::move(shape);
  value->ints_ = std::make_shared<const std::vector<std::int64_t>>(std::move(data));
  return value;
}

ValuePtr Value::device(Tensor tensor) {
  auto value = std::make_shared<Value>();
  value->shape_ = tensor.shape();
  value->tensor_ = std::move(tensor);
  return value;
}

const std::vector<float>& Value::host(Backend& backend) const {
  if (!floats_) {
    if (ints_) floats_ = std::make_shared<const std::vector<float>>(ints_->begin(), ints_->end());
    else floats_ = std::make_shared<const std::vector<float>>(backend.download(tensor_));
  }
  return *floats_;
}

const std::vector<std::int64_t>& Value::ints() const {
  if (!ints_) fail("onnx: a float tensor {} was used where integers are expected", shape_to_string(shape_));
  return *ints_;
}

const Tensor& Value::tensor(Backend& backend) const {
  if (!tensor_.defined()) tensor_ = backend.upload(host(backend), shape_);
  return tensor_;
}

ValuePtr Value::reshaped(Shape shape, Backend& backend) const {
  if (shape_numel(shape) != numel())
    fail("onnx: cannot view {} values of shape {} as {}", numel(), shape_to_string(shape_), shape_to_string(shape));
  auto value = std::make_shared<Value>();
  value->type_ = type_;
  value->shape_ = std::move(shape);
  value->ints_ = ints_;
  if (!ints_) {
    host(backend);
    value->floats_ = floats_;
  }
  return value;
}

std::string OnnxNode::where() const { return fmt::format("{}: node '{}' ({})", source_, name(), op()); }

const onnx::AttributeProto* OnnxNode::find(const std::string& name) const {
  for (const onnx::AttributeProto& attribute : proto_->attribute())
    if (attribute.name() == name) return &attribute;
  return nullptr;
}

std::int64_t OnnxNode::attr_int(const std::string& name, std::int64_t fallback) const {
  const onnx::AttributeProto* a = find(name);
  if (!a) return fallback;
  if (a->type() != onnx::AttributeProto::INT) fail("attribute '{}' must be an integer", name);
  return a->i();
}

float OnnxNode::attr_float(const std::string& name, float fallback) const {
  const onnx::AttributeProto* a = find(name);
  if (!a) return fallback;
  if (a->type() != onnx::AttributeProto::FLOAT) fail("attribute '{}' must be a float", name);
  return a->f();
}

std::string OnnxNode::attr_string(const std::string& name, const std::string& fallback) const {
  const onnx::AttributeProto* a = find(name);
  if (!a) return fallback;
  if (a->type() != onnx::AttributeProto::STRING) fail("attribute '{}' must be a string", name);
  return a->s();
}

std::vector<std::int64_t> OnnxNode::attr_ints(const std::string& name, std::vector<std::int64_t> fallback) const {
  const onnx::AttributeProto* a = find(name);
  if (!a) return fallback;
  if (a->type() != onnx::AttributeProto::INTS) fail("attribute '{}' must be a list of integers", name);
  return {a->ints().begin(), a->ints().end()};
}

const onnx::TensorProto& OnnxNode::attr_tensor(const std::string& name) const {
  const onnx::AttributeProto* a = find(name);
  if (!a || a->type() != onnx::AttributeProto::TENSOR) fail("attribute '{}' must be a tensor", name);
  return a->t();
}

const Value& constant_input(const OnnxNode& node, const std::vector<ValuePtr>& constants, int index,
                            const char* what) {
  if (index >= static_cast<int>(constants.size()) || !constants[index])
    node.fail("input {} ({}) must be a constant or initializer, not computed from the image", index, what);
  return *constants[index];
}

int normalize_axis(const OnnxNode& node, std::int64_t axis, int rank) {
  const std::int64_t normalized = axis < 0 ? axis + rank : axis;
  if (normalized < 0 || normalized >= rank) node.fail("axis {} is outside a tensor of rank {}", axis, rank);
  return static_cast<int>(normalized);
}

const KernelTable& kernel_table() {
  static const KernelTable table = [] {
    KernelTable t;
    add_nn_kernels(t);
    add_elementwise_kernels(t);
    add_shape_kernels(t);
    return t;
  }();
  return table;
}

namespace {

std::int64_t parse_count(const std::string& text, const std::string& field, const std::string& where) {
  std::size_t used = 0;
  std::int64_t value = -1;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || value < 0)
    fail("{}: external data field '{}' is '{}', expected a non-negative integer", where, field, text);
  return value;
}

std::size_t element_size(int data_type) {
  switch (data_type) {
    case onnx::TensorProto::FLOAT: case onnx::TensorProto::INT32: return 4;
    case onnx::TensorProto::DOUBLE: case onnx::TensorProto::INT64: return 8;
    case onnx::TensorProto::FLOAT16: case onnx::TensorProto::BFLOAT16: case onnx::TensorProto::INT16: return 2;
    case onnx::TensorProto::INT8: case onnx::TensorProto::UINT8: case onnx::TensorProto::BOOL: return 1;
    default: return 0;
  }
}

template <typename T>
std::vector<T> read_raw(std::span<const std::byte> bytes) {
  std::vector<T> values(bytes.size() / sizeof(T));
  std::memcpy(values.data(), bytes.data(), values.size() * sizeof(T));
  return values;
}

// Decodes little-endian raw bytes of any supported type into float or int64 storage.
ValuePtr value_from_bytes(int data_type, Shape shape, std::span<const std::byte> bytes) {
  switch (data_type) {
    case onnx::TensorProto::FLOAT: return Value::floats(std::move(shape), read_raw<float>(bytes));
    case onnx::TensorProto::DOUBLE: {
      const auto d = read_raw<double>(bytes);
      return Value::floats(std::move(shape), std::vector<float>(d.begin(), d.end()));
    }
    case onnx::TensorProto::FLOAT16: case onnx::TensorProto::BFLOAT16: {
      HostTensor half;
      half.dtype = data_type == onnx::TensorProto::FLOAT16 ? DType::F16 : DType::BF16;
      half.shape = shape;
      half.bytes = bytes;
      return Value::floats(std::move(shape), to_f32(half));
    }
    case onnx::TensorProto::INT64: return Value::ints(std::move(shape), read_raw<std::int64_t>(bytes));
    case onnx::TensorProto::INT32: {
      const auto i = read_raw<std::int32_t>(bytes);
      return Value::ints(std::move(shape), std::vector<std::int64_t>(i.begin(), i.end()));
    }
    case onnx::TensorProto::INT16: {
      const auto i = read_raw<std::int16_t>(bytes);
      return Value::ints(std::move(shape), std::vector<std::int64_t>(i.begin(), i.end()));
    }
    case onnx::TensorProto::INT8: {
      const auto i = read_raw<std::int8_t>(bytes);
      return Value::ints(std::move(shape), std::vector<std::int64_t>(i.begin(), i.end()));
    }
    case onnx::TensorProto::UINT8: case onnx::TensorProto::BOOL: {
      const auto i = read_raw<std::uint8_t>(bytes);
      return Value::ints(std::move(shape), std::vector<std::int64_t>(i.begin(), i.end()),
                         data_type == onnx::TensorProto::BOOL ? ElementType::Bool : ElementType::Int64);
    }
    default: fail("onnx: unsupported tensor data type {}", data_type);
  }
}

}  // namespace

std::span<const std::byte> ExternalData::read(const onnx::TensorProto& tensor) {
  const std::string where = fmt::format("{}: tensor '{}'", model_path_.string(), tensor.name());
  std::string location;
  std::int64_t offset = 0, length = -1;
  for (const onnx::StringStringEntryProto& entry : tensor.external_data()) {
    if (entry.key() == "location") location = entry.value();
    else if (entry.key() == "offset") offset = parse_count(entry.value(), "offset", where);
    else if (entry.key() == "length") length = parse_count(entry.value(), "length", where);
  }
  if (location.empty()) fail("{}: external data without a 'location'", where);
  // The data file must stay inside the model's folder: a crafted model may not read arbitrary files.
  const std::filesystem::path folder = std::filesystem::weakly_canonical(std::filesystem::absolute(model_path_)).parent_path();
  const std::filesystem::path path = std::filesystem::weakly_canonical(folder / location);
  const auto [end, _] = std::mismatch(folder.begin(), folder.end(), path.begin(), path.end());
  if (std::filesystem::path(location).is_absolute() || end != folder.end())
    fail("{}: external data location '{}' is outside the model's folder {}", where, location, folder.string());
  auto& file = files_[path];
  if (!file) {
    if (!std::filesystem::exists(path)) fail("{}: external data file {} does not exist", where, path.string());
    file = io::MappedFile::open(path);
  }
  const auto size = static_cast<std::int64_t>(file->bytes().size());
  if (length < 0) length = size - std::min(offset, size);
  if (offset > size || length > size - offset)
    fail("{}: external data at offset {} with length {} runs past the end of {} ({} bytes)", where, offset, length,
         path.string(), size);
  return file->bytes().subspan(offset, length);
}

std::vector<std::filesystem::path> ExternalData::files() const {
  std::vector<std::filesystem::path> paths;
  for (const auto& [path, file] : files_) paths.push_back(path);
  return paths;
}

ValuePtr value_from_proto(const onnx::TensorProto& proto, ExternalData* external, const std::string& where) {
  Shape shape(proto.dims().begin(), proto.dims().end());
  for (std::int64_t d : shape)
    if (d < 0) fail("{}: tensor '{}' has a negative dimension in {}", where, proto.name(), shape_to_string(shape));
  const std::int64_t count = shape_numel(shape);
  const std::size_t size = element_size(proto.data_type());
  if (size == 0) fail("{}: tensor '{}' has unsupported data type {}", where, proto.name(), proto.data_type());
  std::span<const std::byte> bytes;
  if (proto.data_location() == onnx::TensorProto::EXTERNAL) {
    if (!external) fail("{}: tensor '{}' refers to external data, which is not allowed here", where, proto.name());
    bytes = external->read(proto);
  } else if (proto.has_raw_data()) {
    bytes = std::as_bytes(std::span(proto.raw_data().data(), proto.raw_data().size()));
  } else {
    // Typed fields: float_data, int32_data (also narrower ints, bool, float16 bits), int64_data, double_data.
    switch (proto.data_type()) {
      case onnx::TensorProto::FLOAT:
        if (proto.float_data_size() != count) break;
        return Value::floats(std::move(shape), {proto.float_data().begin(), proto.float_data().end()});
      case onnx::TensorProto::DOUBLE:
        if (proto.double_data_size() != count) break;
        return Value::floats(std::move(shape), {proto.double_data().begin(), proto.double_data().end()});
      case onnx::TensorProto::INT64:
        if (proto.int64_data_size() != count) break;
        return Value::ints(std::move(shape), {proto.int64_data().begin(), proto.int64_data().end()});
      case onnx::TensorProto::INT32: case onnx::TensorProto::INT16: case onnx::TensorProto::INT8:
      case onnx::TensorProto::UINT8: case onnx::TensorProto::BOOL:
        if (proto.int32_data_size() != count) break;
        return Value::ints(std::move(shape), {proto.int32_data().begin(), proto.int32_data().end()},
                           proto.data_type() == onnx::TensorProto::BOOL ? ElementType::Bool : ElementType::Int64);
      default: break;
    }
    fail("{}: tensor '{}' of shape {} has no data of its type {} with {} values", where, proto.name(),
         shape_to_string(shape), proto.data_type(), count);
  }
  if (bytes.size() != static_cast<std::size_t>(count) * size)
    fail("{}: tensor '{}' of shape {} holds {} bytes, expected {}", where, proto.name(), shape_to_string(shape),
         bytes.size(), count * size);
  return value_from_bytes(proto.data_type(), std::move(shape), bytes);
}

}  // namespace clipdissect::onnx_target
