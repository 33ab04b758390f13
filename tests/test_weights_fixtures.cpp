// Loading every reference checkpoint and checking it against manifest.json / configs.json.
#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "clipdissect/weights.h"
#include "fixtures.h"
#include "weights_test_util.h"

namespace clipdissect {
namespace {

using testing::fixture;
using Json = nlohmann::ordered_json;

Json read_json(const std::string& relative) {
  std::ifstream in(fixture(relative));
  return Json::parse(in);
}

// manifest/configs spell dtypes the torch way.
DType dtype_from_torch_name(const std::string& name) {
  static const std::map<std::string, DType> names = {
      {"float32", DType::F32}, {"float16", DType::F16}, {"bfloat16", DType::BF16}, {"float64", DType::F64},
      {"int64", DType::I64},   {"int32", DType::I32},   {"int16", DType::I16},     {"int8", DType::I8},
      {"uint8", DType::U8},    {"bool", DType::Bool}};
  return names.at(name);
}

std::vector<std::string> names_of(const WeightMap& weights) {
  std::vector<std::string> names;
  for (const HostTensor& tensor : weights.tensors()) names.push_back(tensor.name);
  return names;
}

std::set<std::string> names_with_dtype(const WeightMap& weights, DType dtype) {
  std::set<std::string> names;
  for (const HostTensor& tensor : weights.tensors())
    if (tensor.dtype == dtype) names.insert(tensor.name);
  return names;
}

bool same_bytes(const HostTensor& a, const HostTensor& b) {
  return a.bytes.size() == b.bytes.size() && std::memcmp(a.bytes.data(), b.bytes.data(), a.bytes.size()) == 0;
}

void expect_same_tensor(const HostTensor& actual, const HostTensor& expected) {
  EXPECT_EQ(actual.dtype, expected.dtype) << actual.name;
  EXPECT_EQ(actual.shape, expected.shape) << actual.name;
  EXPECT_TRUE(same_bytes(actual, expected)) << actual.name << " values differ";
}

TEST(WeightsFixtures, ManifestSafetensorsMatchNamesDtypesShapes) {
  const Json manifest = read_json("manifest.json");
  int checked = 0;
  for (const Json& file : manifest["files"]) {
    if (!file.contains("tensors")) continue;
    SCOPED_TRACE(file["path"].get<std::string>());
    const WeightMap weights = load_weights(fixture(file["path"].get<std::string>()));
    EXPECT_EQ(weights.format(), "safetensors");
    std::vector<std::string> expected_names;
    for (const auto& [name, description] : file["tensors"].items()) {
      expected_names.push_back(name);
      const HostTensor& tensor = weights.at(name);
      EXPECT_EQ(tensor.dtype, dtype_from_torch_name(description[0].get<std::string>())) << name;
      EXPECT_EQ(tensor.shape, description[1].get<Shape>()) << name;
      EXPECT_EQ(tensor.bytes.size(), static_cast<std::size_t>(tensor.numel()) * dtype_size(tensor.dtype));
    }
    EXPECT_EQ(names_of(weights), expected_names);  // file (header) order
    ++checked;
  }
  EXPECT_EQ(checked, 18);
}

TEST(WeightsFixtures, SafetensorsMetadataIsRead) {
  const WeightMap weights = load_weights(fixture("expected/clip_rn_image.safetensors"));
  EXPECT_EQ(weights.metadata.at("model"), "models/clip_rn.pt");
  const WeightMap mpnet = load_weights(fixture("hf/mpnet/model.safetensors"));
  EXPECT_EQ(mpnet.metadata.at("format"), "pt");
}

TEST(WeightsFixtures, TorchZipModelsMatchConfigs) {
  const Json configs = read_json("models/configs.json");
  int checked = 0;
  for (const auto& [model, config] : configs.items()) {
    if (!config.contains("summary")) continue;
    SCOPED_TRACE(model);
    const WeightMap weights = load_weights(fixture("models/" + config["file"].get<std::string>()));
    const Json& summary = config["summary"];
    EXPECT_EQ(weights.format(), model == "resnet_places_legacy" ? "torch-legacy" : "torch-zip");
    EXPECT_EQ(weights.size(), summary["tensors"].get<std::size_t>());
    std::map<DType, std::size_t> counts;
    std::int64_t float_elements = 0;
    for (const HostTensor& tensor : weights.tensors()) {
      ++counts[tensor.dtype];
      if (tensor.dtype == DType::F32 || tensor.dtype == DType::F16) float_elements += tensor.numel();
      ASSERT_EQ(tensor.bytes.size(), static_cast<std::size_t>(tensor.numel()) * dtype_size(tensor.dtype));
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(tensor.bytes.data()) % dtype_size(tensor.dtype), 0u);
    }
    std::map<DType, std::size_t> expected_counts;
    for (const auto& [dtype, count] : summary["dtype_counts"].items())
      expected_counts[dtype_from_torch_name(dtype)] = count.get<std::size_t>();
    EXPECT_EQ(counts, expected_counts);
    EXPECT_EQ(float_elements, summary["float_elements"].get<std::int64_t>());
    if (config.contains("fp32_tensors")) {
      EXPECT_EQ(names_with_dtype(weights, DType::F32), config["fp32_tensors"].get<std::set<std::string>>());
    }
    if (config.contains("int_tensors")) {
      EXPECT_EQ(names_with_dtype(weights, DType::I64), config["int_tensors"].get<std::set<std::string>>());
    }
    if (config.contains("logit_scale")) {
      EXPECT_EQ(to_f32(weights.at("logit_scale")), std::vector<float>{config["logit_scale"].get<float>()});
    }
    ++checked;
  }
  EXPECT_EQ(checked, 5);
}

TEST(WeightsFixtures, ClipShapesFromConstructorArguments) {
  const WeightMap vit = load_weights(fixture("models/clip_vit.pt"));
  EXPECT_EQ(vit.at("visual.conv1.weight").shape, (Shape{128, 3, 32, 32}));
  EXPECT_EQ(vit.at("visual.positional_embedding").shape, (Shape{50, 128}));
  EXPECT_EQ(vit.at("token_embedding.weight").shape, (Shape{49408, 64}));
  EXPECT_EQ(vit.at("token_embedding.weight").dtype, DType::F16);
  EXPECT_EQ(vit.at("logit_scale").shape, Shape{});
}

TEST(WeightsFixtures, LegacyPlacesCheckpointEqualsResnetBasic) {
  const WeightMap legacy = load_weights(fixture("models/resnet_places_legacy.pth.tar"));
  const WeightMap basic = load_weights(fixture("models/resnet_basic.pth"));
  EXPECT_EQ(legacy.format(), "torch-legacy");
  // The legacy file has no num_batches_tracked buffers: exactly the float tensors, "module." stripped.
  EXPECT_EQ(legacy.size(), 62u);
  std::vector<std::string> float_names;
  for (const HostTensor& tensor : basic.tensors())
    if (tensor.dtype == DType::F32) float_names.push_back(tensor.name);
  EXPECT_EQ(names_of(legacy), float_names);
  for (const HostTensor& tensor : legacy.tensors()) expect_same_tensor(tensor, basic.at(tensor.name));
}

TEST(WeightsFixtures, TorchScriptArchiveEqualsStateDict) {
  const WeightMap jit = load_weights(fixture("models/clip_vit.jit.pt"));
  const WeightMap plain = load_weights(fixture("models/clip_vit.pt"));
  EXPECT_EQ(jit.format(), "torchscript");
  EXPECT_EQ(jit.metadata.at("torchscript.class"), "__torch__.clip.model.CLIP");
  const std::vector<std::string> plain_names = names_of(plain);
  std::set<std::string> expected(plain_names.begin(), plain_names.end());
  expected.insert({"input_resolution", "context_length", "vocab_size"});
  const std::vector<std::string> jit_names = names_of(jit);
  EXPECT_EQ(std::set<std::string>(jit_names.begin(), jit_names.end()), expected);
  EXPECT_EQ(jit.size(), expected.size());
  for (const HostTensor& tensor : plain.tensors()) expect_same_tensor(jit.at(tensor.name), tensor);
  const std::map<std::string, float> extras = {
      {"input_resolution", 224}, {"context_length", 77}, {"vocab_size", 49408}};
  for (const auto& [name, value] : extras) {
    EXPECT_EQ(jit.at(name).dtype, DType::I64) << name;
    EXPECT_EQ(to_f32(jit.at(name)), std::vector<float>{value}) << name;
  }
}

TEST(WeightsFixtures, HuggingFaceFolders) {
  const WeightMap clip = load_weights_folder(fixture("hf/clip_hf"));
  EXPECT_EQ(clip.format(), "safetensors");
  const std::vector<std::string> keys = read_json("hf/versions.json")["clip_hf_keys"].get<std::vector<std::string>>();
  const std::vector<std::string> names = names_of(clip);
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), std::set<std::string>(keys.begin(), keys.end()));
  EXPECT_EQ(names.size(), keys.size());
  const WeightMap mpnet = load_weights_folder(fixture("hf/mpnet"));
  EXPECT_EQ(mpnet.at("embeddings.word_embeddings.weight").shape, (Shape{3000, 64}));
  testing::expect_error([] { load_weights_folder(fixture("hf")); }, {"hf", "model.safetensors"});
}

TEST(WeightsFixtures, TensorsOutliveTheirMap) {
  HostTensor tensor;
  {
    const WeightMap weights = load_weights(fixture("models/resnet_basic.pth"));
    tensor = weights.at("fc.bias");
  }
  const HostTensor again = load_weights(fixture("models/resnet_basic.pth")).at("fc.bias");
  EXPECT_TRUE(same_bytes(tensor, again));
}

}  // namespace
}  // namespace clipdissect
