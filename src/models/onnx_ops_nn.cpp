// ONNX network operators: Conv, BatchNormalization, LayerNormalization, Gemm and MatMul with a constant
// weight, pooling on the backend; ConvTranspose, MatMul of two activations, Softmax, ReduceMean/ReduceSum,
// Resize and the pooling variants the backend lacks on host buffers.

#include <cmath>

#include "engine/vector_math.h"
#include "models/layers.h"
#include "models/onnx_graph.h"

namespace clipdissect::onnx_target {
namespace {

using Outputs = std::vector<ValuePtr>;

// A 2-D window (kernel, stride, padding, dilation) that the backend's square, symmetric kernels take.
struct Window {
  int kernel = 1, stride = 1, padding = 0;
};

// Reads kernel_shape / strides / pads / dilations and checks the backend can run them.
Window square_window(const OnnxNode& node, std::vector<std::int64_t> kernel_shape) {
  const auto strides = node.attr_ints("strides", {1, 1}), pads = node.attr_ints("pads", {0, 0, 0, 0}),
             dilations = node.attr_ints("dilations", {1, 1});
  const std::string auto_pad = node.attr_string("auto_pad", "NOTSET");
  if (auto_pad != "NOTSET" && auto_pad != "VALID")
    node.fail("auto_pad '{}' is not supported (export with explicit pads)", auto_pad);
  if (kernel_shape.size() != 2 || strides.size() != 2 || pads.size() != 4 || dilations.size() != 2)
    node.fail("only 2-D windows are supported (kernel_shape {}, strides {}, pads {})", shape_to_string(kernel_shape),
              shape_to_string(strides), shape_to_string(pads));
  if (kernel_shape[0] != kernel_shape[1] || strides[0] != strides[1] || dilations != std::vector<std::int64_t>{1, 1} ||
      pads[0] != pads[1] || pads[0] != pads[2] || pads[0] != pads[3])
    node.fail("kernel_shape {}, strides {}, pads {}, dilations {}: only square kernels, equal strides, equal pads "
              "on every side and no dilation are supported",
              shape_to_string(kernel_shape), shape_to_string(strides), shape_to_string(pads),
              shape_to_string(dilations));
  if (node.attr_int("ceil_mode", 0) != 0) node.fail("ceil_mode 1 is not supported");
  return {static_cast<int>(kernel_shape[0]), static_cast<int>(strides[0]), static_cast<int>(pads[0])};
}

std::vector<float> optional_constant(const OnnxNode& node, const std::vector<ValuePtr>& constants, int index,
                                     const char* what, Backend& backend) {
  if (index >= static_cast<int>(constants.size()) || node.input_count() <= index) return {};
  return constant_input(node, constants, index, what).host(backend);
}

// The convolution's weights on the backend, with an optional per-channel affine (a BatchNorm) fused after it.
std::shared_ptr<ConvParams> conv_params(const OnnxNode& node, const std::vector<ValuePtr>& constants, Backend& backend,
                                        const ChannelAffine& affine = {}) {
  const Value& weight = constant_input(node, constants, 1, "W");
  if (weight.rank() != 4) node.fail("only 2-D convolutions are supported (W is {})", shape_to_string(weight.shape()));
  const Shape& w = weight.shape();
  const Window window = square_window(node, node.attr_ints("kernel_shape", {w[2], w[3]}));
  const auto groups = static_cast<int>(node.attr_int("group", 1));
  const Conv2dSpec spec{static_cast<int>(w[1]) * groups, static_cast<int>(w[0]), window.kernel, window.stride,
                        window.padding, groups};
  return backend.make_conv2d(spec, weight.host(backend), optional_constant(node, constants, 2, "B", backend),
                             affine.scale, affine.shift);
}

Kernel conv_kernel(std::shared_ptr<ConvParams> params, Activation act) {
  return [params, act](Backend& b, const std::vector<ValuePtr>& in) -> Outputs {
    return {Value::device(b.conv2d(*params, in[0]->tensor(b), nullptr, act))};
  };
}

Kernel make_conv(const OnnxNode& node, const std::vector<ValuePtr>& constants, Backend& backend) {
  return conv_kernel(conv_params(node, constants, backend), Activation::None);
}

// Transposed convolution, directly: each input pixel scatters its kernel-sized patch into the output.
Kernel make_conv_transpose(const OnnxNode& node, const std::vector<ValuePtr>& constants, Backend& backend) {
  const Value& weight = constant_input(node, constants, 1, "W");
  if (weight.rank() != 4) node.fail("only 2-D transposed convolutions are supported");
  const std::vector<float> w = weight.host(backend), bias = optional_constant(node, constants, 2, "B", backend);
  const Shape ws = weight.shape();
  const auto strides = node.attr_ints("strides", {1, 1}), pads = node.attr_ints("pads", {0, 0, 0, 0}),
             extra = node.attr_ints("output_padding", {0, 0}), dilations = node.attr_ints("dilations", {1, 1});
  const std::int64_t groups = node.attr_int("group", 1);
  if (strides.size() != 2 || pads.size() != 4 || extra.size() != 2 || dilations != std::vector<std::int64_t>{1, 1} ||
      node.has_attr("output_shape") || node.attr_string("auto_pad", "NOTSET") != "NOTSET")
    node.fail("only 2-D transposed convolutions with explicit pads and no dilation are supported");
  return [node, w, bias, ws, strides, pads, extra, groups](Backend& b, const std::vector<ValuePtr>& in) -> Outputs {
    const Shape& xs = in[0]->shape();
    if (xs.size() != 4 || xs[1] != ws[0] || ws[0] % groups != 0)
      node.fail("input {} does not match W {} with {} groups", shape_to_string(xs), shape_to_string(ws), groups);
    const std::int64_t n = xs[0], c = xs[1], h = xs[2], wd = xs[3], per_group_in = c / groups, per_group_out = ws[1];
    const std::int64_t out_c = per_group_out * groups, kh = ws[2], kw = ws[3];
    const std::int64_t oh = (h - 1) * strides[0] - pads[0] - pads[2] + kh + extra[0];
    const std::int64_t ow = (wd - 1) * strides[1] - pads[1] - pads[3] + kw + extra[1];
    if (oh <= 0 || ow <= 0) node.fail("pads leave no output for input {}", shape_to_string(xs));
    std::vector<float> out(n * out_c * oh * ow, 0.f);
    const std::vector<float>& x = in[0]->host(b);
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t ic = 0; ic < c; ++ic)
        for (std::int64_t oc_in_group = 0; oc_in_group < per_group_out; ++oc_in_group) {
          const std::int64_t oc = ic / per_group_in * per_group_out + oc_in_group;
          const float* kernel = &w[(ic * per_group_out + oc_in_group) * kh * kw];
          float* plane = &out[(i * out_c + oc) * oh * ow];
          for (std::int64_t y = 0; y < h; ++y)
            for (std::int64_t xx = 0; xx < wd; ++xx) {
              const float v = x[((i * c + ic) * h + y) * wd + xx];
              for (std::int64_t ky = 0; ky < kh; ++ky) {
                const std::int64_t oy = y * strides[0] - pads[0] + ky;
                if (oy < 0 || oy >= oh) continue;
                for (std::int64_t kx = 0; kx < kw; ++kx) {
                  const std::int64_t ox = xx * strides[1] - pads[1] + kx;
                  if (ox >= 0 && ox < ow) plane[oy * ow + ox] += v * kernel[ky * kw + kx];
                }
              }
            }
        }
    if (!bias.empty())
      for (std::int64_t i = 0; i < n * out_c; ++i)
        for (std::int64_t p = 0; p < oh * ow; ++p) out[i * oh * ow + p] += bias[i % out_c];
    return {Value::floats({n, out_c, oh, ow}, std::move(out))};
  };
}

ChannelAffine batch_norm_affine_of(const OnnxNode& node, const std::vector<ValuePtr>& constants, Backend& backend) {
  if (node.output_count() > 1 || node.attr_int("training_mode", 0) != 0)
    node.fail("only inference BatchNormalization is supported (export the model in eval mode)");
  const auto input = [&](int index, const char* what) { return constant_input(node, constants, index, what).host(backend); };
  ChannelAffine affine = batch_norm_affine(input(1, "scale"), input(2, "B"), input(3, "input_mean"),
                                           input(4, "input_var"), node.attr_float("epsilon", 1e-5f));
  for (int i = 2; i <= 4; ++i)
    if (constants[i]->numel() != static_cast<std::int64_t>(affine.scale.size()))
      node.fail("inputs 1 to 4 must all have {} values", affine.scale.size());
  return affine;
}

Kernel make_batch_norm(const OnnxNode& node, const std::vector<ValuePtr>& constants, Backend& backend) {
  const ChannelAffine affine = batch_norm_affine_of(node, constants, backend);
  std::shared_ptr<NormParams> params = backend.make_channel_affine(affine.scale, affine.shift);
  return [node, params, affine](Backend& b, const std::vector<ValuePtr>& in) -> Outputs {
    const Value& x = *in[0];
    const auto channels = static_cast<std::int64_t>(affine.scale.size());
    if (x.rank() < 2 || x.shape()[1] != channels)
      node.fail("input {} does not have {} channels on axis 1", shape_to_string(x.shape()), channels);
    if (x.rank() == 4) return {Value::device(b.channel_affine(*params, x.tensor(b), Activation::None))};
    const std::int64_t inner = x.numel() / x.shape()[0] / channels;
    std::vector<float> y = x.host(b);
    for (std::size_t i = 0; i < y.size(); ++i) {
      const std::size_t c = i / inner % channels;
      y[i] = y[i] * affine.scale[c] + affine.shift[c];
    }
    return {Value::floats(x.shape(), std::move(y))};
  };
}

Kernel make_layer_norm(const OnnxNode& node, const std::vector<ValuePtr>& constants, Backend& backend) {
  const std::vector<float> scale = constant_input(node, constants, 1, "Scale").host(backend);
  std::vector<float> bias = optional_constant(node, constants, 2, "B", backend);
  if (bias.empty()) bias.assign(scale.size(), 0.f);
  if (node.output_count() > 1) node.fail("the Mean and InvStdDev outputs are not supported");
  const std::int64_t axis = node.attr_int("axis", -1);
  std::shared_ptr<NormParams> params = backend.make_layer_norm(scale, bias, node.attr_float("epsilon", 1e-5f));
  return [node, params, axis, width = static_cast<std::int64_t>(scale.size())](
             Backend& b, const std::vector<ValuePtr>& in) -> Outputs {
    const Value& x = *in[0];
    if (normalize_axis(node, axis, x.rank()) != x.rank() - 1 || x.shape().back() != width)
      node.fail("only normalisation over the last axis of width {} is supported, got axis {} of {}", width, axis,
                shape_to_string(x.shape()));
    return {Value::device(b.layer_norm(*params, x.tensor(b)))};
  };
}

// x [..., in] times a constant [in, out] (MatMul) as the backend's nn.Linear with weight [out, in].
Kernel linear_kernel(Backend& backend, const std::vector<float>& weight_out_in, std::int64_t in, std::int64_t out,
                     const std::vector<float>& bias) {
  std::shared_ptr<LinearParams> params =
      backend.make_linear(static_cast<int>(in), static_cast<int>(out), weight_out_in, bias);
  return [params](Backend& b, const std::vector<ValuePtr>& inputs) -> Outputs {
    return {Value::device(b.linear(*params, inputs[0]->tensor(b), Activation::None, nullptr))};
  };
}

std::vector<float> transposed(const std::vector<float>& matrix, std::int64_t rows, std::int64_t columns) {
  std::vector<float> t(matrix.size());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < columns; ++c) t[c * rows + r] = matrix[r * columns + c];
  return t;
}

