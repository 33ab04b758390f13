// `clipdissect describe` as users run it: outputs, cache invalidation, bad input, and SIGKILL at any moment.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "fixtures.h"
#include "test_files.h"

namespace clipdissect {
namespace {

namespace fs = std::filesystem;
using testing::fixture;

class DescribeCli : public ::testing::Test {
 protected:
  std::vector<std::string> args(const fs::path& images, const fs::path& target, const fs::path& out,
                                const std::string& layers = "layer4,fc") const {
    return {"describe", "--clip", fixture("models/clip_vit.pt"), "--target", target.string(), "--probe",
            images.string(), "--concepts", fixture("e2e/concepts.txt"), "--layers", layers, "--out", out.string(),
            "--cache-dir", (dir_.path() / "cache").string(), "--bpe", fixture("clip/bpe_simple_vocab_16e6.txt.gz"),
            "--threads", "2", "--quiet"};
  }
  nlohmann::json run_json(const fs::path& out) const {
    return nlohmann::json::parse(testing::read_file(out / "run.json"));
  }
  // A private copy of the fixture probe images, which the test may change.
  fs::path copy_images() const {
    const fs::path images = dir_.path() / "images";
    fs::copy(fixture("images"), images, fs::copy_options::recursive);
    fs::permissions(images, fs::perms::owner_write, fs::perm_options::add);
    for (const auto& entry : fs::recursive_directory_iterator(images))
      fs::permissions(entry.path(), fs::perms::owner_write, fs::perm_options::add);  // fixtures are read-only
    return images;
  }
  testing::CliResult run(const std::vector<std::string>& a) const { return testing::run_cli(a, dir_.path()); }

  testing::TemporaryFolder dir_;
};

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

TEST_F(DescribeCli, KilledRunsNeverLeaveEntriesThatALaterRunAccepts) {
  const fs::path target = fixture("models/resnet_bottleneck.pth");
  const fs::path reference_out = dir_.path() / "reference";
  std::vector<std::string> clean = args(fixture("images"), target, reference_out, "layer3,layer4,fc");
  clean.push_back("--no-cache");
  ASSERT_EQ(run(clean).status, 0);
  const std::string expected = testing::read_file(reference_out / "descriptions.csv");

  const fs::path out = dir_.path() / "killed";
  const std::vector<std::string> cached = args(fixture("images"), target, out, "layer3,layer4,fc");
  for (int delay_ms : {30, 150, 400, 800, 1500, 2500}) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const std::string command = testing::cli_command(cached) + " >/dev/null 2>&1";
      ::execl("/bin/sh", "sh", "-c", ("exec " + command).c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
  }
  const testing::CliResult final_run = run(cached);
  ASSERT_EQ(final_run.status, 0) << final_run.err;
  EXPECT_EQ(testing::read_file(out / "descriptions.csv"), expected);
}

}  // namespace
}  // namespace clipdissect
