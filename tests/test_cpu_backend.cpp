// The CPU backend's ops against straightforward loops written here (double accumulation).
#include <cmath>
#include <limits>
#include <random>

#include <gtest/gtest.h>

#include "clipdissect/backend.h"
#include "clipdissect/error.h"
#include "test_util.h"

namespace clipdissect {
namespace {

using testing::random_values;

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol = 1e-5) {
  EXPECT_LE(testing::max_relative_error(got, want), tol);
}

class CpuBackendTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> backend = make_cpu_backend(2);
};

// y[n,o,i,j] = act(b[o] + sum w[o,c,ky,kx] x[n,g*cin+c,i*s-p+ky,j*s-p+kx] + residual)
std::vector<float> naive_conv(const std::vector<float>& x, const Conv2dSpec& s, int n, int h, int w,
                              const std::vector<float>& weight, const std::vector<float>& bias,
                              const std::vector<float>* residual, bool relu) {
  const int oh = (h + 2 * s.padding - s.kernel) / s.stride + 1, ow = (w + 2 * s.padding - s.kernel) / s.stride + 1;
  const int cin = s.in_channels / s.groups, cout = s.out_channels / s.groups;
  std::vector<float> y(static_cast<std::size_t>(n) * s.out_channels * oh * ow);
  for (int b = 0; b < n; ++b)
    for (int o = 0; o < s.out_channels; ++o)
      for (int i = 0; i < oh; ++i)
        for (int j = 0; j < ow; ++j) {
          double acc = bias.empty() ? 0 : bias[o];
          const int g = o / cout;
          for (int c = 0; c < cin; ++c)
            for (int ky = 0; ky < s.kernel; ++ky)
              for (int kx = 0; kx < s.kernel; ++kx) {
                const int yy = i * s.stride - s.padding + ky, xx = j * s.stride - s.padding + kx;
                if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
                acc += double(weight[((o * cin + c) * s.kernel + ky) * s.kernel + kx]) *
                       x[((static_cast<std::size_t>(b) * s.in_channels + g * cin + c) * h + yy) * w + xx];
              }
          const std::size_t at = ((static_cast<std::size_t>(b) * s.out_channels + o) * oh + i) * ow + j;
          if (residual) acc += (*residual)[at];
          y[at] = static_cast<float>(relu ? std::max(acc, 0.0) : acc);
        }
  return y;
}

TEST_F(CpuBackendTest, Conv2dMatchesLoopsWithStridePaddingGroupsResidualRelu) {
  for (const Conv2dSpec spec : {Conv2dSpec{3, 8, 7, 2, 3, 1}, Conv2dSpec{8, 16, 3, 1, 1, 4}, Conv2dSpec{16, 8, 1, 2, 0, 1}}) {
    const int n = 2, h = 13, w = 11;
    const auto x = random_values(static_cast<std::size_t>(n) * spec.in_channels * h * w, 1);
    const auto weight = random_values(static_cast<std::size_t>(spec.out_channels) * (spec.in_channels / spec.groups) *
                                          spec.kernel * spec.kernel, 2);
    const auto bias = random_values(spec.out_channels, 3);
    auto conv = backend->make_conv2d(spec, weight, bias);
    const Tensor input = backend->upload(x, {n, spec.in_channels, h, w});
    const Tensor plain = backend->conv2d(*conv, input, nullptr, Activation::None);
    expect_close(backend->download(plain), naive_conv(x, spec, n, h, w, weight, bias, nullptr, false));

    const auto residual = random_values(plain.numel(), 4);
    const Tensor res = backend->upload(residual, plain.shape());
    const Tensor fused = backend->conv2d(*conv, input, &res, Activation::Relu);
    expect_close(backend->download(fused), naive_conv(x, spec, n, h, w, weight, bias, &residual, true));
    // The residual input is not modified by the fused add.
    EXPECT_EQ(backend->download(res), residual);
  }
}

TEST_F(CpuBackendTest, ChannelAffineAndAddAndActivate) {
  const int n = 2, c = 5, hw = 6;
  const auto x = random_values(n * c * hw, 5);
  const auto gamma = random_values(c, 6), beta = random_values(c, 7);
  auto affine = backend->make_channel_affine(gamma, beta);
  const Tensor t = backend->upload(x, {n, c, 2, 3});
  std::vector<float> want(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const std::size_t ch = (i / hw) % c;
    want[i] = x[i] * gamma[ch] + beta[ch];
  }
  expect_close(backend->download(backend->channel_affine(*affine, t, Activation::None)), want);
  std::vector<float> relu = want;
  for (float& v : relu) v = std::max(v, 0.f);
  expect_close(backend->download(backend->channel_affine(*affine, t, Activation::Relu)), relu);

  std::vector<float> sum(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) sum[i] = std::max(x[i] + want[i], 0.f);
  expect_close(backend->download(backend->add(t, backend->upload(want, t.shape()), Activation::Relu)), sum);
  EXPECT_EQ(backend->download(backend->activate(t, Activation::None)), x);
}