Kernel make_gemm(const OnnxNode& node, const std::vector<ValuePtr>& constants, Backend& backend) {
  if (node.attr_int("transA", 0) != 0 || node.attr_float("alpha", 1.f) != 1.f || node.attr_float("beta", 1.f) != 1.f)
    node.fail("only transA = 0, alpha = 1 and beta = 1 are supported (nn.Linear)");
  const Value& b = constant_input(node, constants, 1, "B");
  if (b.rank() != 2) node.fail("B must be a matrix, got {}", shape_to_string(b.shape()));
  const bool trans_b = node.attr_int("transB", 0) != 0;
  const std::int64_t out = b.shape()[trans_b ? 0 : 1], in = b.shape()[trans_b ? 1 : 0];
  const std::vector<float> bias = optional_constant(node, constants, 2, "C", backend);
  if (!bias.empty() && static_cast<std::int64_t>(bias.size()) != out)
    node.fail("C must hold one bias per output ({}), got {} values", out, bias.size());
  Kernel linear = linear_kernel(backend, trans_b ? b.host(backend) : transposed(b.host(backend), in, out), in, out, bias);
  return [node, linear, in](Backend& backend_, const std::vector<ValuePtr>& inputs) -> Outputs {
    if (inputs[0]->rank() != 2 || inputs[0]->shape()[1] != in)
      node.fail("A must be [M, {}], got {}", in, shape_to_string(inputs[0]->shape()));
    return linear(backend_, inputs);
  };
}

