// The CUDA backend against the CPU backend: every op, every fixture model's forward pass, the GPU
// similarity functions and describe's labels. Compiled only with -DCLIPDISSECT_CUDA=ON; each test skips,
// saying so, when the machine has no CUDA device.
#include <cmath>
#include <random>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "clipdissect/backend.h"
#include "clipdissect/clip.h"
#include "clipdissect/describe.h"
#include "clipdissect/device.h"
#include "clipdissect/error.h"
#include "clipdissect/network.h"
#include "clipdissect/probe.h"
#include "clipdissect/similarity.h"
#include "engine/cuda/convolution_counts.h"
#include "fixtures.h"
#include "test_files.h"
#include "test_util.h"

namespace clipdissect {
namespace {

using testing::fixture;
using testing::max_relative_error;
using testing::random_values;

std::size_t count(const Shape& shape) { return static_cast<std::size_t>(shape_numel(shape)); }

// A CUDA backend in `precision` on GPU 0, or null and the reason there is none (the test then skips with it).
std::unique_ptr<Backend> cuda_backend_or_skip(Precision precision, std::string& skip_reason) {
  try {
    return make_cuda_backend(0, precision);
  } catch (const Error& e) {
    if (std::string(e.what()).rfind("no CUDA device: ", 0) != 0) throw;
    skip_reason = e.what();
    return nullptr;
  }
}

// A CPU backend and an fp32 CUDA backend side by side; the test skips, saying why, without a GPU.
template <typename Base>
class CpuAndGpu : public Base {
 protected:
  void SetUp() override {
    gpu_ = cuda_backend_or_skip(Precision::F32, skip_reason_);
    if (!gpu_) GTEST_SKIP() << skip_reason_;
  }

  // Runs `op` on both backends and compares what it returns.
  template <typename Op>
  void expect_same(Op op, const std::string& what, double tolerance = 1e-5) {
    const std::vector<float> want = op(*cpu_), got = op(*gpu_);
    EXPECT_LE(max_relative_error(got, want), tolerance) << what;
  }

