// safetensors writing and reading, to_f32 and WeightMap.
#include <cmath>
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "clipdissect/weights.h"
#include "weights_test_util.h"

namespace clipdissect {
namespace {

using namespace clipdissect::testing;

constexpr DType kAllDTypes[] = {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I64,
                                DType::I32, DType::I16, DType::I8,   DType::U8,  DType::Bool};

OwnedTensor random_tensor(std::string name, DType dtype, Shape shape, std::mt19937& rng) {
  OwnedTensor tensor{std::move(name), dtype, std::move(shape), {}};
  tensor.bytes.resize(static_cast<std::size_t>(shape_numel(tensor.shape)) * dtype_size(dtype));
  for (std::byte& byte : tensor.bytes) byte = std::byte(dtype == DType::Bool ? rng() % 2 : rng() % 256);
  return tensor;
}

TEST(WeightsSafetensors, RoundTripEveryDtype) {
  TempDir dir;
  std::mt19937 rng(7);
  std::vector<OwnedTensor> tensors;
  for (DType dtype : kAllDTypes) tensors.push_back(random_tensor(std::string(dtype_name(dtype)), dtype, {3, 5}, rng));
  tensors.push_back(random_tensor("scalar", DType::F64, {}, rng));
  tensors.push_back(random_tensor("empty", DType::I8, {0, 4}, rng));
  tensors.push_back(make_f32_tensor("made", {2}, std::vector<float>{1.5f, -0.25f}));
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "{\"json\": [1]}"}};
  const auto path = dir.path() / "round.safetensors";
  save_safetensors(path, tensors, metadata);
  save_safetensors(path, tensors, metadata);  // replacing an existing file works too

  const WeightMap loaded = load_weights(path);
  EXPECT_EQ(loaded.format(), "safetensors");
  EXPECT_EQ(loaded.source(), path.string());
  EXPECT_EQ(loaded.metadata, metadata);
  ASSERT_EQ(loaded.size(), tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const HostTensor& got = loaded.tensors()[i];
    EXPECT_EQ(got.name, tensors[i].name);
    EXPECT_EQ(got.dtype, tensors[i].dtype) << got.name;
    EXPECT_EQ(got.shape, tensors[i].shape) << got.name;
    EXPECT_TRUE(std::equal(got.bytes.begin(), got.bytes.end(), tensors[i].bytes.begin(), tensors[i].bytes.end()))
        << got.name;
  }
  EXPECT_EQ(to_f32(loaded.at("made")), (std::vector<float>{1.5f, -0.25f}));

  const Bytes raw = read_bytes(path);
  std::uint64_t header_size;
  std::memcpy(&header_size, raw.data(), 8);
  EXPECT_EQ(header_size % 8, 0u);
  const std::string header(reinterpret_cast<const char*>(raw.data()) + 8, header_size);
  EXPECT_EQ(nlohmann::json::parse(header)["F16"]["dtype"], "F16");
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1) << "temporary file left behind";
}

TEST(WeightsSafetensors, WriterRejectsInconsistentTensors) {
  TempDir dir;
  const auto path = dir.path() / "bad.safetensors";
  OwnedTensor short_bytes{"w", DType::F32, {2}, Bytes(4)};
  expect_error([&] { save_safetensors(path, {short_bytes}); }, {path.string(), "'w'", "needs 8"});
  const OwnedTensor ok = make_f32_tensor("w", {1}, std::vector<float>{1});
  expect_error([&] { save_safetensors(path, {ok, ok}); }, {path.string(), "'w'"});
  expect_error([&] { save_safetensors(dir.path() / "missing" / "x.safetensors", {ok}); }, {"missing/x.safetensors"});
  EXPECT_FALSE(std::filesystem::exists(path));
  expect_error([] { make_f32_tensor("v", {2, 2}, std::vector<float>{1, 2, 3}); }, {"'v'", "[2, 2]"});
}

Bytes safetensors_bytes(const std::string& header, std::size_t data_size) {
  Bytes out;
  append_le<std::uint64_t>(out, header.size());
  for (char c : header) out.push_back(std::byte(c));
  out.resize(out.size() + data_size);
  return out;
}

