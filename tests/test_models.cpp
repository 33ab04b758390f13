// Every model against the reference's outputs on the fixture checkpoints (random weights).
#include <fstream>

#include <gtest/gtest.h>

#include "clipdissect/clip.h"
#include "clipdissect/error.h"
#include "clipdissect/network.h"
#include "fixtures.h"
#include "test_files.h"
#include "test_util.h"

namespace clipdissect {
namespace {

using testing::fixture;

constexpr float kImagenetMean[3] = {0.485f, 0.456f, 0.406f};
constexpr float kImagenetStd[3] = {0.229f, 0.224f, 0.225f};
constexpr float kClipMean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
constexpr float kClipStd[3] = {0.26862954f, 0.26130258f, 0.27577711f};
constexpr int kImages = 24;

// The reference preprocessing's uint8 crops of the first 24 probe images, normalised.
std::vector<float> fixture_batch(const std::string& file, const std::string& prefix, const float* mean,
                                 const float* std_dev) {
  const WeightMap crops = load_weights(fixture(file));
  std::vector<std::byte> hwc;
  for (int i = 0; i < kImages; ++i) {
    const HostTensor& t = crops.at(prefix + std::to_string(i));
    hwc.insert(hwc.end(), t.bytes.begin(), t.bytes.end());
  }
  return testing::normalize_batch(hwc, kImages, 224, mean, std_dev);
}

struct HookCase {
  std::string model;
  std::vector<std::string> layers;
};

class TargetHooks : public ::testing::TestWithParam<HookCase> {};

TEST_P(TargetHooks, MatchReferenceHooksAvgAndMax) {
  const HookCase& c = GetParam();
  auto backend = make_cpu_backend(2);
  auto network = load_target(*backend, fixture("models/" + c.model + (c.model == "resnet_places_legacy" ? ".pth.tar" : ".pth")));
  const std::string reference = c.model == "resnet_places_legacy" ? "resnet_basic" : c.model;
  const WeightMap expected = load_weights(fixture("expected/hooks_" + reference + ".safetensors"));
  const Tensor images =
      backend->upload(fixture_batch("preprocess/target_u8.safetensors", "target/", kImagenetMean, kImagenetStd),
                      {kImages, 3, 224, 224});
  for (PoolMode mode : {PoolMode::Avg, PoolMode::Max}) {
    const std::string pool = mode == PoolMode::Avg ? "avg/" : "max/";
    Recorder recorder(*backend, mode, c.layers);
    network->forward(images, &recorder);
    for (const std::string& layer : c.layers) {
      Shape shape;
      const std::vector<float> want = testing::fixture_tensor(expected, pool + layer, &shape);
      const LayerSummary& got = recorder.summary(layer);
      EXPECT_EQ(got.rows(), shape[0]) << layer;
      EXPECT_EQ(got.channels, shape[1]) << layer;
      // Relative to the layer's scale: activations near zero carry absolute rounding noise.
      EXPECT_LE(testing::max_relative_error(got.values, want), 1e-4) << c.model << " " << pool << layer;
    }
  }
}

const std::vector<std::string> kResNetLayers{"conv1", "layer1", "layer2", "layer3", "layer4", "fc",
                                             "layer2.0.conv1", "layer4.0"};

INSTANTIATE_TEST_SUITE_P(
    Fixtures, TargetHooks,
    ::testing::Values(HookCase{"resnet_basic", kResNetLayers}, HookCase{"resnet_bottleneck", kResNetLayers},
                      HookCase{"resnet_places_legacy", kResNetLayers},
                      HookCase{"vit_target", {"conv_proj", "encoder.layers.encoder_layer_0",
                                              "encoder.layers.encoder_layer_1", "encoder", "heads"}}),
    [](const auto& param_info) { return param_info.param.model; });

struct ClipCase {
  std::string checkpoint, expected;
};

class ClipFixture : public ::testing::TestWithParam<ClipCase> {};

// Rows of an I64 [n, 77] zero-padded token tensor, padding removed (start ... end).
std::vector<std::vector<std::int32_t>> unpadded_tokens(const WeightMap& map, const std::string& name) {
  const HostTensor& t = map.at(name);
  const auto* ids = reinterpret_cast<const std::int64_t*>(t.bytes.data());
  std::vector<std::vector<std::int32_t>> rows(t.shape[0]);
  for (std::int64_t r = 0; r < t.shape[0]; ++r) {
    for (std::int64_t i = 0; i < t.shape[1]; ++i) {
      rows[r].push_back(static_cast<std::int32_t>(ids[r * t.shape[1] + i]));
      if (ids[r * t.shape[1] + i] == 49407) break;
    }
  }
  return rows;
}

TEST_P(ClipFixture, ImageAndTextFeaturesMatchReference) {
  auto backend = make_cpu_backend(2);
  auto clip = ClipModel::load(*backend, fixture("models/" + GetParam().checkpoint));
  const WeightMap expected = load_weights(fixture("expected/" + GetParam().expected));

  const Tensor images = backend->upload(fixture_batch("preprocess/clip_u8.safetensors", "clip/", kClipMean, kClipStd),
                                        {kImages, 3, 224, 224});
  const std::vector<float> image_features = clip->encode_image(images);
  EXPECT_LE(testing::max_relative_error(image_features, testing::fixture_tensor(expected, "image_features")),
            1e-4);

  for (const std::string set : {"words", "tricky"}) {
    const auto tokens = unpadded_tokens(expected, "text_tokens_" + set);
    const std::vector<float> text_features = clip->encode_text(tokens);
    EXPECT_LE(
        testing::max_relative_error(text_features, testing::fixture_tensor(expected, "text_features_" + set)),
        1e-4)
        << set;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ClipFixture,
                         ::testing::Values(ClipCase{"clip_vit.pt", "clip_vit_image.safetensors"},
                                           ClipCase{"clip_vit.jit.pt", "clip_vit_image.safetensors"},
                                           ClipCase{"clip_rn.pt", "clip_rn_image.safetensors"}),
                         [](const auto& param_info) {
                           std::string name = param_info.param.checkpoint;
                           for (char& ch : name)
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return name;
                         });

TEST(ClipTransformers, HfCheckpointMatchesReference) {
  auto backend = make_cpu_backend(2);
  auto clip = ClipModel::load(*backend, fixture("hf/clip_hf"));
  EXPECT_EQ(clip->config().embed_dim, 32);
  EXPECT_EQ(clip->config().vision_heads, 2);
  const WeightMap expected = load_weights(fixture("hf/clip_hf_expected.safetensors"));
  Shape shape;
  const std::vector<float> pixels = testing::fixture_tensor(expected, "pixel_values", &shape);
  const std::vector<float> image_features = clip->encode_image(backend->upload(pixels, shape));
  EXPECT_LE(testing::max_relative_error(image_features, testing::fixture_tensor(expected, "image_features")),
            1e-4);
  const std::vector<float> text_features = clip->encode_text(unpadded_tokens(expected, "input_ids"));
  EXPECT_LE(testing::max_relative_error(text_features, testing::fixture_tensor(expected, "text_features")),
            1e-4);
}

TEST(ClipConfigInference, BuildModelDerivations) {
  const ClipConfig vit = infer_clip_config(load_weights(fixture("models/clip_vit.pt")));
  EXPECT_EQ(vit.vision_tower, "VisionTransformer");
  EXPECT_EQ(vit.vision_width, 128);
  EXPECT_EQ(vit.vision_heads, 2);
  EXPECT_EQ(vit.vision_patch_size, 32);
  EXPECT_EQ(vit.image_resolution, 224);
  EXPECT_EQ(vit.vision_layers, std::vector<int>{2});
  EXPECT_EQ(vit.transformer_heads, 1);
  EXPECT_EQ(vit.embed_dim, 64);
  const ClipConfig rn = infer_clip_config(load_weights(fixture("models/clip_rn.pt")));
  EXPECT_EQ(rn.vision_tower, "ModifiedResNet");
  EXPECT_EQ(rn.vision_layers, (std::vector<int>{1, 1, 1, 1}));
  EXPECT_EQ(rn.vision_width, 16);
  EXPECT_EQ(rn.vision_heads, 8);
  EXPECT_EQ(rn.transformer_heads, 2);
}

TEST(TargetLoading, LayerNamesAndErrors) {
  auto backend = make_cpu_backend(1);
  auto resnet = load_target(*backend, fixture("models/resnet_bottleneck.pth"));
  const auto names = resnet->layer_names();
  for (const char* name : {"conv1", "layer1", "layer4.0.conv3", "layer1.0.downsample.0", "fc"})
    EXPECT_NE(std::find(names.begin(), names.end(), name), names.end()) << name;
  EXPECT_EQ(normalize_layer_name("layer2[0].conv1"), "layer2.0.conv1");
  EXPECT_EQ(normalize_layer_name("features[12][3]"), "features.12.3");
  EXPECT_EQ(normalize_layer_name("odd[x].y[]"), "odd[x].y[]");
  try {
    check_layer_names(*resnet, {"layer5"}, "resnet_bottleneck.pth");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer4"), std::string::npos) << e.what();
  }
}

TEST(TargetLoading, VitHeadsComeFromSidecarOrAnError) {
  namespace fs = std::filesystem;
  auto backend = make_cpu_backend(1);
  const testing::TemporaryFolder scratch;
  const fs::path& dir = scratch.path();
  const fs::path checkpoint = dir / "vit.pth";
  fs::copy_file(fixture("models/vit_target.pth"), checkpoint, fs::copy_options::overwrite_existing);

  // Width 64 is no standard configuration and there is no sidecar: the error says what to write.
  try {
    load_target(*backend, checkpoint);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("num_heads"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("vit.pth.json"), std::string::npos) << e.what();
  }
  // --target-config naming the fixture's sidecar works from anywhere.
  auto vit = load_target(*backend, checkpoint, fixture("models/vit_target.pth.json"));
  EXPECT_NE(vit->describe().find("2 heads"), std::string::npos) << vit->describe();

  // A sidecar that contradicts the checkpoint names the field.
  std::ofstream(dir / "vit.pth.json") << R"({"architecture": "torchvision.vit", "num_heads": 2, "hidden_dim": 96})";
  try {
    load_target(*backend, checkpoint);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'hidden_dim'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace clipdissect
