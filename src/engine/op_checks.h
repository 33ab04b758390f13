// Argument checks and output shapes shared by the backends, so that every backend rejects the same inputs
// with the same message ("<backend> backend: ..."). `backend` is the backend's name.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "clipdissect/backend.h"

namespace clipdissect::op_checks {

void conv_weight(std::string_view backend, const Conv2dSpec& spec, std::size_t weight_values, std::size_t bias_values);
// [N, O, H', W'] for x [N, in_channels, H, W]; the residual, when given, must have that shape.
Shape conv2d_output(std::string_view backend, const Conv2dSpec& spec, const Tensor& x, const Tensor* residual,
                    Activation act, bool raw);

void linear_weight(std::string_view backend, int in_features, int out_features, std::size_t weight_values,
                   std::size_t bias_values);
// x [..., in] -> [..., out]; the residual, when given, must have that shape.
Shape linear_output(std::string_view backend, int in_features, int out_features, const Tensor& x,
                    const Tensor* residual);

void rank(std::string_view backend, const Tensor& t, int expected, const char* op);
void positional(std::string_view backend, const Tensor& tokens, const Tensor& positional);
void prepend(std::string_view backend, const Tensor& tokens, const Tensor& first);
// Row of each selected token in tokens [N, L, D] seen as [N * L, D]: n * L + positions[n].
std::vector<std::int64_t> token_rows(std::string_view backend, const Tensor& tokens,
                                     std::span<const std::int64_t> positions);
void token_ids(std::string_view backend, std::span<const std::int32_t> ids, std::int64_t vocabulary,
               std::int64_t batch, std::int64_t length);

struct AttentionShape {
  std::int64_t sequences = 0, length = 0, dim = 0, head_dim = 0;
};
AttentionShape attention(std::string_view backend, const Tensor& qkv, int heads, const Tensor* score_bias);

}  // namespace clipdissect::op_checks