// Batched matrix product of two activations with broadcast batch dimensions (attention scores).
ValuePtr batched_matmul(const OnnxNode& node, const Value& a, const Value& b, Backend& backend) {
  if (a.rank() < 2 || b.rank() < 2)
    node.fail("inputs of rank below 2 are not supported ({} x {})", shape_to_string(a.shape()), shape_to_string(b.shape()));
  const std::int64_t m = a.shape()[a.rank() - 2], k = a.shape().back(), n = b.shape().back();
  if (b.shape()[b.rank() - 2] != k)
    node.fail("cannot multiply {} by {}", shape_to_string(a.shape()), shape_to_string(b.shape()));
  const Shape batch_a(a.shape().begin(), a.shape().end() - 2), batch_b(b.shape().begin(), b.shape().end() - 2);
  Shape out = broadcast_shape(node, {batch_a, batch_b});
  const auto ia = broadcast_indices(batch_a, out), ib = broadcast_indices(batch_b, out);
  const std::int64_t batches = shape_numel(out);
  out.insert(out.end(), {m, n});
  const std::vector<float>&x = a.host(backend), &y = b.host(backend);
  std::vector<float> result(batches * m * n);
  for (std::int64_t i = 0; i < batches; ++i)
    sgemm(false, false, m, n, k, 1.f, &x[(ia.empty() ? i : ia[i]) * m * k], k, &y[(ib.empty() ? i : ib[i]) * k * n],
          n, 0.f, &result[i * m * n], n);
  return Value::floats(out, std::move(result));
}

