// ONNX targets against PyTorch: models exported with random weights by tests/make_onnx_models.py at build
// time (into the build folder), their recorded modules compared with PyTorch forward hooks; resnet18 also
// against the native torchvision ResNet on the same weights; external data and broken models.
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include <gtest/gtest.h>

#include "cli_runner.h"
#include "clipdissect/error.h"
#include "clipdissect/network.h"
#include "fixtures.h"
#include "test_files.h"
#include "test_util.h"

namespace clipdissect {
namespace {

std::filesystem::path onnx_model(const std::string& file) {
  const std::filesystem::path path = std::filesystem::path(CLIPDISSECT_ONNX_TEST_MODELS) / file;
  if (!std::filesystem::exists(path))
    throw std::runtime_error(path.string() + " is missing (built by the onnx_test_models target; see its log)");
  return path;
}

// The error message `load` throws, or "" when it throws none.
template <typename F>
std::string error_of(F load) {
  try {
    load();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<std::string> reference_layers(const WeightMap& reference) {
  return nlohmann::json::parse(reference.metadata.at("layers")).get<std::vector<std::string>>();
}

Tensor reference_images(Backend& backend, const WeightMap& reference) {
  Shape shape;
  const std::vector<float> pixels = testing::fixture_tensor(reference, "images", &shape);
  return backend.upload(pixels, shape);
}

class OnnxMatchesPyTorch : public ::testing::TestWithParam<std::string> {};

TEST_P(OnnxMatchesPyTorch, RecordedModulesAndOutput) {
  const std::string& model = GetParam();
  auto backend = make_cpu_backend(2);
  auto network = load_target(*backend, onnx_model(model + ".onnx"));
  const WeightMap reference = load_weights(onnx_model(model + ".reference.safetensors"));
  const std::vector<std::string> layers = reference_layers(reference);
  check_layer_names(*network, layers, model);
  const Tensor images = reference_images(*backend, reference);
  for (PoolMode mode : {PoolMode::Avg, PoolMode::Max}) {
    const std::string pool = mode == PoolMode::Avg ? "avg/" : "max/";
    Recorder recorder(*backend, mode, layers);
    const std::vector<float> output = backend->download(network->forward(images, &recorder));
    EXPECT_LE(testing::max_relative_error(output, testing::fixture_tensor(reference, "output")), 1e-4) << model;
    for (const std::string& layer : layers) {
      Shape shape;
      const std::vector<float> want = testing::fixture_tensor(reference, pool + layer, &shape);
      const LayerSummary& got = recorder.summary(layer);
      EXPECT_EQ(got.rows(), shape[0]) << layer;
      EXPECT_EQ(got.channels, shape[1]) << layer;
      EXPECT_LE(testing::max_relative_error(got.values, want), 1e-4) << model << " " << pool << layer;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(TorchvisionExports, OnnxMatchesPyTorch,
                         ::testing::Values("resnet18", "vit", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny",
                                           "densenet121", "ops_zoo"),
                         [](const auto& param_info) { return param_info.param; });

TEST(OnnxTarget, Resnet18MatchesNativeResNetOnTheSameWeights) {
  auto backend = make_cpu_backend(2);
  auto onnx = load_target(*backend, onnx_model("resnet18.onnx"));
  auto native = load_target(*backend, onnx_model("resnet18.pth"));
  const std::vector<std::string> layers{"relu", "maxpool", "layer1.0", "layer2", "layer3.1", "layer4", "avgpool", "fc"};
  const Tensor images = reference_images(*backend, load_weights(onnx_model("resnet18.reference.safetensors")));
  Recorder from_onnx(*backend, PoolMode::Max, layers), from_native(*backend, PoolMode::Max, layers);
  const std::vector<float> onnx_logits = backend->download(onnx->forward(images, &from_onnx));
  const std::vector<float> native_logits = backend->download(native->forward(images, &from_native));
  EXPECT_LE(testing::max_relative_error(onnx_logits, native_logits), 1e-4);
  for (const std::string& layer : layers)
    EXPECT_LE(testing::max_relative_error(from_onnx.summary(layer).values, from_native.summary(layer).values), 1e-4)
        << layer;
}

TEST(OnnxTarget, LayerNamesAreModulePathsAndTensorNames) {
  auto backend = make_cpu_backend(1);
  auto network = load_target(*backend, onnx_model("resnet18.onnx"));
  const std::vector<std::string> names = network->layer_names();
  for (const char* expected : {"conv1", "layer1", "layer1.0", "layer1.0.conv1", "layer4.1.relu_1", "fc",
                                      "/layer1/layer1.0/relu/Relu_output_0", "output"})
    EXPECT_NE(std::find(names.begin(), names.end(), expected), names.end()) << expected;
  // Weights are no layers: nothing computed only from initializers.
  EXPECT_EQ(std::find(names.begin(), names.end(), "fc.weight"), names.end());
  const std::string error = error_of([&] { check_layer_names(*network, {"layer4.3"}, "resnet18.onnx"); });
  EXPECT_NE(error.find("no layer named 'layer4.3'"), std::string::npos) << error;
  EXPECT_NE(error.find("layer4.1"), std::string::npos) << error;
}

TEST(OnnxTarget, PreprocessCropsToTheGraphInputSize) {
  auto backend = make_cpu_backend(1);
  const Preprocess preprocess = load_target(*backend, onnx_model("mobilenet_v3_small.onnx"))->preprocess();
  EXPECT_EQ(preprocess.crop, 64);
  EXPECT_EQ(preprocess.resize, 73);  // 64 * 256 / 224, the ImageNet transform's ratio
  EXPECT_EQ(preprocess.filter, ResizeFilter::Bilinear);
  EXPECT_FLOAT_EQ(preprocess.mean[0], 0.485f);
}

TEST(OnnxTarget, ExternalDataGivesTheSameResults) {
  auto backend = make_cpu_backend(2);
  const Tensor images = reference_images(*backend, load_weights(onnx_model("resnet18.reference.safetensors")));
  const auto inline_network = load_target(*backend, onnx_model("resnet18.onnx"));
  EXPECT_TRUE(inline_network->extra_weight_files().empty());
  const auto inline_weights = backend->download(inline_network->forward(images, nullptr));
  const auto external = backend->download(load_target(*backend, onnx_model("resnet18_external.onnx"))->forward(images, nullptr));
  EXPECT_EQ(inline_weights, external);
}

TEST(OnnxTarget, ExternalDataIsReadAtItsOffsetAndBoundsChecked) {
  // external_ok: a depthwise 1x1 convolution with weights {1, 2, 3} read from weights.bin.
  auto backend = make_cpu_backend(1);
  auto network = load_target(*backend, onnx_model("external_ok.onnx"));
  std::vector<float> pixels(3 * 16);
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<float>(i) * 0.5f - 3.f;
  const std::vector<float> out = backend->download(network->forward(backend->upload(pixels, {1, 3, 4, 4}), nullptr));
  ASSERT_EQ(out.size(), pixels.size());
  for (std::size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i], pixels[i] * static_cast<float>(i / 16 + 1)) << i;
  // describe's cache keys include the data file's checksum.
  ASSERT_EQ(network->extra_weight_files().size(), 1u);
  EXPECT_EQ(network->extra_weight_files()[0].filename(), "weights.bin");

  const std::string past_end = error_of([&] { load_target(*backend, onnx_model("external_past_end.onnx")); });
  EXPECT_NE(past_end.find("tensor 'weight'"), std::string::npos) << past_end;
  EXPECT_NE(past_end.find("runs past the end"), std::string::npos) << past_end;
  const std::string escape = error_of([&] { load_target(*backend, onnx_model("external_escape.onnx")); });
  EXPECT_NE(escape.find("'../weights.bin' is outside the model's folder"), std::string::npos) << escape;
}

TEST(OnnxTarget, UnsupportedOperatorNamesTheOperatorAndNode) {
  auto backend = make_cpu_backend(1);
  const std::string error = error_of([&] { load_target(*backend, onnx_model("unsupported_op.onnx")); });
  EXPECT_NE(error.find("unsupported_op.onnx: node '/block/odd/Celu' uses operator 'Celu', which is not supported"),
            std::string::npos)
      << error;
}

TEST(OnnxTarget, MissingInputIsAnError) {
  auto backend = make_cpu_backend(1);
  const std::string error = error_of([&] { load_target(*backend, onnx_model("missing_input.onnx")); });
  EXPECT_NE(error.find("node '/block/Add' (Add): reads tensor 'nowhere'"), std::string::npos) << error;
}

TEST(OnnxTarget, ImpossibleShapesAreErrorsNamingTheNode) {
  auto backend = make_cpu_backend(1);
  const Tensor images = backend->upload(std::vector<float>(48, 1.f), {1, 3, 4, 4});
  const std::string reshape =
      error_of([&] { load_target(*backend, onnx_model("bad_reshape.onnx"))->forward(images, nullptr); });
  EXPECT_NE(reshape.find("node '/head/Reshape' (Reshape): cannot reshape [1, 3, 4, 4] into [5, -1]"), std::string::npos)
      << reshape;
  const std::string fill =
      error_of([&] { load_target(*backend, onnx_model("negative_shape.onnx"))->forward(images, nullptr); });
  EXPECT_NE(fill.find("node '/fill/ConstantOfShape' (ConstantOfShape): shape [-9, -7, -6, -6] has a negative dimension"),
            std::string::npos)
      << fill;
}

TEST(OnnxTarget, TruncatedFileIsAnError) {
  const std::string bytes = testing::read_file(onnx_model("resnet18.onnx"));
  testing::TemporaryFolder folder;
  auto backend = make_cpu_backend(1);
  for (std::size_t length : {bytes.size() / 2, std::size_t{100}, std::size_t{0}}) {
    const std::filesystem::path cut = folder.path() / "cut.onnx";
    std::ofstream(cut, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(length));
    const std::string error = error_of([&] { load_target(*backend, cut); });
    EXPECT_NE(error.find("cut.onnx"), std::string::npos) << error;
    EXPECT_TRUE(error.find("truncated or corrupt") != std::string::npos || error.find("truncated file") != std::string::npos)
        << length << ": " << error;
  }
}

TEST(OnnxTarget, ModelFileOver2GBAsksForExternalData) {
  testing::TemporaryFolder folder;
  const std::filesystem::path big = folder.path() / "big.onnx";
  std::ofstream(big, std::ios::binary).put('\x08');
  std::filesystem::resize_file(big, (std::uintmax_t{1} << 31) + 8);  // sparse: no disk space used
  auto backend = make_cpu_backend(1);
  const std::string error = error_of([&] { load_target(*backend, big); });
  EXPECT_NE(error.find("protobuf cannot parse an ONNX file of 2 GB or more: save the weights as external data"),
            std::string::npos)
      << error;
}

TEST(OnnxTarget, InspectListsLayersWithShapes) {
  testing::TemporaryFolder scratch;
  const testing::CliResult result = testing::run_cli({"inspect", onnx_model("resnet18.onnx").string()}, scratch.path());
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_NE(result.out.find("format: onnx"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("  layer4  [batch, 512, 2, 2]\n"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("  layer1.0.conv1  [batch, 64, 16, 16]\n"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("  fc  [batch, 1000]\n"), std::string::npos) << result.out;
}

TEST(OnnxTarget, DescribeRunsOnAnOnnxTarget) {
  testing::TemporaryFolder scratch;
  const std::filesystem::path out = scratch.path() / "run";
  const testing::CliResult result = testing::run_cli(
      {"describe", "--clip", testing::fixture("models/clip_vit.pt").string(), "--target",
       onnx_model("resnet18.onnx").string(), "--probe", testing::fixture("images/Zebra_stripes").string(),
       "--similarity", "cos", "--concepts",
       testing::fixture("e2e/concepts.txt").string(), "--layers", "layer4,fc", "--out", out.string(), "--cache-dir",
       (scratch.path() / "cache").string(), "--bpe", testing::fixture("clip/bpe_simple_vocab_16e6.txt.gz").string(),
       "--threads", "2", "--quiet"},
      scratch.path());
  ASSERT_EQ(result.status, 0) << result.err;
  std::istringstream csv(testing::read_file(out / "descriptions.csv"));
  std::map<std::string, int> neurons;
  for (std::string line; std::getline(csv, line);) ++neurons[line.substr(0, line.find(','))];
  EXPECT_EQ(neurons["layer4"], 512);
  EXPECT_EQ(neurons["fc"], 1000);
}

}  // namespace
}  // namespace clipdissect