TEST_F(CpuBackendTest, LinearWithActivationsAndResidual) {
  const int rows = 7, in = 12, out = 9;
  const auto x = random_values(rows * in, 10, -3.f, 3.f), weight = random_values(out * in, 11),
             bias = random_values(out, 12), residual = random_values(rows * out, 13);
  auto linear = backend->make_linear(in, out, weight, bias);
  const Tensor input = backend->upload(x, {1, rows, in});
  const Tensor res = backend->upload(residual, {1, rows, out});
  for (Activation act : {Activation::None, Activation::Relu, Activation::Gelu, Activation::QuickGelu}) {
    std::vector<float> want(rows * out);
    for (int r = 0; r < rows; ++r)
      for (int o = 0; o < out; ++o) {
        double acc = bias[o];
        for (int i = 0; i < in; ++i) acc += double(x[r * in + i]) * weight[o * in + i];
        if (act == Activation::Relu) acc = std::max(acc, 0.0);
        if (act == Activation::Gelu) acc = 0.5 * acc * (1 + std::erf(acc / std::sqrt(2.0)));
        if (act == Activation::QuickGelu) acc = acc / (1 + std::exp(-1.702 * acc));
        want[r * out + o] = static_cast<float>(acc + residual[r * out + o]);
      }
    const Tensor y = backend->linear(*linear, input, act, &res);
    EXPECT_EQ(y.shape(), (Shape{1, rows, out}));
    expect_close(backend->download(y), want, 2e-5);
  }
}

TEST_F(CpuBackendTest, LayerNormOverLastDimension) {
  const int rows = 4, d = 10;
  const auto x = random_values(rows * d, 14, -5.f, 5.f), gamma = random_values(d, 15), beta = random_values(d, 16);
  auto ln = backend->make_layer_norm(gamma, beta, 1e-5f);
  std::vector<float> want(x.size());
  for (int r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (int i = 0; i < d; ++i) mean += x[r * d + i] / double(d);
    for (int i = 0; i < d; ++i) var += (x[r * d + i] - mean) * (x[r * d + i] - mean) / d;
    for (int i = 0; i < d; ++i)
      want[r * d + i] = static_cast<float>((x[r * d + i] - mean) / std::sqrt(var + 1e-5) * gamma[i] + beta[i]);
  }
  expect_close(backend->download(backend->layer_norm(*ln, backend->upload(x, {2, 2, d}))), want);
}

// softmax(q k^T / sqrt(hd) + bias) v per head, with keys after the query masked when causal. `bias` is empty or
// [bias_batch, heads, l, l], bias_batch 1 meaning shared by every sequence.
std::vector<float> naive_attention(const std::vector<float>& qkv, int n, int l, int heads, int hd, bool causal,
                                   const std::vector<float>& bias = {}, int bias_batch = 1) {
  const int d = heads * hd;
  std::vector<float> out(static_cast<std::size_t>(n) * l * d);
  for (int b = 0; b < n; ++b)
    for (int h = 0; h < heads; ++h)
      for (int t = 0; t < l; ++t) {
        std::vector<double> p(l, 0);
        double mx = -INFINITY, total = 0;
        for (int s = 0; s < l; ++s) {
          if (causal && s > t) { p[s] = -INFINITY; continue; }
          double dot = 0;
          for (int c = 0; c < hd; ++c)
            dot += double(qkv[(b * l + t) * 3 * d + h * hd + c]) * qkv[(b * l + s) * 3 * d + d + h * hd + c];
          p[s] = dot / std::sqrt(double(hd));
          const std::size_t row = bias_batch == 1 ? 0 : b;
          if (!bias.empty()) p[s] += bias[((row * heads + h) * l + t) * l + s];
          mx = std::max(mx, p[s]);
        }
        for (double& v : p) total += (v = std::exp(v - mx));
        for (int c = 0; c < hd; ++c) {
          double acc = 0;
          for (int s = 0; s < l; ++s) acc += p[s] / total * qkv[(b * l + s) * 3 * d + 2 * d + h * hd + c];
          out[(b * l + t) * d + h * hd + c] = static_cast<float>(acc);
        }
      }
  return out;
}