Kernel make_matmul(const OnnxNode& node, const std::vector<ValuePtr>& constants, Backend& backend) {
  if (constants.size() > 1 && constants[1] && constants[1]->rank() == 2 && constants[1]->is_float()) {
    const Shape& w = constants[1]->shape();
    Kernel linear = linear_kernel(backend, transposed(constants[1]->host(backend), w[0], w[1]), w[0], w[1], {});
    return [node, linear, in = w[0]](Backend& b, const std::vector<ValuePtr>& inputs) -> Outputs {
      if (inputs[0]->rank() < 2 || inputs[0]->shape().back() != in)
        node.fail("A must be [..., {}], got {}", in, shape_to_string(inputs[0]->shape()));
      return linear(b, inputs);
    };
  }
  return [node](Backend& b, const std::vector<ValuePtr>& in) -> Outputs {
    return {batched_matmul(node, *in[0], *in[1], b)};
  };
}

Kernel make_max_pool(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  if (node.output_count() > 1) node.fail("the Indices output is not supported");
  if (node.attr_int("storage_order", 0) != 0) node.fail("storage_order 1 is not supported");
  const Window window = square_window(node, node.attr_ints("kernel_shape"));
  return [window](Backend& b, const std::vector<ValuePtr>& in) -> Outputs {
    return {Value::device(b.max_pool2d(in[0]->tensor(b), window.kernel, window.stride, window.padding))};
  };
}

