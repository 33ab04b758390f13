// `clipdissect describe` as users run it: outputs, cache invalidation and bad input.
#include <cstring>
#include <fstream>

#include <gtest/gtest.h>

#include "clipdissect/weights.h"
#include "describe_cli_fixture.h"

namespace clipdissect {
namespace {

namespace fs = std::filesystem;
using testing::fixture;

TEST_F(DescribeCli, ChangedImageOrModelInvalidatesTheCache) {
  const fs::path images = copy_images();
  const fs::path target = dir_.path() / "target.pth";
  fs::copy_file(fixture("models/resnet_bottleneck.pth"), target);

  ASSERT_EQ(run(args(images, target, dir_.path() / "a")).status, 0);
  EXPECT_FALSE(run_json(dir_.path() / "a")["cache"]["clip_images"].get<bool>());
  // The run records where it ran: the CPU, in fp32, by default.
  EXPECT_EQ(run_json(dir_.path() / "a")["settings"]["device"], "cpu");
  EXPECT_EQ(run_json(dir_.path() / "a")["settings"]["clip_precision"], "fp32");
  EXPECT_EQ(run_json(dir_.path() / "a")["settings"]["target_precision"], "fp32");
  const std::string first_csv = testing::read_file(dir_.path() / "a" / "descriptions.csv");

  // Unchanged inputs: everything from the cache, same results.
  ASSERT_EQ(run(args(images, target, dir_.path() / "b")).status, 0);
  EXPECT_TRUE(run_json(dir_.path() / "b")["cache"]["clip_images"].get<bool>());
  EXPECT_EQ(run_json(dir_.path() / "b")["cache"]["target_layers"], 2);
  EXPECT_EQ(testing::read_file(dir_.path() / "b" / "descriptions.csv"), first_csv);

  // One image replaced by another (same name): the image embeddings and activations are recomputed.
  fs::copy_file(images / "banana" / fs::directory_iterator(images / "banana")->path().filename(),
                images / "Zebra_stripes" / "00_jpg_500x375.jpg", fs::copy_options::overwrite_existing);
  ASSERT_EQ(run(args(images, target, dir_.path() / "c")).status, 0);
  EXPECT_FALSE(run_json(dir_.path() / "c")["cache"]["clip_images"].get<bool>());
  EXPECT_EQ(run_json(dir_.path() / "c")["cache"]["target_layers"], 0);
  EXPECT_TRUE(run_json(dir_.path() / "c")["cache"]["clip_texts"].get<bool>());

  // Another checkpoint at the same path: the target activations are recomputed, the CLIP ones are not.
  fs::copy_file(fixture("models/resnet_basic.pth"), target, fs::copy_options::overwrite_existing);
  ASSERT_EQ(run(args(images, target, dir_.path() / "d", "layer4")).status, 0);
  EXPECT_TRUE(run_json(dir_.path() / "d")["cache"]["clip_images"].get<bool>());
  EXPECT_EQ(run_json(dir_.path() / "d")["cache"]["target_layers"], 0);
  EXPECT_NE(testing::read_file(dir_.path() / "d" / "descriptions.csv").find("layer4,127,"), std::string::npos);
}

// A cache entry whose key matches but whose rows name images outside the probe set (a damaged or hostile file
// in the cache folder) is recomputed, never indexed with.
TEST_F(DescribeCli, DamagedCacheEntriesAreRecomputedNotTrusted) {
  const fs::path target = fixture("models/resnet_bottleneck.pth");
  ASSERT_EQ(run(args(fixture("images"), target, dir_.path() / "a", "fc")).status, 0);
  int damaged = 0;
  for (const auto& entry : fs::directory_iterator(dir_.path() / "cache")) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("clip-image-", 0) != 0 && name.rfind("target-", 0) != 0) continue;
    const WeightMap original = load_weights(entry.path());
    const HostTensor& values = original.at("values");
    std::vector<std::int64_t> ids(values.shape[0]);
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>(1000000 + i);
    OwnedTensor id_tensor{"ids", DType::I64, {values.shape[0]}, std::vector<std::byte>(ids.size() * 8)};
    std::memcpy(id_tensor.bytes.data(), ids.data(), id_tensor.bytes.size());
    save_safetensors(entry.path(), {make_f32_tensor("values", values.shape, to_f32(values)), id_tensor},
                     original.metadata);
    ++damaged;
  }
  ASSERT_EQ(damaged, 2);
  const testing::CliResult again = run(args(fixture("images"), target, dir_.path() / "b", "fc"));
  ASSERT_EQ(again.status, 0) << again.err;
  EXPECT_FALSE(run_json(dir_.path() / "b")["cache"]["clip_images"].get<bool>());
  EXPECT_EQ(run_json(dir_.path() / "b")["cache"]["target_layers"], 0);
  EXPECT_TRUE(testing::read_file(dir_.path() / "b" / "descriptions.csv") ==
              testing::read_file(dir_.path() / "a" / "descriptions.csv"));
}

