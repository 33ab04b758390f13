// ONNX shape and data-movement operators on host buffers: Shape, Reshape, Flatten, Transpose, Concat, Split,
// Slice, Gather, Squeeze, Unsqueeze, Expand, ConstantOfShape, Constant, Identity, Dropout, Pad.
// Exporters compute reshapes from the input's shape at run time (Shape -> Gather -> Concat -> Reshape), so
// these run on int64 shape tensors as well as on float activations.
#include <algorithm>
#include <numeric>

#include "models/onnx_graph.h"

namespace clipdissect::onnx_target {

std::vector<std::int64_t> strides_of(const Shape& shape) {
  std::vector<std::int64_t> strides(shape.size(), 1);
  for (int i = static_cast<int>(shape.size()) - 2; i >= 0; --i) strides[i] = strides[i + 1] * shape[i + 1];
  return strides;
}

Shape shape_from_values(const OnnxNode& node, const Value& values) {
  Shape shape = values.ints();
  std::int64_t count = 1;
  for (std::int64_t d : shape) {
    if (d < 0 || (d > 0 && count > (std::int64_t{1} << 31) / d))
      node.fail("shape {} has a negative dimension or more than 2^31 elements", shape_to_string(shape));
    count *= d;
  }
  return shape;
}

Shape broadcast_shape(const OnnxNode& node, const std::vector<Shape>& shapes) {
  std::size_t rank = 0;
  for (const Shape& s : shapes) rank = std::max(rank, s.size());
  Shape out(rank, 1);
  for (const Shape& s : shapes)
    for (std::size_t i = 0; i < s.size(); ++i) {
      std::int64_t& o = out[rank - s.size() + i];
      if (s[i] == o || s[i] == 1) continue;
      if (o != 1) node.fail("shapes {} and {} do not broadcast", shape_to_string(shapes.front()), shape_to_string(s));
      o = s[i];
    }
  return out;
}

std::vector<std::int64_t> strided_indices(const Shape& shape, const std::vector<std::int64_t>& strides) {
  std::vector<std::int64_t> source(shape_numel(shape)), counter(shape.size(), 0);
  std::int64_t offset = 0;
  for (std::int64_t& s : source) {
    s = offset;
    for (int axis = static_cast<int>(shape.size()) - 1; axis >= 0; --axis) {
      offset += strides[axis];
      if (++counter[axis] < shape[axis]) break;
      offset -= strides[axis] * shape[axis];
      counter[axis] = 0;
    }
  }
  return source;
}

std::vector<std::int64_t> broadcast_indices(const Shape& in, const Shape& out) {
  if (in == out) return {};
  // Strides of `in` aligned to the trailing dimensions of `out`, zero where `in` is broadcast.
  std::vector<std::int64_t> strides(out.size(), 0);
  const std::vector<std::int64_t> in_strides = strides_of(in);
  for (std::size_t i = 0; i < in.size(); ++i)
    if (in[i] != 1) strides[out.size() - in.size() + i] = in_strides[i];
  return strided_indices(out, strides);
}

namespace {

template <typename T>
std::vector<T> pick(const std::vector<T>& in, const std::vector<std::int64_t>& source) {
  if (source.empty()) return in;
  std::vector<T> out(source.size());
  for (std::size_t i = 0; i < source.size(); ++i) out[i] = in[source[i]];
  return out;
}

}  // namespace

ValuePtr gather_elements(const Value& in, Shape shape, const std::vector<std::int64_t>& source, Backend& backend) {
  if (in.is_float()) return Value::floats(std::move(shape), pick(in.host(backend), source));
  return Value::ints(std::move(shape), pick(in.ints(), source), in.type());
}

namespace {

using Outputs = std::vector<ValuePtr>;

// The integer values of an input that must be known (a shape, axes, pads), or `fallback` when omitted.
std::vector<std::int64_t> int_list(const std::vector<ValuePtr>& inputs, int index,
                                   std::vector<std::int64_t> fallback = {}) {
  if (index >= static_cast<int>(inputs.size()) || !inputs[index]) return fallback;
  return inputs[index]->ints();
}

// Axes from the input (opset 13 and later) or the attribute (earlier opsets).
std::vector<std::int64_t> axes_of(const OnnxNode& node, const std::vector<ValuePtr>& inputs, int index) {
  return node.opset() >= 13 ? int_list(inputs, index) : node.attr_ints("axes");
}

Kernel make_shape(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  const std::int64_t start = node.attr_int("start", 0), end = node.attr_int("end", INT64_MAX);
  return [start, end](Backend&, const std::vector<ValuePtr>& in) -> Outputs {
    const Shape& s = in[0]->shape();
    const auto rank = static_cast<std::int64_t>(s.size());
    const auto clamp = [rank](std::int64_t i) { return std::clamp(i < 0 ? i + rank : i, std::int64_t{0}, rank); };
    const std::int64_t first = clamp(start), last = std::max(first, clamp(end));
    std::vector<std::int64_t> dims(s.begin() + first, s.begin() + last);
    return {Value::ints({last - first}, std::move(dims))};
  };
}

Kernel make_reshape(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  const bool allow_zero = node.attr_int("allowzero", 0) != 0;
  return [node, allow_zero](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs {
    const Shape& from = in[0]->shape();
    Shape to = in[1]->ints();
    int inferred = -1;
    std::int64_t known = 1;
    for (std::size_t i = 0; i < to.size(); ++i) {
      if (to[i] == 0 && !allow_zero) {
        if (i >= from.size()) node.fail("shape {} copies dimension {} of {}", shape_to_string(to), i, shape_to_string(from));
        to[i] = from[i];
      }
      if (to[i] == -1) {
        if (inferred >= 0) node.fail("shape {} has more than one -1", shape_to_string(to));
        inferred = static_cast<int>(i);
      } else if (to[i] < 0) {
        node.fail("shape {} has a negative dimension", shape_to_string(to));
      } else {
        known *= to[i];
      }
    }
    if (inferred >= 0) to[inferred] = known ? in[0]->numel() / known : 0;
    if (shape_numel(to) != in[0]->numel())
      node.fail("cannot reshape {} into {}", shape_to_string(from), shape_to_string(in[1]->ints()));
    return {in[0]->reshaped(to, backend)};
  };
}

Kernel make_flatten(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  const std::int64_t axis = node.attr_int("axis", 1);
  return [node, axis](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs {
    const Shape& s = in[0]->shape();
    const int rank = in[0]->rank();
    const int a = axis == rank ? rank : normalize_axis(node, axis, rank);
    const std::int64_t outer = std::accumulate(s.begin(), s.begin() + a, std::int64_t{1}, std::multiplies<>());
    return {in[0]->reshaped({outer, in[0]->numel() / std::max<std::int64_t>(outer, 1)}, backend)};
  };
}

Kernel make_transpose(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  const std::vector<std::int64_t> perm_attr = node.attr_ints("perm");
  return [node, perm_attr](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs {
    const Shape& s = in[0]->shape();
    std::vector<std::int64_t> perm = perm_attr;
    if (perm.empty())
      for (int i = in[0]->rank() - 1; i >= 0; --i) perm.push_back(i);
    std::vector<std::int64_t> sorted = perm;
    std::sort(sorted.begin(), sorted.end());
    for (std::size_t i = 0; i < sorted.size(); ++i)
      if (sorted[i] != static_cast<std::int64_t>(i) || sorted.size() != s.size())
        node.fail("perm {} is not a permutation of the axes of {}", shape_to_string(perm), shape_to_string(s));
    Shape out(s.size());
    std::vector<std::int64_t> stride(s.size());
    const std::vector<std::int64_t> in_strides = strides_of(s);
    for (std::size_t i = 0; i < s.size(); ++i) {
      out[i] = s[perm[i]];
      stride[i] = in_strides[perm[i]];
    }
    return {gather_elements(*in[0], out, strided_indices(out, stride), backend)};
  };
}

// Element `index` along `axis` of a row-major tensor viewed as [outer, size(axis), inner].
struct AxisView {
  std::int64_t outer = 1, size = 1, inner = 1;
  AxisView(const Shape& s, int axis) : size(s[axis]) {
    for (int i = 0; i < axis; ++i) outer *= s[i];
    for (std::size_t i = axis + 1; i < s.size(); ++i) inner *= s[i];
  }
};

template <typename T>
std::vector<T> concat_data(const std::vector<const std::vector<T>*>& parts, const std::vector<AxisView>& views) {
  std::vector<T> out;
  for (std::int64_t o = 0; o < views.front().outer; ++o)
    for (std::size_t p = 0; p < parts.size(); ++p) {
      const std::int64_t block = views[p].size * views[p].inner;
      out.insert(out.end(), parts[p]->begin() + o * block, parts[p]->begin() + (o + 1) * block);
    }
  return out;
}

Kernel make_concat(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  const std::int64_t axis_attr = node.attr_int("axis", 0);
  return [node, axis_attr](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs {
    const int axis = normalize_axis(node, axis_attr, in[0]->rank());
    Shape out = in[0]->shape();
    out[axis] = 0;
    std::vector<AxisView> views;
    for (const ValuePtr& v : in) {
      Shape expected = out;
      expected[axis] = v->shape().size() == out.size() ? v->shape()[axis] : -1;
      if (v->shape() != expected || v->is_float() != in[0]->is_float())
        node.fail("inputs {} and {} cannot be joined along axis {}", shape_to_string(in[0]->shape()),
                  shape_to_string(v->shape()), axis);
      out[axis] += v->shape()[axis];
      views.emplace_back(v->shape(), axis);
    }
    if (in[0]->is_float()) {
      std::vector<const std::vector<float>*> parts;
      for (const ValuePtr& v : in) parts.push_back(&v->host(backend));
      return {Value::floats(out, concat_data(parts, views))};
    }
    std::vector<const std::vector<std::int64_t>*> parts;
    for (const ValuePtr& v : in) parts.push_back(&v->ints());
    return {Value::ints(out, concat_data(parts, views), in[0]->type())};
  };
}

// Elements [begin, begin + step * count) along `axis`, every `step`-th.
ValuePtr slice_axis(const Value& in, int axis, std::int64_t begin, std::int64_t step, std::int64_t count,
                    Backend& backend) {
  const AxisView view(in.shape(), axis);
  Shape out = in.shape();
  out[axis] = count;
  std::vector<std::int64_t> source;
  source.reserve(view.outer * count * view.inner);
  for (std::int64_t o = 0; o < view.outer; ++o)
    for (std::int64_t k = 0; k < count; ++k)
      for (std::int64_t i = 0; i < view.inner; ++i)
        source.push_back((o * view.size + begin + k * step) * view.inner + i);
  return gather_elements(in, out, source, backend);
}

Kernel make_split(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  const std::int64_t axis_attr = node.attr_int("axis", 0);
  return [node, axis_attr](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs {
    const int axis = normalize_axis(node, axis_attr, in[0]->rank());
    const std::int64_t length = in[0]->shape()[axis];
    std::vector<std::int64_t> sizes = node.opset() >= 13 ? int_list(in, 1) : node.attr_ints("split");
    if (sizes.empty()) {
      const std::int64_t parts = node.output_count(), each = (length + parts - 1) / parts;
      for (std::int64_t p = 0; p < parts; ++p) sizes.push_back(std::max<std::int64_t>(0, std::min(each, length - p * each)));
    }
    if (static_cast<int>(sizes.size()) != node.output_count() ||
        std::accumulate(sizes.begin(), sizes.end(), std::int64_t{0}) != length)
      node.fail("split sizes {} do not divide axis {} of {} into {} outputs", shape_to_string(sizes), axis,
                shape_to_string(in[0]->shape()), node.output_count());
    Outputs out;
    std::int64_t begin = 0;
    for (std::int64_t size : sizes) {
      out.push_back(slice_axis(*in[0], axis, begin, 1, size, backend));
      begin += size;
    }
    return out;
  };
}

Kernel make_slice(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  return [node](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs {
    const bool attrs = node.opset() < 10;
    const auto starts = attrs ? node.attr_ints("starts") : int_list(in, 1);
    const auto ends = attrs ? node.attr_ints("ends") : int_list(in, 2);
    std::vector<std::int64_t> axes = attrs ? node.attr_ints("axes") : int_list(in, 3);
    std::vector<std::int64_t> steps = attrs ? std::vector<std::int64_t>{} : int_list(in, 4);
    if (axes.empty())
      for (std::size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<std::int64_t>(i));
    if (steps.empty()) steps.assign(starts.size(), 1);
    if (ends.size() != starts.size() || axes.size() != starts.size() || steps.size() != starts.size())
      node.fail("starts, ends, axes and steps differ in length ({}, {}, {}, {})", starts.size(), ends.size(),
                axes.size(), steps.size());
    ValuePtr out = in[0];
    for (std::size_t i = 0; i < starts.size(); ++i) {
      const int axis = normalize_axis(node, axes[i], in[0]->rank());
      const std::int64_t length = in[0]->shape()[axis], step = steps[i];
      if (step == 0) node.fail("slice step is 0");
      // ONNX clamps: starts to [0, length] ([0, length - 1] going backwards), ends to [-1, length].
      const auto resolve = [length](std::int64_t v, std::int64_t low, std::int64_t high) {
        return std::clamp(v < 0 ? v + length : v, low, high);
      };
      const std::int64_t begin = step > 0 ? resolve(starts[i], 0, length) : resolve(starts[i], 0, length - 1);
      const std::int64_t end = step > 0 ? resolve(ends[i], 0, length) : resolve(ends[i], -1, length - 1);
      const std::int64_t count = step > 0 ? std::max<std::int64_t>(0, (end - begin + step - 1) / step)
                                          : std::max<std::int64_t>(0, (begin - end - step - 1) / -step);
      out = slice_axis(*out, axis, begin, step, count, backend);
    }
    return {out};
  };
}

Kernel make_gather(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  const std::int64_t axis_attr = node.attr_int("axis", 0);
  return [node, axis_attr](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs {
    const int axis = normalize_axis(node, axis_attr, in[0]->rank());
    const Shape& data = in[0]->shape();
    const AxisView view(data, axis);
    Shape out(data.begin(), data.begin() + axis);
    out.insert(out.end(), in[1]->shape().begin(), in[1]->shape().end());
    out.insert(out.end(), data.begin() + axis + 1, data.end());
    std::vector<std::int64_t> source;
    source.reserve(shape_numel(out));
    for (std::int64_t o = 0; o < view.outer; ++o)
      for (std::int64_t index : in[1]->ints()) {
        if (index < -view.size || index >= view.size)
          node.fail("index {} is outside axis {} of {}", index, axis, shape_to_string(data));
        if (index < 0) index += view.size;
        for (std::int64_t i = 0; i < view.inner; ++i) source.push_back((o * view.size + index) * view.inner + i);
      }
    return {gather_elements(*in[0], out, source, backend)};
  };
}

Kernel make_unsqueeze(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  return [node](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs {
    const std::vector<std::int64_t> axes = axes_of(node, in, 1);
    const int rank = in[0]->rank() + static_cast<int>(axes.size());
    std::vector<bool> inserted(rank, false);
    for (std::int64_t a : axes) inserted[normalize_axis(node, a, rank)] = true;
    Shape out;
    auto dim = in[0]->shape().begin();
    for (int i = 0; i < rank; ++i) out.push_back(inserted[i] ? 1 : *dim++);
    return {in[0]->reshaped(out, backend)};
  };
}

Kernel make_squeeze(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  return [node](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs {
    const Shape& s = in[0]->shape();
    const std::vector<std::int64_t> axes = axes_of(node, in, 1);
    std::vector<bool> removed(s.size(), axes.empty());
    for (std::int64_t a : axes) {
      const int axis = normalize_axis(node, a, in[0]->rank());
      if (s[axis] != 1) node.fail("cannot squeeze axis {} of {}", axis, shape_to_string(s));
      removed[axis] = true;
    }
    Shape out;
    for (std::size_t i = 0; i < s.size(); ++i)
      if (!removed[i] || s[i] != 1) out.push_back(s[i]);
    return {in[0]->reshaped(out, backend)};
  };
}

Kernel make_expand(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  return [node](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs {
    const Shape out = broadcast_shape(node, {in[0]->shape(), shape_from_values(node, *in[1])});
    return {gather_elements(*in[0], out, broadcast_indices(in[0]->shape(), out), backend)};
  };
}

Kernel make_constant_of_shape(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  ValuePtr fill = node.has_attr("value") ? value_from_proto(node.attr_tensor("value"), nullptr, node.where())
                                         : Value::floats({1}, {0.f});
  if (fill->numel() != 1) node.fail("attribute 'value' must hold one element");
  return [node, fill](Backend& b, const std::vector<ValuePtr>& in) -> Outputs {
    const Shape out = shape_from_values(node, *in[0]);
    return {gather_elements(*fill, out, std::vector<std::int64_t>(shape_numel(out), 0), b)};
  };
}

Kernel make_constant(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  ValuePtr value;
  if (node.has_attr("value")) value = value_from_proto(node.attr_tensor("value"), nullptr, node.where());
  else if (node.has_attr("value_float")) value = Value::floats({}, {node.attr_float("value_float", 0)});
  else if (node.has_attr("value_int")) value = Value::ints({}, {node.attr_int("value_int", 0)});
  else if (node.has_attr("value_ints")) {
    auto ints = node.attr_ints("value_ints");
    value = Value::ints({static_cast<std::int64_t>(ints.size())}, ints);
  } else {
    node.fail("supported attributes are value, value_float, value_int and value_ints");
  }
  return [value](Backend&, const std::vector<ValuePtr>&) -> Outputs { return {value}; };
}

Kernel make_identity(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  if (node.output_count() > 1) node.fail("the dropout mask output is not supported (inference graphs drop it)");
  return [](Backend&, const std::vector<ValuePtr>& in) -> Outputs { return {in[0]}; };
}

Kernel make_pad(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  const std::string mode = node.attr_string("mode", "constant");
  if (mode != "constant") node.fail("pad mode '{}' is not supported (only 'constant')", mode);
  return [node](Backend& backend, const std::vector<ValuePtr>& in) -> Outputs {
    const Shape& s = in[0]->shape();
    const int rank = in[0]->rank();
    const std::vector<std::int64_t> given = node.opset() >= 11 ? int_list(in, 1) : node.attr_ints("pads");
    std::vector<std::int64_t> axes = int_list(in, 3);
    if (axes.empty())
      for (int i = 0; i < rank; ++i) axes.push_back(i);
    if (given.size() != 2 * axes.size()) node.fail("{} pads for {} axes", given.size(), axes.size());
    std::vector<std::int64_t> before(rank, 0), after(rank, 0);
    for (std::size_t i = 0; i < axes.size(); ++i) {
      const int axis = normalize_axis(node, axes[i], rank);
      before[axis] = given[i];
      after[axis] = given[i + axes.size()];
    }
    const float fill = node.opset() >= 11 ? (in.size() > 2 && in[2] ? in[2]->host(backend).at(0) : 0.f)
                                          : node.attr_float("value", 0.f);
    Shape out(rank);
    for (int i = 0; i < rank; ++i) {
      out[i] = s[i] + before[i] + after[i];
      if (out[i] < 0) node.fail("pads {} remove more than axis {} of {} holds", shape_to_string(given), i, shape_to_string(s));
    }
    // Index -1 marks padding; negative pads crop.
    const std::vector<std::int64_t> in_strides = strides_of(s), out_strides = strides_of(out);
    std::vector<float> result(shape_numel(out), fill);
    const std::vector<float>& data = in[0]->host(backend);
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(result.size()); ++i) {
      std::int64_t source = 0, rest = i;
      bool inside = true;
      for (int axis = 0; axis < rank && inside; ++axis) {
        const std::int64_t coordinate = rest / out_strides[axis] - before[axis];
        rest %= out_strides[axis];
        inside = coordinate >= 0 && coordinate < s[axis];
        source += coordinate * in_strides[axis];
      }
      if (inside) result[i] = data[source];
    }
    return {Value::floats(out, std::move(result))};
  };
}

}  // namespace

void add_shape_kernels(KernelTable& table) {
  table["Shape"] = make_shape;
  table["Reshape"] = make_reshape;
  table["Flatten"] = make_flatten;
  table["Transpose"] = make_transpose;
  table["Concat"] = make_concat;
  table["Split"] = make_split;
  table["Slice"] = make_slice;
  table["Gather"] = make_gather;
  table["Unsqueeze"] = make_unsqueeze;
  table["Squeeze"] = make_squeeze;
  table["Expand"] = make_expand;
  table["ConstantOfShape"] = make_constant_of_shape;
  table["Constant"] = make_constant;
  table["Identity"] = make_identity;
  table["Dropout"] = make_identity;
  table["Pad"] = make_pad;
}

}  // namespace clipdissect::onnx_target