// Average pooling with padding, on the host: PyTorch's count_include_pad (default) and exclude-pad forms.
ValuePtr average_pool(const Value& x, const Window& window, bool count_pad, Backend& backend) {
  const Shape& s = x.shape();
  const std::int64_t planes = s[0] * s[1], h = s[2], w = s[3];
  const std::int64_t oh = (h + 2 * window.padding - window.kernel) / window.stride + 1;
  const std::int64_t ow = (w + 2 * window.padding - window.kernel) / window.stride + 1;
  const std::vector<float>& in = x.host(backend);
  std::vector<float> out(planes * oh * ow);
  for (std::int64_t p = 0; p < planes; ++p)
    for (std::int64_t oy = 0; oy < oh; ++oy)
      for (std::int64_t ox = 0; ox < ow; ++ox) {
        const std::int64_t y0 = oy * window.stride - window.padding, x0 = ox * window.stride - window.padding;
        float sum = 0.f;
        std::int64_t count = 0;
        for (std::int64_t y = std::max<std::int64_t>(y0, 0); y < std::min(y0 + window.kernel, h); ++y)
          for (std::int64_t xx = std::max<std::int64_t>(x0, 0); xx < std::min(x0 + window.kernel, w); ++xx) {
            sum += in[(p * h + y) * w + xx];
            ++count;
          }
        out[(p * oh + oy) * ow + ox] = sum / static_cast<float>(count_pad ? window.kernel * window.kernel : count);
      }
  return Value::floats({s[0], s[1], oh, ow}, std::move(out));
}

Kernel make_average_pool(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  const Window window = square_window(node, node.attr_ints("kernel_shape"));
  const bool count_pad = node.attr_int("count_include_pad", 0) != 0;
  return [node, window, count_pad](Backend& b, const std::vector<ValuePtr>& in) -> Outputs {
    if (in[0]->rank() != 4) node.fail("input must be [N, C, H, W], got {}", shape_to_string(in[0]->shape()));
    if (window.padding == 0 && window.stride == window.kernel)
      return {Value::device(b.avg_pool2d(in[0]->tensor(b), window.kernel))};
    const Shape& s = in[0]->shape();
    if (s[2] + 2 * window.padding < window.kernel || s[3] + 2 * window.padding < window.kernel)
      node.fail("kernel {} is larger than the padded input {}", window.kernel, shape_to_string(s));
    return {average_pool(*in[0], window, count_pad, b)};
  };
}

Kernel make_global_average_pool(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  return [node](Backend& b, const std::vector<ValuePtr>& in) -> Outputs {
    const Shape& s = in[0]->shape();
    if (s.size() != 4) node.fail("input must be [N, C, H, W], got {}", shape_to_string(s));
    return {Value::device(b.global_avg_pool(in[0]->tensor(b)))->reshaped({s[0], s[1], 1, 1}, b)};
  };
}

// Softmax along one axis (opset 13+), or over the flattened axes from `axis` on (earlier opsets).
Kernel make_softmax(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  const std::int64_t axis_attr = node.attr_int("axis", node.opset() >= 13 ? -1 : 1);
  return [node, axis_attr](Backend& b, const std::vector<ValuePtr>& in) -> Outputs {
    const Shape& s = in[0]->shape();
    const int axis = normalize_axis(node, axis_attr, in[0]->rank());
    std::int64_t outer = 1, size = 1, inner = 1;
    for (int i = 0; i < in[0]->rank(); ++i) (i < axis ? outer : i == axis || node.opset() < 13 ? size : inner) *= s[i];
    std::vector<float> y = in[0]->host(b);
    for (std::int64_t o = 0; o < outer; ++o)
      for (std::int64_t i = 0; i < inner; ++i) {
        float* base = &y[o * size * inner + i];
        float top = -INFINITY, sum = 0.f;
        for (std::int64_t j = 0; j < size; ++j) top = std::max(top, base[j * inner]);
        for (std::int64_t j = 0; j < size; ++j) sum += base[j * inner] = std::exp(base[j * inner] - top);
        for (std::int64_t j = 0; j < size; ++j) base[j * inner] /= sum;
      }
    return {Value::floats(s, std::move(y))};
  };
}