TEST(WeightsSafetensors, MalformedHeadersNameFileAndProblem) {
  TempDir dir;
  struct Case {
    std::string header;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {R"({"a":)", "not valid JSON"},
      {R"({"a": 1})", "'a' is not an object"},
      {R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 999]}})", "outside the 8 data bytes"},
      {R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", "data_offsets [8, 4]"},
      {R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", "needs 12 bytes"},
      {R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})", "too many"},
      {R"({"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}})", "unsupported dtype 'F8_E4M3'"},
      {R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", "non-negative"},
      {R"({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", "non-negative integers"},
      {R"({"a": {"dtype": "F32", "data_offsets": [0, 4]}})", "no 'shape'"},
      {R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", "[begin, end]"},
      {R"({"__metadata__": {"k": 1}})", "'k' is not a string"},
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto path = dir.path() / ("case" + std::to_string(i) + ".safetensors");
    write_bytes(path, safetensors_bytes(cases[i].header, 8));
    expect_error([&] { load_weights(path); }, {path.string(), cases[i].expected});
  }
  Bytes huge = safetensors_bytes("{}", 0);
  huge[7] = std::byte{0x70};  // header size ~ 2^62
  const auto path = dir.path() / "huge.safetensors";
  write_bytes(path, huge);
  expect_error([&] { load_weights(path); }, {path.string(), "header claims"});
}

TEST(WeightsToF32, ConvertsEveryDtype) {
  auto tensor = [](DType dtype, Bytes bytes) {
    const auto count = static_cast<std::int64_t>(bytes.size() / dtype_size(dtype));
    auto owner = std::make_shared<Bytes>(std::move(bytes));
    return HostTensor{"t", dtype, {count}, *owner, owner};
  };
  EXPECT_EQ(to_f32(tensor(DType::F16, as_bytes_of(std::vector<std::uint16_t>{0x3c00, 0xc000, 0x0001}))),
            (std::vector<float>{1.0f, -2.0f, std::ldexp(1.0f, -24)}));
  EXPECT_EQ(to_f32(tensor(DType::BF16, as_bytes_of(std::vector<std::uint16_t>{0x3f80, 0xc0a0}))),
            (std::vector<float>{1.0f, -5.0f}));
  EXPECT_EQ(to_f32(tensor(DType::F64, as_bytes_of(std::vector<double>{-2.5, 1.0 / 3}))),
            (std::vector<float>{-2.5f, 1.0f / 3}));
  EXPECT_EQ(to_f32(tensor(DType::I64, as_bytes_of(std::vector<std::int64_t>{-5, 49408}))),
            (std::vector<float>{-5, 49408}));
  EXPECT_EQ(to_f32(tensor(DType::I32, as_bytes_of(std::vector<std::int32_t>{-7}))), std::vector<float>{-7});
  EXPECT_EQ(to_f32(tensor(DType::I16, as_bytes_of(std::vector<std::int16_t>{-300}))), std::vector<float>{-300});
  EXPECT_EQ(to_f32(tensor(DType::I8, as_bytes_of(std::vector<std::int8_t>{-128}))), std::vector<float>{-128});
  EXPECT_EQ(to_f32(tensor(DType::U8, as_bytes_of(std::vector<std::uint8_t>{255}))), std::vector<float>{255});
  EXPECT_EQ(to_f32(tensor(DType::Bool, as_bytes_of(std::vector<std::uint8_t>{0, 1, 2}))),
            (std::vector<float>{0, 1, 1}));
  // Unaligned data converts as well.
  Bytes shifted(1);
  const Bytes value = as_bytes_of(std::vector<float>{3.25f});
  shifted.insert(shifted.end(), value.begin(), value.end());
  const HostTensor unaligned{"u", DType::F32, {1}, std::span(shifted).subspan(1), {}};
  EXPECT_EQ(to_f32(unaligned), std::vector<float>{3.25f});
  const HostTensor inconsistent{"bad", DType::F32, {2}, std::span(shifted).subspan(1), {}};
  expect_error([&] { to_f32(inconsistent); }, {"'bad'", "[2]"});
}

TEST(WeightsMap, LookupAndDuplicates) {
  WeightMap weights("file.bin", "safetensors");
  weights.add(HostTensor{"a", DType::U8, {0}, {}, {}});
  EXPECT_TRUE(weights.contains("a"));
  EXPECT_EQ(weights.find("b"), nullptr);
  EXPECT_EQ(&weights.at("a"), &weights.tensors()[0]);
  expect_error([&] { weights.add(HostTensor{"a", DType::U8, {0}, {}, {}}); }, {"file.bin", "duplicate", "'a'"});
  expect_error([&] { weights.at("b"); }, {"file.bin", "'b'"});
  EXPECT_EQ(shape_to_string({3, 224, 224}), "[3, 224, 224]");
  EXPECT_EQ(shape_numel({}), 1);
  EXPECT_EQ(shape_numel({2, 0}), 0);
}

}  // namespace
}  // namespace clipdissect