TEST_F(CpuBackendTest, AttentionMatchesSoftmaxLoopsWithAndWithoutCausalMask) {
  const int n = 2, l = 5, heads = 3, hd = 4, d = heads * hd;
  const auto qkv = random_values(n * l * 3 * d, 17, -2.f, 2.f);
  for (bool causal : {false, true})
    expect_close(backend->download(backend->attention(backend->upload(qkv, {n, l, 3 * d}), heads, causal)),
                 naive_attention(qkv, n, l, heads, hd, causal));
}

TEST_F(CpuBackendTest, FirstTokenAttentionIsRowZeroOfTheFullAttention) {
  const int n = 3, l = 7, heads = 2, hd = 4, d = heads * hd;
  const auto qkv = random_values(n * l * 3 * d, 19, -2.f, 2.f);
  const Tensor first = backend->first_token_attention(backend->upload(qkv, {n, l, 3 * d}), heads);
  EXPECT_EQ(first.shape(), (Shape{n, d}));
  const std::vector<float> all = naive_attention(qkv, n, l, heads, hd, false);
  std::vector<float> row_zero;
  for (int b = 0; b < n; ++b) row_zero.insert(row_zero.end(), all.begin() + b * l * d, all.begin() + (b * l + 1) * d);
  expect_close(backend->download(first), row_zero);
}

TEST_F(CpuBackendTest, AttentionAddsScoreBiasPerSequenceOrShared) {
  const int n = 3, l = 6, heads = 2, hd = 4, d = heads * hd;
  const auto qkv = random_values(n * l * 3 * d, 21, -2.f, 2.f);
  const Tensor packed = backend->upload(qkv, {n, l, 3 * d});
  // Per sequence: a random bias with the last keys of sequence 1 masked the way transformers masks padding.
  auto bias = random_values(n * heads * l * l, 22, -3.f, 3.f);
  for (int h = 0; h < heads; ++h)
    for (int t = 0; t < l; ++t)
      for (int s = 4; s < l; ++s) bias[((1 * heads + h) * l + t) * l + s] = std::numeric_limits<float>::lowest();
  for (bool causal : {false, true}) {
    const Tensor per_sequence = backend->upload(bias, {n, heads, l, l});
    expect_close(backend->download(backend->attention(packed, heads, causal, &per_sequence)),
                 naive_attention(qkv, n, l, heads, hd, causal, bias, n));
  }
  const auto shared = random_values(heads * l * l, 23, -3.f, 3.f);
  const Tensor shared_bias = backend->upload(shared, {1, heads, l, l});
  expect_close(backend->download(backend->attention(packed, heads, false, &shared_bias)),
               naive_attention(qkv, n, l, heads, hd, false, shared, 1));

  const Tensor wrong = backend->upload(shared, {1, heads, l * l, 1});
  EXPECT_THROW(backend->attention(packed, heads, false, &wrong), Error);
}

// Host buffers come from the tensors' pool: one dropped after its upload serves the next request, and the
// tensor it was uploaded to keeps its own values.
TEST_F(CpuBackendTest, HostBufferReusedAfterItsUploadLeavesTheTensorAlone) {
  const auto values = random_values(5000, 40);
  HostBuffer buffer = backend->host_buffer(values.size());
  ASSERT_EQ(buffer.size(), values.size());
  std::copy(values.begin(), values.end(), buffer.begin());
  const Tensor uploaded = backend->upload(buffer, {50, 100});
  const float* address = buffer.data();
  buffer = HostBuffer();
  const HostBuffer next = backend->host_buffer(values.size());
  EXPECT_EQ(next.data(), address) << "the pool did not hand the memory out again";
  std::fill(next.begin(), next.end(), -1.f);
  EXPECT_EQ(backend->download(uploaded), values);
}