// ReduceMean / ReduceSum over `axes` (attribute before opset 18, input from 18 on).
template <bool mean>
Kernel make_reduce(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  const bool keep = node.attr_int("keepdims", 1) != 0, noop_without_axes = node.attr_int("noop_with_empty_axes", 0) != 0;
  const bool axes_input = node.opset() >= 18 || (!mean && node.opset() >= 13);
  return [node, keep, noop_without_axes, axes_input](Backend& b, const std::vector<ValuePtr>& in) -> Outputs {
    const Shape& s = in[0]->shape();
    std::vector<std::int64_t> axes = axes_input ? (in.size() > 1 && in[1] ? in[1]->ints() : std::vector<std::int64_t>{})
                                                : node.attr_ints("axes");
    if (axes.empty() && noop_without_axes) return {in[0]};
    std::vector<bool> reduced(s.size(), axes.empty());
    for (std::int64_t a : axes) reduced[normalize_axis(node, a, in[0]->rank())] = true;
    Shape kept = s, shape;
    for (std::size_t i = 0; i < s.size(); ++i) {
      if (reduced[i]) kept[i] = 1;
      if (keep || !reduced[i]) shape.push_back(kept[i]);
    }
    // Each input element's output position: the output broadcast back over the input.
    const std::vector<std::int64_t> target = broadcast_indices(kept, s);
    const std::vector<float>& x = in[0]->host(b);
    std::vector<double> sums(shape_numel(kept), 0.0);
    for (std::size_t i = 0; i < x.size(); ++i) sums[target.empty() ? i : target[i]] += x[i];
    const double count = static_cast<double>(x.size()) / static_cast<double>(sums.size());
    std::vector<float> out(sums.size());
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(mean ? sums[i] / count : sums[i]);
    return {Value::floats(shape, std::move(out))};
  };
}

// Source coordinate along one axis for an output coordinate, per coordinate_transformation_mode.
double source_coordinate(const std::string& mode, std::int64_t out, double scale, std::int64_t in_length,
                         std::int64_t out_length) {
  if (mode == "asymmetric") return out / scale;
  if (mode == "align_corners") return out_length > 1 ? out * double(in_length - 1) / double(out_length - 1) : 0.0;
  if (mode == "pytorch_half_pixel" && out_length == 1) return 0.0;
  return (out + 0.5) / scale - 0.5;  // half_pixel, pytorch_half_pixel
}

