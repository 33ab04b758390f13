// Damaged checkpoints: truncated and flipped copies of the fixtures, lying zip headers, and random
// mutations of small synthetic files. Every one must give a clipdissect::Error naming the file.
#include <random>

#include <gtest/gtest.h>

#include "clipdissect/weights.h"
#include "fixtures.h"
#include "io/loaders.h"
#include "weights_test_util.h"

namespace clipdissect {
namespace {

using namespace clipdissect::testing;

const char* const kFixtureFiles[] = {"models/resnet_basic.pth", "models/resnet_places_legacy.pth.tar",
                                     "models/clip_vit.jit.pt", "expected/hooks_vit_target.safetensors"};

TEST(WeightsCorrupt, TruncatedFixturesAreErrors) {
  TempDir dir;
  for (const char* relative : kFixtureFiles) {
    const Bytes original = read_bytes(fixture(relative));
    const std::size_t size = original.size();
    for (std::size_t cut :
         {std::size_t{0}, std::size_t{5}, std::size_t{64}, size / 10, size / 2, size - 100, size - 1}) {
      const auto path = dir.path() / fmt::format("cut{}_{}", cut, std::filesystem::path(relative).filename().string());
      write_bytes(path, Bytes(original.begin(), original.begin() + static_cast<std::ptrdiff_t>(cut)));
      expect_error([&] { load_weights(path); }, {path.string()});
    }
  }
}

TEST(WeightsCorrupt, FlippedMagicIsAnError) {
  TempDir dir;
  for (const char* relative : kFixtureFiles) {
    Bytes bytes = read_bytes(fixture(relative));
    bytes[0] ^= std::byte{0xff};
    const auto path = dir.path() / std::filesystem::path(relative).filename();
    write_bytes(path, bytes);
    expect_error([&] { load_weights(path); }, {path.string()});
  }
}

TEST(WeightsCorrupt, ZipSizeClaimsBeyondTheFile) {
  TempDir dir;
  Bytes stored = read_bytes(fixture("models/resnet_basic.pth"));
  const std::size_t central = find_signature(stored, 0x02014b50);
  patch<std::uint32_t>(stored, central + 20, 0x7fffffff);  // compressed size
  patch<std::uint32_t>(stored, central + 24, 0x7fffffff);  // uncompressed size
  const auto path = dir.path() / "claims.pth";
  write_bytes(path, stored);
  expect_error([&] { load_weights(path); }, {path.string(), "resnet_basic/data.pkl", "2147483647"});

  Bytes entries = read_bytes(fixture("models/resnet_basic.pth"));
  patch<std::uint64_t>(entries, find_signature(entries, 0x06064b50) + 32, std::uint64_t{1} << 40);  // entry count
  const auto count_path = dir.path() / "count.pth";
  write_bytes(count_path, entries);
  expect_error([&] { load_weights(count_path); }, {count_path.string(), "entries cannot fit"});
}

TEST(WeightsCorrupt, DeflateBombIsRefused) {
  TempDir dir;
  Bytes zip = make_zip({{"archive/data.pkl", Bytes(1000), true}});
  patch<std::uint32_t>(zip, find_signature(zip, 0x02014b50) + 24, 0xf0000000);  // claims 4 GB
  const auto path = dir.path() / "bomb.pt";
  write_bytes(path, zip);
  expect_error([&] { load_weights(path); }, {path.string(), "zip bomb"});
}

TEST(WeightsCorrupt, CrcMismatchIsAnError) {
  TempDir dir;
  Bytes bytes = read_bytes(fixture("models/resnet_basic.pth"));
  bytes[bytes.size() / 2] ^= std::byte{0x01};  // inside some storage
  const auto path = dir.path() / "crc.pth";
  write_bytes(path, bytes);
  expect_error([&] { load_weights(path); }, {path.string(), "CRC mismatch"});
}

TEST(WeightsCorrupt, LegacyHugeStorageClaim) {
  PickleWriter main;
  main.empty_dict().str("w").tensor("FloatStorage", "1", std::int64_t{1} << 61, 0, {1}, {1}, true).setitem().stop();
  Bytes file = make_legacy(main.bytes(), {{"1", Bytes(8)}}, {4});
  patch<std::uint64_t>(file, file.size() - 16, std::uint64_t{1} << 61);  // the element count before the data
  expect_error([&] { io::load_weights(io::MappedFile::from_bytes("huge.pth", file)); },
               {"huge.pth", "storage '1'", "truncated"});
}

// Small valid files of every format, for mutation.
std::vector<Bytes> mutation_seeds() {
  std::vector<Bytes> seeds;
  PickleWriter state;
  state.global("collections", "OrderedDict").empty_tuple().reduce().mark();
  state.str("a").tensor("FloatStorage", "0", 6, 0, {2, 3}, {3, 1});
  state.str("b").tensor("FloatStorage", "0", 6, 0, {3, 2}, {1, 3}).setitems().stop();
  const std::vector<StorageBytes> storages = {{"0", Bytes(24, std::byte{0x3f})}};
  seeds.push_back(make_torch_zip(state.bytes(), storages));
  seeds.push_back(make_torch_zip(state.bytes(), storages, {}, /*deflate=*/true, /*zip64=*/true));
  PickleWriter legacy;
  legacy.empty_dict().mark().str("state_dict").empty_dict().str("module.w");
  legacy.tensor("HalfStorage", "9", 4, 1, {3}, {1}, true).setitem().setitems().stop();
  seeds.push_back(make_legacy(legacy.bytes(), {{"9", Bytes(8, std::byte{0x3c})}}, {2}));
  PickleWriter script;
  script.global("__torch__.m", "M").empty_tuple().newobj().empty_dict().str("w");
  script.tensor("FloatStorage", "0", 6, 0, {6}, {1}).setitem().build().stop();
  seeds.push_back(make_torch_zip(script.bytes(), storages, {{"archive/code/m.py", Bytes(4)}}));
  Bytes safetensors;
  const std::string header = R"({"__metadata__":{"k":"v"},"x":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})";
  append_le<std::uint64_t>(safetensors, header.size());
  for (char c : header) safetensors.push_back(std::byte(c));
  safetensors.resize(safetensors.size() + 4);
  seeds.push_back(safetensors);
  return seeds;
}

TEST(WeightsCorrupt, RandomMutationsNeverCrash) {
  std::mt19937 rng(12345);
  int loaded = 0;
  int rejected = 0;
  for (const Bytes& seed : mutation_seeds()) {
    ASSERT_NO_THROW(io::load_weights(io::MappedFile::from_bytes("seed", seed)));
    for (int round = 0; round < 600; ++round) {
      Bytes bytes = seed;
      if (round % 10 == 0) {
        bytes.resize(rng() % bytes.size());
      } else {
        for (unsigned flips = 1 + rng() % 3; flips > 0; --flips) bytes[rng() % bytes.size()] = std::byte(rng() % 256);
      }
      try {
        const WeightMap weights = io::load_weights(io::MappedFile::from_bytes("mutant.bin", bytes));
        for (const HostTensor& tensor : weights.tensors()) to_f32(tensor);  // touch every byte
        ++loaded;
      } catch (const Error& error) {
        EXPECT_NE(std::string(error.what()).find("mutant.bin"), std::string::npos) << error.what();
        ++rejected;
      }
    }
  }
  EXPECT_GT(rejected, 1000);
  EXPECT_GT(loaded, 50);  // flips inside tensor data still load
}

}  // namespace
}  // namespace clipdissect