  std::unique_ptr<Backend> cpu_ = make_cpu_backend(2);
  std::unique_ptr<Backend> gpu_;
  std::string skip_reason_;
};

using CudaOps = CpuAndGpu<::testing::Test>;

// Every combination the models use, twice each (the second call runs the algorithm kept for the shape). On the
// GPU a ReLU with a bias or an affine goes through cuDNN's fused call, BatchNorm folded into the weights; before
// each call a NaN-filled block of the output's size goes back to the pool, for the output to reuse: a fused call
// without a residual passes its output as z, which must not be read.
TEST_F(CudaOps, ConvolutionsWithBiasAffineResidualAndActivation) {
  const std::int64_t fused_before = cuda::convolution_counts().fused;
  for (const Conv2dSpec spec : {Conv2dSpec{3, 8, 7, 2, 3, 1}, Conv2dSpec{8, 16, 3, 1, 1, 4}, Conv2dSpec{16, 8, 1, 2, 0, 1}}) {
    const Shape in{2, spec.in_channels, 13, 11};
    const auto x = random_values(count(in), 1);
    const auto w = random_values(static_cast<std::size_t>(spec.out_channels) * (spec.in_channels / spec.groups) *
                                     spec.kernel * spec.kernel, 2);
    const auto bias = random_values(spec.out_channels, 3), scale = random_values(spec.out_channels, 4, 0.5f, 2.f),
               shift = random_values(spec.out_channels, 5);
    struct Params {
      std::string name;
      std::span<const float> bias, scale, shift;
    };
    for (const Params& p : {Params{"bare", {}, {}, {}}, Params{"bias", bias, {}, {}}, Params{"affine", {}, scale, shift},
                            Params{"bias and affine", bias, scale, shift}})
      for (const bool with_residual : {false, true})
        for (const Activation act : {Activation::None, Activation::Relu, Activation::Gelu})
          expect_same(
              [&](Backend& b) {
                auto conv = b.make_conv2d(spec, w, p.bias, p.scale, p.shift);
                const Tensor input = b.upload(x, in);
                const Tensor raw = b.conv2d(*conv, input, nullptr, Activation::None, true);
                const Tensor residual = b.upload(random_values(raw.numel(), 6), raw.shape());
                std::vector<float> out = b.download(raw);
                const std::vector<float> nan_fill(static_cast<std::size_t>(raw.numel()), std::nanf(""));
                for (int call = 0; call < 2; ++call) {
                  {
                    const Tensor nans = b.upload(nan_fill, raw.shape());
                    const Tensor freed_on_compute_stream = b.add(nans, nans, Activation::None);
                  }
                  const std::vector<float> y = b.download(b.conv2d(*conv, input, with_residual ? &residual : nullptr, act));
                  out.insert(out.end(), y.begin(), y.end());
                }
                return out;
              },
              fmt::format("conv {}x{} ({}), residual {}, act {}", spec.kernel, spec.kernel, p.name, with_residual,
                          static_cast<int>(act)));
  }
  EXPECT_GT(cuda::convolution_counts().fused, fused_before) << "cuDNN's fused conv + bias + ReLU never ran";
}

TEST_F(CudaOps, ElementwiseAffinePoolsAndSummaries) {
  const Shape shape{3, 5, 9, 8};
  const auto x = random_values(count(shape), 7, -3.f, 3.f);
  // NaN propagates through the summaries, as torch.amax and torch.mean. (oneDNN's CPU ReLU and max pooling map a
  // NaN to a number, so the elementwise ops and pooling compare finite inputs only.)
  auto x_nan = x;
  x_nan[17] = std::nanf("");
  const auto y = random_values(count(shape), 8);
  const auto scale = random_values(5, 9), shift = random_values(5, 10);
  for (const Activation act : {Activation::None, Activation::Relu, Activation::Gelu, Activation::QuickGelu}) {
    expect_same([&](Backend& b) { return b.download(b.activate(b.upload(x, shape), act)); }, "activate");
    expect_same([&](Backend& b) { return b.download(b.add(b.upload(x, shape), b.upload(y, shape), act)); }, "add");
    expect_same(
        [&](Backend& b) {
          return b.download(b.channel_affine(*b.make_channel_affine(scale, shift), b.upload(y, shape), act));
        },
        "channel_affine");
  }
  expect_same([&](Backend& b) { return b.download(b.max_pool2d(b.upload(x, shape), 3, 2, 1)); }, "max_pool2d");
  expect_same([&](Backend& b) { return b.download(b.avg_pool2d(b.upload(y, shape), 2)); }, "avg_pool2d");
  expect_same([&](Backend& b) { return b.download(b.global_avg_pool(b.upload(y, shape))); }, "global_avg_pool");
  for (const PoolMode mode : {PoolMode::Avg, PoolMode::Max})
    expect_same([&](Backend& b) { return b.summarize(b.upload(x_nan, shape), mode); }, "summarize [N, C, H, W]");
  const auto tokens = std::span(y).first(3 * 7 * 10), rows = std::span(y).first(6 * 20);
  expect_same([&](Backend& b) { return b.summarize(b.upload(tokens, {3, 7, 10}), PoolMode::Max); },
              "summarize [N, L, D]");
  expect_same([&](Backend& b) { return b.summarize(b.upload(rows, {6, 20}), PoolMode::Avg); }, "summarize [N, C]");
}

TEST_F(CudaOps, LinearLayerNormAndTokenOps) {
  const Shape tokens{2, 6, 16};
  const auto x = random_values(count(tokens), 11), w = random_values(24 * 16, 12), bias = random_values(24, 13);
  const auto residual = random_values(2 * 6 * 24, 14);
  for (const Activation act : {Activation::None, Activation::Gelu, Activation::QuickGelu})
    expect_same(
        [&](Backend& b) {
          const Tensor res = b.upload(residual, {2, 6, 24});
          return b.download(b.linear(*b.make_linear(16, 24, w, bias), b.upload(x, tokens), act, &res));
        },
        "linear");
  expect_same([&](Backend& b) { return b.download(b.linear(*b.make_linear(16, 24, w, {}), b.upload(x, tokens), Activation::None, nullptr)); },
              "linear without bias");
  const auto gamma = random_values(16, 15), beta = random_values(16, 16);
  expect_same([&](Backend& b) { return b.download(b.layer_norm(*b.make_layer_norm(gamma, beta, 1e-5f), b.upload(x, tokens))); },
              "layer_norm");
  const Shape grid{2, 16, 3, 2};
  expect_same([&](Backend& b) { return b.download(b.grid_to_tokens(b.upload(x, grid))); }, "grid_to_tokens");
  const auto first = random_values(16, 17), firsts = random_values(32, 18);
  expect_same([&](Backend& b) { return b.download(b.prepend_token(b.upload(x, tokens), b.upload(first, {16}))); },
              "prepend_token shared");
  expect_same([&](Backend& b) { return b.download(b.prepend_token(b.upload(x, tokens), b.upload(firsts, {2, 16}))); },
              "prepend_token per row");
  expect_same([&](Backend& b) { return b.download(b.mean_tokens(b.upload(x, tokens))); }, "mean_tokens");
  const auto positional = random_values(8 * 16, 19);
  expect_same([&](Backend& b) { return b.download(b.add_positional(b.upload(x, tokens), b.upload(positional, {8, 16}))); },
              "add_positional");
  const std::vector<std::int64_t> positions{5, 2};
  expect_same([&](Backend& b) { return b.download(b.select_tokens(b.upload(x, tokens), positions)); }, "select_tokens");
  const std::vector<std::int32_t> ids{3, 0, 5, 5, 1, 2};
  const auto table = std::span(x).first(6 * 16);
  expect_same([&](Backend& b) { return b.download(b.embedding(b.upload(table, {6, 16}), ids, 2, 3)); }, "embedding");
  const Tensor gpu_table = gpu_->upload(table, {6, 16});
  EXPECT_THROW(gpu_->embedding(gpu_table, std::vector<std::int32_t>{6}, 1, 1), Error);
  EXPECT_THROW(gpu_->select_tokens(gpu_->upload(x, tokens), std::vector<std::int64_t>{6, 0}), Error);
}

// A page-locked buffer goes back to its pool when dropped right after its upload, and the next request of
// the size gets it again and overwrites it: every tensor must keep its own values, because reuse waits for
// the copy. Also an upload from the middle of a buffer (copied straight from it, as a whole buffer is).
TEST_F(CudaOps, HostBufferReuseWaitsForTheUploadsCopy) {
  constexpr std::size_t kFloats = std::size_t{64} << 20;  // 256 MB: a copy of several milliseconds
  std::vector<Tensor> uploaded;
  std::vector<const float*> addresses;
  for (int round = 0; round < 3; ++round) {
    const HostBuffer buffer = gpu_->host_buffer(kFloats);
    std::fill(buffer.begin(), buffer.end(), static_cast<float>(round));
    uploaded.push_back(gpu_->upload(buffer, {static_cast<std::int64_t>(kFloats)}));
    addresses.push_back(buffer.data());
  }
  EXPECT_EQ(addresses[1], addresses[0]) << "the pool did not hand the buffer out again";
  for (int round = 0; round < 3; ++round) {
    const std::vector<float> values = gpu_->download(uploaded[round]);
    EXPECT_EQ(std::count(values.begin(), values.end(), static_cast<float>(round)), static_cast<std::ptrdiff_t>(kFloats))
        << "round " << round;
  }
  const HostBuffer buffer = gpu_->host_buffer(1000);
  for (std::size_t i = 0; i < buffer.size(); ++i) buffer.data()[i] = static_cast<float>(i);
  const std::vector<float> tail = gpu_->download(gpu_->upload(std::span<const float>(buffer).subspan(600), {400}));
  for (std::size_t i = 0; i < tail.size(); ++i) ASSERT_EQ(tail[i], static_cast<float>(600 + i)) << i;
}

TEST_F(CudaOps, AttentionCausalAndWithScoreBias) {
  const std::int64_t n = 3, l = 7, heads = 4, d = 32;
  const auto qkv = random_values(n * l * 3 * d, 20, -2.f, 2.f);
  const auto shared_bias = random_values(heads * l * l, 21), batch_bias = random_values(n * heads * l * l, 22);
  expect_same([&](Backend& b) { return b.download(b.first_token_attention(b.upload(qkv, {n, l, 3 * d}), heads)); },
              "first_token_attention");
  for (const bool causal : {false, true}) {
    expect_same([&](Backend& b) { return b.download(b.attention(b.upload(qkv, {n, l, 3 * d}), heads, causal)); },
                "attention");
    expect_same(
        [&](Backend& b) {
          const Tensor bias = b.upload(shared_bias, {1, heads, l, l});
          return b.download(b.attention(b.upload(qkv, {n, l, 3 * d}), heads, causal, &bias));
        },
        "attention with a shared bias");
    expect_same(
        [&](Backend& b) {
          const Tensor bias = b.upload(batch_bias, {n, heads, l, l});
          return b.download(b.attention(b.upload(qkv, {n, l, 3 * d}), heads, causal, &bias));
        },
        "attention with a per-sequence bias");
  }
}

// fp16 and bf16 storage (products and sums in fp32): each kind of op within the element type's rounding of the
// CPU's fp32, relative to the output's scale (2^-11 and 2^-8 per rounding, a few roundings per op). A wrong element
// type, descriptor or cast anywhere on the way gives errors of order one.
class CudaLowPrecision : public ::testing::TestWithParam<Precision> {};

TEST_P(CudaLowPrecision, OpsWithinTheElementTypesRounding) {
  std::string skip_reason;
  const std::unique_ptr<Backend> gpu = cuda_backend_or_skip(GetParam(), skip_reason);
  if (!gpu) GTEST_SKIP() << skip_reason;
  const std::unique_ptr<Backend> cpu = make_cpu_backend(2);
  const double tolerance = GetParam() == Precision::F16 ? 1e-2 : 4e-2;
  const auto expect_close = [&](const auto& op, const std::string& what) {
    EXPECT_LE(max_relative_error(op(*gpu), op(*cpu)), tolerance) << what;
  };

  const Conv2dSpec spec{8, 16, 3, 1, 1, 1};
  const Shape in{2, 8, 12, 10}, out{2, 16, 12, 10};
  const auto x = random_values(count(in), 30), w = random_values(16 * 8 * 9, 31), bias = random_values(16, 32);
  const auto scale = random_values(16, 33, 0.5f, 2.f), shift = random_values(16, 34),
             residual = random_values(count(out), 35);
  for (const Activation act : {Activation::Relu, Activation::Gelu})  // fused, then separate
    expect_close(
        [&](Backend& b) {
          const Tensor res = b.upload(residual, out);
          return b.download(b.conv2d(*b.make_conv2d(spec, w, bias, scale, shift), b.upload(x, in), &res, act));
        },
        fmt::format("conv, act {}", static_cast<int>(act)));
  expect_close([&](Backend& b) { return b.download(b.max_pool2d(b.upload(x, in), 3, 2, 1)); }, "max_pool2d");
  expect_close([&](Backend& b) { return b.download(b.avg_pool2d(b.upload(x, in), 2)); }, "avg_pool2d");
  expect_close([&](Backend& b) { return b.summarize(b.upload(x, in), PoolMode::Avg); }, "summarize");

  const Shape tokens{2, 7, 32};
  const auto t = random_values(count(tokens), 36), lw = random_values(32 * 32, 37), lb = random_values(32, 38);
  expect_close(
      [&](Backend& b) {
        const Tensor x_tokens = b.upload(t, tokens);
        return b.download(b.linear(*b.make_linear(32, 32, lw, lb), x_tokens, Activation::Gelu, &x_tokens));
      },
      "linear");
  const auto gamma = random_values(32, 39), beta = random_values(32, 40);
  expect_close([&](Backend& b) { return b.download(b.layer_norm(*b.make_layer_norm(gamma, beta, 1e-5f), b.upload(t, tokens))); },
               "layer_norm");
  const auto qkv = random_values(2 * 7 * 96, 41);
  expect_close([&](Backend& b) { return b.download(b.attention(b.upload(qkv, {2, 7, 96}), 4, true)); }, "attention");
}

INSTANTIATE_TEST_SUITE_P(Precisions, CudaLowPrecision, ::testing::Values(Precision::F16, Precision::BF16),
                         [](const auto& param_info) { return std::string(precision_name(param_info.param)); });

// The first 16 probe images, preprocessed into the backend's host buffers (page-locked on the GPU), as one
// batch on `backend`; the buffer goes back to its pool right after the upload.
Tensor probe_batch(Backend& backend, const Preprocess& preprocess) {
  const ProbeSet probe = ProbeSet::open(fixture("images"));
  const auto n = std::min<std::int64_t>(16, static_cast<std::int64_t>(probe.size()));
  const PreprocessedBatch batch = preprocess_batch(probe, 0, static_cast<std::size_t>(n), std::span(&preprocess, 1),
                                                   [&](std::size_t floats) { return backend.host_buffer(floats); });
  return backend.upload(batch.pixels[0], {n, 3, preprocess.crop, preprocess.crop});
}

using CudaModels = CpuAndGpu<::testing::TestWithParam<std::string>>;

// Every layer's summary of each fixture target, and the output, within 1e-3 of the CPU's in fp32.
TEST_P(CudaModels, TargetForwardMatchesCpuInFp32) {
  const auto checkpoint = fixture("models/" + GetParam());
  const auto on_cpu = load_target(*cpu_, checkpoint), on_gpu = load_target(*gpu_, checkpoint);
  Recorder cpu_recorder(*cpu_, PoolMode::Avg, on_cpu->layer_names());
  Recorder gpu_recorder(*gpu_, PoolMode::Avg, on_gpu->layer_names());
  const std::vector<float> want = cpu_->download(on_cpu->forward(probe_batch(*cpu_, on_cpu->preprocess()), &cpu_recorder));
  const std::vector<float> got = gpu_->download(on_gpu->forward(probe_batch(*gpu_, on_gpu->preprocess()), &gpu_recorder));
  EXPECT_LE(max_relative_error(got, want), 1e-3) << "output";
  for (const std::string& layer : on_cpu->layer_names())
    EXPECT_LE(max_relative_error(gpu_recorder.summary(layer).values, cpu_recorder.summary(layer).values), 1e-3)
        << layer;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaModels,
                         ::testing::Values("resnet_basic.pth", "resnet_bottleneck.pth", "resnet_places_legacy.pth.tar",
                                           "vit_target.pth", "clip_vit.pt", "clip_rn.pt"),
                         [](const auto& param_info) {
                           std::string name = param_info.param;
                           for (char& ch : name)
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return name;
                         });

using CudaClip = CpuAndGpu<::testing::TestWithParam<std::string>>;

TEST_P(CudaClip, ImageAndTextFeaturesMatchCpuInFp32) {
  const auto checkpoint = fixture("models/" + GetParam());
  const auto on_cpu = ClipModel::load(*cpu_, checkpoint), on_gpu = ClipModel::load(*gpu_, checkpoint);
  EXPECT_LE(max_relative_error(on_gpu->encode_image(probe_batch(*gpu_, on_gpu->preprocess())),
                               on_cpu->encode_image(probe_batch(*cpu_, on_cpu->preprocess()))),
            1e-3);
  const std::vector<std::vector<std::int32_t>> tokens{{49406, 320, 1929, 49407}, {49406, 550, 2368, 539, 320, 1615, 49407}};
  EXPECT_LE(max_relative_error(on_gpu->encode_text(tokens), on_cpu->encode_text(tokens)), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaClip, ::testing::Values("clip_vit.pt", "clip_rn.pt"),
                         [](const auto& param_info) { return param_info.param == "clip_vit.pt" ? "vit" : "rn"; });

// SoftWPMI and WPMI on the GPU equal the CPU's within float rounding, ties and all.
TEST(CudaSimilarity, WeightedPmiMatchesCpu) {
  std::string skip_reason;
  if (!cuda_backend_or_skip(Precision::F32, skip_reason)) GTEST_SKIP() << skip_reason;
  const std::int64_t n = 700, d = 48, k = 300, c = 37;
  const auto images = random_values(n * d, 23), texts = random_values(k * d, 24);
  auto activations = random_values(n * c, 25);
  for (std::int64_t i = 0; i < 50; ++i) activations[i * c] = 0.5f;  // ties in neuron 0's top set
  const SimilarityInputs inputs{images, texts, activations, n, d, k, c};
  for (const SimilarityFunction f : {SimilarityFunction::SoftWpmi, SimilarityFunction::Wpmi}) {
    const std::vector<float> cpu = compute_similarity(f, inputs, {});
    const std::vector<float> gpu = compute_similarity(f, inputs, {}, Device{true, 0});
    EXPECT_LE(max_relative_error(gpu, cpu), 1e-5) << similarity_function_name(f);
  }
}

// describe on the e2e fixture: fp32 on the GPU gives the CPU's labels; fp16 CLIP agrees on >= 99% of neurons.
TEST(CudaDescribe, E2eLabelsMatchCpu) {
  std::string skip_reason;
  if (!cuda_backend_or_skip(Precision::F32, skip_reason)) GTEST_SKIP() << skip_reason;
  testing::TemporaryFolder dir;
  DescribeConfig c;
  c.clip = fixture("models/clip_vit.pt");
  c.target = fixture("models/resnet_bottleneck.pth");
  c.probes = {fixture("images")};
  c.concepts = fixture("e2e/concepts.txt");
  c.layers = {"conv1", "layer1", "layer2", "layer3", "layer4", "fc"};
  c.batch_size = 50;
  c.threads = 2;
  c.use_cache = false;
  c.bpe = fixture("clip/bpe_simple_vocab_16e6.txt.gz");
  c.quiet = true;
  const DescribeResult cpu = describe(c);
  c.device = Device{true, 0};
  const DescribeResult fp32 = describe(c);
  c.clip_precision = Precision::F16;
  const DescribeResult fp16 = describe(c);
  std::size_t neurons = 0, fp32_same = 0, fp16_same = 0;
  for (std::size_t l = 0; l < cpu.layers.size(); ++l)
    for (std::size_t u = 0; u < cpu.layers[l].neurons.size(); ++u) {
      ++neurons;
      fp32_same += fp32.layers[l].neurons[u].concept_index == cpu.layers[l].neurons[u].concept_index;
      fp16_same += fp16.layers[l].neurons[u].concept_index == cpu.layers[l].neurons[u].concept_index;
    }
  ASSERT_GT(neurons, 0u);
  EXPECT_EQ(fp32_same, neurons);
  EXPECT_GE(static_cast<double>(fp16_same), 0.99 * static_cast<double>(neurons));
}

}  // namespace
}  // namespace clipdissect