TEST_F(DescribeCli, UnreadableImageIsSkippedAndCountedOrFailsWithStrict) {
  const fs::path images = copy_images();
  std::ofstream(images / "apple" / "broken.jpg") << "not a jpeg";
  const fs::path target = fixture("models/resnet_bottleneck.pth");
  const testing::CliResult ok = run(args(images, target, dir_.path() / "out"));
  ASSERT_EQ(ok.status, 0) << ok.err;
  const nlohmann::json run = run_json(dir_.path() / "out");
  EXPECT_EQ(run["counts"]["skipped_images"], 1);
  EXPECT_EQ(run["counts"]["used_images"], 130);
  EXPECT_NE(run["skipped_images"][0]["path"].get<std::string>().find("broken.jpg"), std::string::npos);

  std::vector<std::string> strict = args(images, target, dir_.path() / "strict");
  strict.push_back("--strict");
  strict.push_back("--no-cache");
  const testing::CliResult failed = this->run(strict);
  EXPECT_EQ(failed.status, 1);
  EXPECT_NE(failed.err.find("broken.jpg"), std::string::npos) << failed.err;
  EXPECT_FALSE(fs::exists(dir_.path() / "strict" / "run.json"));
}

TEST_F(DescribeCli, BadInputsGiveClearErrors) {
  const fs::path target = fixture("models/resnet_bottleneck.pth");
  std::vector<std::string> a = args(fixture("images"), target, dir_.path() / "x", "layer4.0.conv9");
  testing::CliResult r = run(a);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("layer4.0.conv3"), std::string::npos) << r.err;

  std::ofstream(dir_.path() / "empty.txt") << "\n\n";
  a = args(fixture("images"), target, dir_.path() / "x");
  a[8] = (dir_.path() / "empty.txt").string();  // --concepts
  r = run(a);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("concept set is empty"), std::string::npos) << r.err;

  // 20 images are fewer than SoftWPMI's top_k of 100.
  std::ofstream list(dir_.path() / "few.txt");
  for (const auto& entry : fs::directory_iterator(fixture("images/Zebra_stripes"))) list << entry.path().string() << "\n";
  list.close();
  a = args(dir_.path() / "few.txt", target, dir_.path() / "x");
  r = run(a);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("at least 100 probe images"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_.path() / "x" / "run.json"));

  a = args(fixture("images"), target, dir_.path() / "x");
  a[2] = "ViT-B/16";  // a named default that is not in the (empty) cache
  const std::string command = "CLIPDISSECT_CACHE=" + testing::shell_quote(dir_.path() / "empty-cache") + " " +
                              testing::cli_command(a) + " 2>" + testing::shell_quote(dir_.path() / "err");
  EXPECT_NE(std::system(command.c_str()), 0);
  const std::string err = testing::read_file(dir_.path() / "err");
  EXPECT_NE(err.find("clipdissect download ViT-B/16"), std::string::npos) << err;
}

}  // namespace
}  // namespace clipdissect
