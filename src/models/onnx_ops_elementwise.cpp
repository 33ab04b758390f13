// ONNX elementwise operators: activations, arithmetic and comparisons with numpy broadcasting, Where, Cast,
// Clip. Relu and Gelu run on the backend; the rest on host buffers in float (int64 for shape arithmetic),
// in the same float operations as PyTorch's kernels where the order matters.
#include <cmath>

#include "models/onnx_graph.h"

namespace clipdissect::onnx_target {
namespace {

using Outputs = std::vector<ValuePtr>;

template <typename F>
ValuePtr map_floats(const Value& x, Backend& backend, F f) {
  const std::vector<float>& in = x.host(backend);
  std::vector<float> out(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) out[i] = f(in[i]);
  return Value::floats(x.shape(), std::move(out));
}

template <float (*f)(float)>
Kernel make_unary(const OnnxNode&, const std::vector<ValuePtr>&, Backend&) {
  return [](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs { return {map_floats(*in[0], backend, f)}; };
}

// A float activation with attributes: `make(node)` reads them once, at load time, into a float -> float.
template <typename Make>
KernelFactory parametrised_unary(Make) {
  return [](const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) -> Kernel {
    auto f = Make{}(node);
    return [f](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs { return {map_floats(*in[0], backend, f)}; };
  };
}

Kernel backend_activation(Activation act) {
  return [act](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs {
    return {Value::device(backend.activate(in[0]->tensor(backend), act))};
  };
}

Kernel make_relu(const OnnxNode&, const std::vector<ValuePtr>&, Backend&) { return backend_activation(Activation::Relu); }

Kernel make_gelu(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  if (node.attr_string("approximate", "none") != "none") node.fail("only the exact (erf) GELU is supported");
  return backend_activation(Activation::Gelu);
}

Kernel make_clip(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  return [node](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs {
    float low = -INFINITY, high = INFINITY;
    if (node.opset() < 11) {
      low = node.attr_float("min", low);
      high = node.attr_float("max", high);
    } else {
      if (in.size() > 1 && in[1]) low = in[1]->host(backend).at(0);
      if (in.size() > 2 && in[2]) high = in[2]->host(backend).at(0);
    }
    // torch.clamp: NaN stays NaN.
    return {map_floats(*in[0], backend, [low, high](float x) { return std::isnan(x) ? x : std::min(std::max(x, low), high); })};
  };
}

float sigmoid_of(float x) { return 1.f / (1.f + std::exp(-x)); }
float tanh_of(float x) { return std::tanh(x); }
float erf_of(float x) { return std::erf(x); }
float sqrt_of(float x) { return std::sqrt(x); }
float abs_of(float x) { return std::abs(x); }
float neg_of(float x) { return -x; }
float exp_of(float x) { return std::exp(x); }
float log_of(float x) { return std::log(x); }
float reciprocal_of(float x) { return 1.f / x; }
float floor_of(float x) { return std::floor(x); }
float ceil_of(float x) { return std::ceil(x); }
float hard_swish(float x) { return x * std::min(std::max(x + 3.f, 0.f), 6.f) / 6.f; }

float add_floats(float a, float b) { return a + b; }
float sub_floats(float a, float b) { return a - b; }
float mul_floats(float a, float b) { return a * b; }
float div_floats(float a, float b) { return a / b; }
// std::pow(x, 2.f) rounds differently from x * x, which is what PyTorch computes for a square.
float pow_floats(float a, float b) { return b == 2.f ? a * a : std::pow(a, b); }
float max_floats(float a, float b) { return std::max(a, b); }
float min_floats(float a, float b) { return std::min(a, b); }
float equal_floats(float a, float b) { return a == b ? 1.f : 0.f; }
float greater_floats(float a, float b) { return a > b ? 1.f : 0.f; }
float less_floats(float a, float b) { return a < b ? 1.f : 0.f; }
std::int64_t add_ints(std::int64_t a, std::int64_t b) { return a + b; }
std::int64_t sub_ints(std::int64_t a, std::int64_t b) { return a - b; }
std::int64_t mul_ints(std::int64_t a, std::int64_t b) { return a * b; }
std::int64_t max_ints(std::int64_t a, std::int64_t b) { return std::max(a, b); }
std::int64_t min_ints(std::int64_t a, std::int64_t b) { return std::min(a, b); }
std::int64_t equal_ints(std::int64_t a, std::int64_t b) { return a == b; }
std::int64_t greater_ints(std::int64_t a, std::int64_t b) { return a > b; }
std::int64_t less_ints(std::int64_t a, std::int64_t b) { return a < b; }

struct BinaryOp {
  float (*on_floats)(float, float);
  std::int64_t (*on_ints)(std::int64_t, std::int64_t);
  bool comparison;  // result is Bool
};

template <typename T>
std::vector<T> combine(const std::vector<T>& a, const std::vector<T>& b, const std::vector<std::int64_t>& ia,
                       const std::vector<std::int64_t>& ib, std::int64_t count, T (*f)(T, T)) {
  std::vector<T> out(count);
  for (std::int64_t i = 0; i < count; ++i) out[i] = f(a[ia.empty() ? i : ia[i]], b[ib.empty() ? i : ib[i]]);
  return out;
}

ValuePtr apply_binary(const OnnxNode& node, const BinaryOp& op, const Value& a, const Value& b, Backend& backend) {
  const Shape out = broadcast_shape(node, {a.shape(), b.shape()});
  const auto ia = broadcast_indices(a.shape(), out), ib = broadcast_indices(b.shape(), out);
  if (a.is_float() || b.is_float()) {
    std::vector<float> r = combine(a.host(backend), b.host(backend), ia, ib, shape_numel(out), op.on_floats);
    if (!op.comparison) return Value::floats(out, std::move(r));
    return Value::ints(out, std::vector<std::int64_t>(r.begin(), r.end()), ElementType::Bool);
  }
  if (!op.on_ints) node.fail("integer inputs are not supported");
  return Value::ints(out, combine(a.ints(), b.ints(), ia, ib, shape_numel(out), op.on_ints),
                     op.comparison ? ElementType::Bool : a.type());
}

template <float (*on_floats)(float, float), std::int64_t (*on_ints)(std::int64_t, std::int64_t), bool comparison>
Kernel make_binary(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  return [node](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs {
    static constexpr BinaryOp op{on_floats, on_ints, comparison};
    return {apply_binary(node, op, *in[0], *in[1], backend)};
  };
}

std::int64_t divide_ints(std::int64_t a, std::int64_t b) {
  if (b == 0) fail("onnx: integer division by zero");
  return a / b;
}

// Add of two same-shape backend tensors stays on the backend (residual connections).
Kernel make_add(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  static constexpr BinaryOp add{add_floats, add_ints, false};
  return [node](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs {
    if (in[0]->on_device() && in[1]->on_device() && in[0]->shape() == in[1]->shape())
      return {Value::device(backend.add(in[0]->tensor(backend), in[1]->tensor(backend), Activation::None))};
    return {apply_binary(node, add, *in[0], *in[1], backend)};
  };
}

Kernel make_where(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  return [node](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs {
    const Value &condition = *in[0], &x = *in[1], &y = *in[2];
    if (x.is_float() != y.is_float()) node.fail("X and Y differ in element type");
    const Shape out = broadcast_shape(node, {condition.shape(), x.shape(), y.shape()});
    const auto ic = broadcast_indices(condition.shape(), out), ix = broadcast_indices(x.shape(), out),
               iy = broadcast_indices(y.shape(), out);
    const std::vector<std::int64_t>& c = condition.ints();
    const std::int64_t count = shape_numel(out);
    const auto at = [](const std::vector<std::int64_t>& index, std::int64_t i) { return index.empty() ? i : index[i]; };
    // Picks from X where the condition holds, else from Y: indices into X followed by Y.
    std::vector<std::int64_t> source(count);
    for (std::int64_t i = 0; i < count; ++i) source[i] = c[at(ic, i)] ? at(ix, i) : x.numel() + at(iy, i);
    // Picked from one buffer holding X then Y.
    const Shape joined{x.numel() + y.numel()};
    if (x.is_float()) {
      std::vector<float> both = x.host(backend);
      both.insert(both.end(), y.host(backend).begin(), y.host(backend).end());
      return {gather_elements(*Value::floats(joined, std::move(both)), out, source, backend)};
    }
    std::vector<std::int64_t> both = x.ints();
    both.insert(both.end(), y.ints().begin(), y.ints().end());
    return {gather_elements(*Value::ints(joined, std::move(both), x.type()), out, source, backend)};
  };
}

Kernel make_cast(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  const std::int64_t to = node.attr_int("to", 0);
  return [node, to](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs {
    const Value& x = *in[0];
    switch (to) {
      case onnx::TensorProto::FLOAT: case onnx::TensorProto::DOUBLE: case onnx::TensorProto::FLOAT16:
        return {Value::floats(x.shape(), x.host(backend))};
      case onnx::TensorProto::BOOL: case onnx::TensorProto::INT64: case onnx::TensorProto::INT32:
      case onnx::TensorProto::INT16: case onnx::TensorProto::INT8: case onnx::TensorProto::UINT8: {
        const bool boolean = to == onnx::TensorProto::BOOL;
        std::vector<std::int64_t> out(x.numel());
        if (x.is_float()) {
          const std::vector<float>& f = x.host(backend);
          for (std::size_t i = 0; i < out.size(); ++i) out[i] = boolean ? f[i] != 0 : static_cast<std::int64_t>(f[i]);
        } else {
          for (std::size_t i = 0; i < out.size(); ++i) out[i] = boolean ? x.ints()[i] != 0 : x.ints()[i];
        }
        return {Value::ints(x.shape(), std::move(out), boolean ? ElementType::Bool : ElementType::Int64)};
      }
      default: node.fail("cast to data type {} is not supported", to);
    }
  };
}

}  // namespace

void add_elementwise_kernels(KernelTable& table) {
  table["Relu"] = make_relu;
  table["Gelu"] = make_gelu;
  table["Clip"] = make_clip;
  table["Sigmoid"] = make_unary<sigmoid_of>;
  table["Tanh"] = make_unary<tanh_of>;
  table["Erf"] = make_unary<erf_of>;
  table["Sqrt"] = make_unary<sqrt_of>;
  table["Abs"] = make_unary<abs_of>;
  table["Neg"] = make_unary<neg_of>;
  table["Exp"] = make_unary<exp_of>;
  table["Log"] = make_unary<log_of>;
  table["Reciprocal"] = make_unary<reciprocal_of>;
  table["Floor"] = make_unary<floor_of>;
  table["Ceil"] = make_unary<ceil_of>;
  table["LeakyRelu"] = parametrised_unary([](const OnnxNode& node) {
    const float alpha = node.attr_float("alpha", 0.01f);
    return [alpha](float x) { return x > 0 ? x : x * alpha; };
  });
  table["HardSigmoid"] = parametrised_unary([](const OnnxNode& node) {
    const float alpha = node.attr_float("alpha", 0.2f), beta = node.attr_float("beta", 0.5f);
    return [alpha, beta](float x) { return std::max(0.f, std::min(1.f, alpha * x + beta)); };
  });
  // torch.nn.functional.hardswish: x * min(max(x + 3, 0), 6) / 6.
  table["HardSwish"] = make_unary<hard_swish>;
  table["Add"] = make_add;
  table["Sub"] = make_binary<sub_floats, sub_ints, false>;
  table["Mul"] = make_binary<mul_floats, mul_ints, false>;
  table["Div"] = make_binary<div_floats, divide_ints, false>;
  table["Pow"] = make_binary<pow_floats, nullptr, false>;
  table["Max"] = make_binary<max_floats, max_ints, false>;
  table["Min"] = make_binary<min_floats, min_ints, false>;
  table["Equal"] = make_binary<equal_floats, equal_ints, true>;
  table["Greater"] = make_binary<greater_floats, greater_ints, true>;
  table["Less"] = make_binary<less_floats, less_ints, true>;
  table["Where"] = make_where;
  table["Cast"] = make_cast;
}

}  // namespace clipdissect::onnx_target