TEST_F(CpuBackendTest, PoolingAndSummaries) {
  const int n = 2, c = 3, h = 6, w = 4;
  auto x = random_values(n * c * h * w, 18);
  const Tensor t = backend->upload(x, {n, c, h, w});
  // avg_pool2d(2): 2x2 means.
  const std::vector<float> pooled = backend->download(backend->avg_pool2d(t, 2));
  ASSERT_EQ(pooled.size(), static_cast<std::size_t>(n * c * 3 * 2));
  auto at = [&](int b, int ch, int i, int j) { return x[((b * c + ch) * h + i) * w + j]; };
  EXPECT_NEAR(pooled[0], (at(0, 0, 0, 0) + at(0, 0, 0, 1) + at(0, 0, 1, 0) + at(0, 0, 1, 1)) / 4, 1e-6);
  // max_pool2d(3, 2, 1) first output: max over the top-left 2x2 window (padding excluded).
  const std::vector<float> maxed = backend->download(backend->max_pool2d(t, 3, 2, 1));
  EXPECT_EQ(maxed[0], std::max({at(0, 0, 0, 0), at(0, 0, 0, 1), at(0, 0, 1, 0), at(0, 0, 1, 1)}));

  const std::vector<float> avg = backend->summarize(t, PoolMode::Avg), mx = backend->summarize(t, PoolMode::Max);
  for (int b = 0; b < n; ++b)
    for (int ch = 0; ch < c; ++ch) {
      double sum = 0;
      float best = -INFINITY;
      for (int i = 0; i < h * w; ++i) {
        sum += x[(b * c + ch) * h * w + i];
        best = std::max(best, x[(b * c + ch) * h * w + i]);
      }
      EXPECT_NEAR(avg[b * c + ch], sum / (h * w), 1e-6);
      EXPECT_EQ(mx[b * c + ch], best);
    }
  expect_close(backend->download(backend->global_avg_pool(t)), avg);

  // Token maps summarise to the class token in both modes; 2-D stays as is.
  const auto tokens = random_values(n * 4 * c, 19);
  const Tensor seq = backend->upload(tokens, {n, 4, c});
  const std::vector<float> cls = backend->summarize(seq, PoolMode::Max);
  EXPECT_EQ(cls, (std::vector<float>{tokens[0], tokens[1], tokens[2], tokens[12], tokens[13], tokens[14]}));
  EXPECT_EQ(backend->summarize(backend->upload(avg, {n, c}), PoolMode::Max), avg);

  // A NaN anywhere in a map makes its max NaN, as torch.amax.
  x[5] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(backend->summarize(backend->upload(x, {n, c, h, w}), PoolMode::Max)[0]));
}

TEST_F(CpuBackendTest, TokenOps) {
  const int n = 2, c = 3;
  const auto grid = random_values(n * c * 2 * 2, 20);
  const Tensor t = backend->upload(grid, {n, c, 2, 2});
  const Tensor tokens = backend->grid_to_tokens(t);
  EXPECT_EQ(tokens.shape(), (Shape{n, 4, c}));
  const std::vector<float> tok = backend->download(tokens);
  for (int b = 0; b < n; ++b)
    for (int p = 0; p < 4; ++p)
      for (int ch = 0; ch < c; ++ch) EXPECT_EQ(tok[(b * 4 + p) * c + ch], grid[(b * c + ch) * 4 + p]);

  const Tensor first = backend->upload(std::vector<float>{7, 8, 9}, {c});
  const Tensor with_cls = backend->prepend_token(tokens, first);
  const std::vector<float> wc = backend->download(with_cls);
  EXPECT_EQ(with_cls.shape(), (Shape{n, 5, c}));
  EXPECT_EQ(wc[15], 7.f);
  EXPECT_EQ(wc[18], tok[12]);

  const std::vector<float> mean = backend->download(backend->mean_tokens(tokens));
  EXPECT_NEAR(mean[0], (tok[0] + tok[3] + tok[6] + tok[9]) / 4, 1e-6);

  const auto pos = random_values(6 * c, 21);
  const std::vector<float> added = backend->download(backend->add_positional(with_cls, backend->upload(pos, {6, c})));
  EXPECT_FLOAT_EQ(added[5 * c + 1], wc[5 * c + 1] + pos[1]);

  const std::vector<std::int64_t> positions{4, 1};
  const std::vector<float> picked = backend->download(backend->select_tokens(with_cls, positions));
  EXPECT_EQ(picked[0], wc[4 * c]);
  EXPECT_EQ(picked[c], wc[(5 + 1) * c]);
  EXPECT_THROW(backend->select_tokens(with_cls, std::vector<std::int64_t>{5, 0}), Error);

  const auto table = random_values(10 * c, 22);
  const std::vector<std::int32_t> ids{3, 9, 0, 3};
  const std::vector<float> emb = backend->download(backend->embedding(backend->upload(table, {10, c}), ids, 2, 2));
  EXPECT_EQ(emb[c * 1 + 2], table[9 * c + 2]);
  EXPECT_EQ(emb[c * 3], table[3 * c]);
  EXPECT_THROW(backend->embedding(backend->upload(table, {10, c}), std::vector<std::int32_t>{10}, 1, 1), Error);
}

}  // namespace
}  // namespace clipdissect
