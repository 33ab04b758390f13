#include "engine/op_checks.h"

#include "clipdissect/error.h"

namespace clipdissect::op_checks {

void conv_weight(std::string_view backend, const Conv2dSpec& spec, std::size_t weight_values, std::size_t bias_values) {
  if (spec.groups < 1 || spec.in_channels % spec.groups != 0)
    fail("{} backend: conv of {} input channels in {} groups", backend, spec.in_channels, spec.groups);
  const std::int64_t expected =
      std::int64_t{spec.out_channels} * (spec.in_channels / spec.groups) * spec.kernel * spec.kernel;
  if (static_cast<std::int64_t>(weight_values) != expected)
    fail("{} backend: conv weight has {} values, expected {}", backend, weight_values, expected);
  if (bias_values != 0 && static_cast<int>(bias_values) != spec.out_channels)
    fail("{} backend: conv bias has {} values, expected {}", backend, bias_values, spec.out_channels);
}

Shape conv2d_output(std::string_view backend, const Conv2dSpec& s, const Tensor& x, const Tensor* residual,
                    Activation act, bool raw) {
  if (x.rank() != 4 || x.dim(1) != s.in_channels)
    fail("{} backend: conv2d expects [N, {}, H, W], got {}", backend, s.in_channels, shape_to_string(x.shape()));
  if (raw && (residual || act != Activation::None))
    fail("{} backend: a raw convolution takes no residual or activation", backend);
  const std::int64_t oh = (x.dim(2) + 2 * s.padding - s.kernel) / s.stride + 1;
  const std::int64_t ow = (x.dim(3) + 2 * s.padding - s.kernel) / s.stride + 1;
  const Shape out{x.dim(0), s.out_channels, oh, ow};
  if (residual && residual->shape() != out)
    fail("{} backend: conv2d residual {} for output {}", backend, shape_to_string(residual->shape()),
         shape_to_string(out));
  return out;
}

void linear_weight(std::string_view backend, int in_features, int out_features, std::size_t weight_values,
                   std::size_t bias_values) {
  if (static_cast<std::int64_t>(weight_values) != std::int64_t{in_features} * out_features)
    fail("{} backend: linear weight has {} values, expected {}x{}", backend, weight_values, out_features, in_features);
  if (bias_values != 0 && static_cast<int>(bias_values) != out_features)
    fail("{} backend: linear bias has {} values, expected {}", backend, bias_values, out_features);
}

Shape linear_output(std::string_view backend, int in_features, int out_features, const Tensor& x,
                    const Tensor* residual) {
  if (x.rank() < 1 || x.dim(-1) != in_features)
    fail("{} backend: linear expects [..., {}], got {}", backend, in_features, shape_to_string(x.shape()));
  Shape out = x.shape();
  out.back() = out_features;
  if (residual && residual->shape() != out)
    fail("{} backend: linear residual {} for output {}", backend, shape_to_string(residual->shape()),
         shape_to_string(out));
  return out;
}

void rank(std::string_view backend, const Tensor& t, int expected, const char* op) {
  if (t.rank() != expected)
    fail("{} backend: {} expects a rank-{} tensor, got {}", backend, op, expected, shape_to_string(t.shape()));
}

void positional(std::string_view backend, const Tensor& tokens, const Tensor& positional) {
  rank(backend, tokens, 3, "add_positional");
  if (positional.rank() != 2 || positional.dim(1) != tokens.dim(2) || positional.dim(0) < tokens.dim(1))
    fail("{} backend: positional embedding {} for tokens {}", backend, shape_to_string(positional.shape()),
         shape_to_string(tokens.shape()));
}

void prepend(std::string_view backend, const Tensor& tokens, const Tensor& first) {
  rank(backend, tokens, 3, "prepend_token");
  const bool shared = first.rank() == 1;
  if (first.rank() < 1 || first.dim(-1) != tokens.dim(2) ||
      (!shared && (first.rank() != 2 || first.dim(0) != tokens.dim(0))))
    fail("{} backend: prepend_token of {} to {}", backend, shape_to_string(first.shape()),
         shape_to_string(tokens.shape()));
}

std::vector<std::int64_t> token_rows(std::string_view backend, const Tensor& tokens,
                                     std::span<const std::int64_t> positions) {
  rank(backend, tokens, 3, "select_tokens");
  const std::int64_t n = tokens.dim(0), l = tokens.dim(1);
  if (static_cast<std::int64_t>(positions.size()) != n)
    fail("{} backend: select_tokens got {} positions for {} sequences", backend, positions.size(), n);
  std::vector<std::int64_t> rows(n);
  for (std::int64_t i = 0; i < n; ++i) {
    if (positions[i] < 0 || positions[i] >= l)
      fail("{} backend: token position {} outside a sequence of {}", backend, positions[i], l);
    rows[i] = i * l + positions[i];
  }
  return rows;
}

void token_ids(std::string_view backend, std::span<const std::int32_t> ids, std::int64_t vocabulary,
               std::int64_t batch, std::int64_t length) {
  if (static_cast<std::int64_t>(ids.size()) != batch * length)
    fail("{} backend: embedding got {} ids for {}x{}", backend, ids.size(), batch, length);
  for (const std::int32_t id : ids)
    if (id < 0 || id >= vocabulary)
      fail("{} backend: token id {} outside the vocabulary of {}", backend, id, vocabulary);
}

AttentionShape attention(std::string_view backend, const Tensor& qkv, int heads, const Tensor* score_bias) {
  rank(backend, qkv, 3, "attention");
  const std::int64_t n = qkv.dim(0), l = qkv.dim(1), d = qkv.dim(2) / 3;
  if (heads <= 0 || qkv.dim(2) != 3 * d || d % heads != 0)
    fail("{} backend: attention input {} does not split into q, k, v of {} heads", backend,
         shape_to_string(qkv.shape()), heads);
  if (score_bias && (score_bias->rank() != 4 || (score_bias->dim(0) != 1 && score_bias->dim(0) != n) ||
                     score_bias->dim(1) != heads || score_bias->dim(2) != l || score_bias->dim(3) != l))
    fail("{} backend: attention score bias {} for {} sequences of {} tokens and {} heads, expected [{} or 1, {}, {}, "
         "{}]",
         backend, shape_to_string(score_bias->shape()), n, l, heads, n, heads, l, l);
  return {n, l, d, d / heads};
}

}  // namespace clipdissect::op_checks