Kernel make_resize(const OnnxNode& node, const std::vector<ValuePtr>&, Backend&) {
  const std::string mode = node.attr_string("mode", "nearest");
  const std::string transform = node.attr_string("coordinate_transformation_mode", node.opset() >= 11 ? "half_pixel" : "asymmetric");
  const std::string nearest = node.attr_string("nearest_mode", "round_prefer_floor");
  if (mode != "nearest" && mode != "linear") node.fail("mode '{}' is not supported (nearest, linear)", mode);
  if (transform != "half_pixel" && transform != "pytorch_half_pixel" && transform != "asymmetric" &&
      transform != "align_corners")
    node.fail("coordinate_transformation_mode '{}' is not supported", transform);
  return [node, mode, transform, nearest](Backend& b, const std::vector<ValuePtr>& in) -> Outputs {
    const Shape& s = in[0]->shape();
    if (s.size() != 4) node.fail("only [N, C, H, W] inputs are supported, got {}", shape_to_string(s));
    const int scales_index = node.opset() >= 11 ? 2 : 1;
    std::vector<double> scales(4, 1.0);
    Shape out = s;
    if (node.opset() >= 11 && in.size() > 3 && in[3] && in[3]->numel() > 0) {
      out = shape_from_values(node, *in[3]);
      if (out.size() != 4) node.fail("sizes must have 4 values");
      for (int i = 0; i < 4; ++i) scales[i] = double(out[i]) / double(s[i]);
    } else if (in.size() > static_cast<std::size_t>(scales_index) && in[scales_index] && in[scales_index]->numel() == 4) {
      const std::vector<float>& given = in[scales_index]->host(b);
      for (int i = 0; i < 4; ++i) {
        scales[i] = given[i];
        if (!(scales[i] > 0 && s[i] * scales[i] < double(1 << 20)))
          node.fail("scale {} of axis {} is not positive or gives an axis over 2^20", scales[i], i);
        out[i] = static_cast<std::int64_t>(std::floor(s[i] * scales[i]));
      }
    } else {
      node.fail("neither scales nor sizes given for 4 axes");
    }
    if (out[0] != s[0] || out[1] != s[1] || out[2] <= 0 || out[3] <= 0)
      node.fail("only the spatial axes may be resized, to a non-empty size; output {}", shape_to_string(out));
    // Per output row / column: the two source positions and the weight of the second.
    struct Tap { std::int64_t low, high; float weight; };
    const auto taps = [&](int axis) {
      std::vector<Tap> t(out[axis]);
      for (std::int64_t o = 0; o < out[axis]; ++o) {
        double x = source_coordinate(transform, o, scales[axis], s[axis], out[axis]);
        if (mode == "nearest") {
          const double rounded = nearest == "floor" ? std::floor(x) : nearest == "ceil" ? std::ceil(x)
                                 : nearest == "round_prefer_ceil" ? std::floor(x + 0.5) : std::ceil(x - 0.5);
          const auto i = std::clamp<std::int64_t>(static_cast<std::int64_t>(rounded), 0, s[axis] - 1);
          t[o] = {i, i, 0.f};
        } else {
          x = std::clamp(x, 0.0, double(s[axis] - 1));
          const auto low = static_cast<std::int64_t>(std::floor(x));
          t[o] = {low, std::min(low + 1, s[axis] - 1), static_cast<float>(x - low)};
        }
      }
      return t;
    };
    const std::vector<Tap> rows = taps(2), columns = taps(3);
    const std::vector<float>& x = in[0]->host(b);
    std::vector<float> y(shape_numel(out));
    for (std::int64_t p = 0; p < s[0] * s[1]; ++p)
      for (std::int64_t oy = 0; oy < out[2]; ++oy)
        for (std::int64_t ox = 0; ox < out[3]; ++ox) {
          const Tap &r = rows[oy], &c = columns[ox];
          const float* plane = &x[p * s[2] * s[3]];
          const float top = plane[r.low * s[3] + c.low] * (1 - c.weight) + plane[r.low * s[3] + c.high] * c.weight;
          const float bottom = plane[r.high * s[3] + c.low] * (1 - c.weight) + plane[r.high * s[3] + c.high] * c.weight;
          y[(p * out[2] + oy) * out[3] + ox] = top * (1 - r.weight) + bottom * r.weight;
        }
    return {Value::floats(out, std::move(y))};
  };
}

}  // namespace

Kernel make_fused_conv(const OnnxNode& conv, const std::vector<ValuePtr>& conv_constants, const OnnxNode* batch_norm,
                       const std::vector<ValuePtr>& batch_norm_constants, bool relu, Backend& backend) {
  const ChannelAffine affine =
      batch_norm ? batch_norm_affine_of(*batch_norm, batch_norm_constants, backend) : ChannelAffine{};
  return conv_kernel(conv_params(conv, conv_constants, backend, affine), relu ? Activation::Relu : Activation::None);
}

void add_nn_kernels(KernelTable& table) {
  table["Conv"] = make_conv;
  table["ConvTranspose"] = make_conv_transpose;
  table["BatchNormalization"] = make_batch_norm;
  table["LayerNormalization"] = make_layer_norm;
  table["Gemm"] = make_gemm;
  table["MatMul"] = make_matmul;
  table["MaxPool"] = make_max_pool;
  table["AveragePool"] = make_average_pool;
  table["GlobalAveragePool"] = make_global_average_pool;
  table["Softmax"] = make_softmax;
  table["ReduceMean"] = make_reduce<true>;
  table["ReduceSum"] = make_reduce<false>;
  table["Resize"] = make_resize;
}

}  // namespace clipdissect::onnx_target
