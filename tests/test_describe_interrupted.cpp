// `describe` when things go wrong around it: Ctrl-C, SIGKILL at any moment, a full disk, read-only folders, and
// two runs sharing one cache. Nothing is lost, nothing half-written is ever accepted, results stay identical.
#include <chrono>
#include <fstream>
#include <set>
#include <thread>

#include "describe_cli_fixture.h"
#include "report_run.h"

namespace clipdissect {
namespace {

namespace fs = std::filesystem;
using testing::fixture;

class DescribeInterrupted : public DescribeCli {
 protected:
  const fs::path target_ = fixture("models/resnet_bottleneck.pth");

  // descriptions.csv of an uninterrupted run without cache: what every other run must reproduce exactly (with
  // the same batch size: like PyTorch's, oneDNN's sums may round differently for another batch shape).
  std::string reference_csv(const std::string& layers) const {
    std::vector<std::string> clean = cached_args(dir_.path() / "reference", layers);
    clean.push_back("--no-cache");
    const testing::CliResult result = run(clean);
    EXPECT_EQ(result.status, 0) << result.err;
    return testing::read_file(dir_.path() / "reference" / "descriptions.csv");
  }
  std::vector<std::string> cached_args(const fs::path& out, const std::string& layers) const {
    std::vector<std::string> a = args(fixture("images"), target_, out, layers);
    a.insert(a.end(), {"--batch-size", "16"});  // several safe points in the image pass
    return a;
  }
  // Files in `folder` whose names start with `prefix`.
  static std::vector<std::string> files_starting_with(const fs::path& folder, const std::string& prefix) {
    std::vector<std::string> names;
    if (!fs::exists(folder)) return names;
    for (const auto& entry : fs::directory_iterator(folder))
      if (entry.path().filename().string().rfind(prefix, 0) == 0) names.push_back(entry.path().filename().string());
    return names;
  }
  // Runs a shell script; its exit status, or -1 when a signal ended it.
  static int shell(const std::string& script) {
    const int raw = std::system(("/bin/sh -c " + testing::shell_quote(script)).c_str());
    return WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  }
  // Whether this process may make private mounts (root, or a container that allows it).
  static bool can_mount_privately() { return shell("unshare -m true 2>/dev/null") == 0; }
  // `command` run in a private mount namespace after `mounts` (shell commands) have run there.
  static std::string with_mounts(const std::string& mounts, const std::string& command) {
    return "unshare -m /bin/sh -c " + testing::shell_quote("set -e; " + mounts + "; exec " + command);
  }
  static std::string redirected(const std::string& command, const fs::path& err) {
    return command + " >/dev/null 2>" + testing::shell_quote(err.string());
  }
};

TEST_F(DescribeInterrupted, InterruptSavesTheImagePassAndTheNextRunContinuesIt) {
  const auto started = std::chrono::steady_clock::now();
  const std::string expected = reference_csv("layer3,layer4,fc");
  const auto whole_run = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
  const fs::path out = dir_.path() / "out", cache = dir_.path() / "cache", err = dir_.path() / "interrupted.err";
  bool continued = false;
  // The signal must land inside the image pass, after model loading: try later and later.
  for (double fraction : {0.2, 0.35, 0.5, 0.65, 0.8}) {
    fs::remove_all(cache);
    fs::remove_all(out);
    const pid_t pid = spawn(testing::cli_command(cached_args(out, "layer3,layer4,fc")), err);
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<std::int64_t>(fraction * whole_run.count())));
    ::kill(pid, SIGINT);
    const int status = wait_for(pid);
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGINT) continue;  // before the handler was installed: later
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 130) << "status " << status << testing::read_file(err);
    EXPECT_NE(testing::read_file(err).find("interrupted; "), std::string::npos) << testing::read_file(err);
    EXPECT_FALSE(fs::exists(out / "run.json"));
    EXPECT_FALSE(fs::exists(out / "descriptions.csv"));
    const bool saved_part = !files_starting_with(cache, "partial-").empty();

    const testing::CliResult next = run(cached_args(out, "layer3,layer4,fc"));
    ASSERT_EQ(next.status, 0) << next.err;
    EXPECT_TRUE(testing::read_file(out / "descriptions.csv") == expected);
    EXPECT_TRUE(files_starting_with(cache, "partial-").empty()) << "a finished pass leaves no partial entries";
    const std::int64_t continued_from = run_json(out)["cache"]["continued_from_image"].get<std::int64_t>();
    EXPECT_EQ(continued_from > 0, saved_part);
    if (saved_part) {
      EXPECT_EQ(continued_from % 16, 0) << "a stop lands between batches of 16";
      EXPECT_LT(continued_from, 130);
      continued = true;
      break;
    }
  }
  EXPECT_TRUE(continued) << "no interrupt landed inside the image pass";
}

TEST_F(DescribeInterrupted, SecondInterruptEndsTheRunAtOnce) {
  const auto started = std::chrono::steady_clock::now();
  reference_csv("layer4");
  const auto whole_run = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
  const fs::path err = dir_.path() / "err";
  // The first interrupt must land while the run works (not before the handler exists, not after the run), the
  // second before the run stops on its own at the next safe point: it follows as soon as the handler has said it
  // took the first. Earlier and earlier tries.
  bool ended_by_second = false;
  for (double fraction : {0.5, 0.35, 0.2, 0.1}) {
    fs::remove_all(dir_.path() / "out");
    const pid_t pid = spawn(testing::cli_command(cached_args(dir_.path() / "out", "layer4")), err);
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<std::int64_t>(fraction * whole_run.count())));
    ::kill(pid, SIGINT);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (testing::read_file(err).find("interrupt again to quit at once") == std::string::npos &&
           std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    // The first interrupt was the handler's (it said so); only then can the second be the default action's.
    const bool handled = testing::read_file(err).find("interrupt again to quit at once") != std::string::npos;
    ::kill(pid, SIGINT);
    const int status = wait_for(pid);
    EXPECT_FALSE(fs::exists(dir_.path() / "out" / "run.json"));
    if (handled && WIFSIGNALED(status) && WTERMSIG(status) == SIGINT) {
      ended_by_second = true;
      break;
    }
  }
  EXPECT_TRUE(ended_by_second) << "no try ended by the second interrupt: " << testing::read_file(err);
}

TEST_F(DescribeInterrupted, KilledRunsNeverLeaveEntriesThatALaterRunAccepts) {
  const auto started = std::chrono::steady_clock::now();
  const std::string expected = reference_csv("layer3,layer4,fc");
  const auto whole_run = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
  const fs::path out = dir_.path() / "killed";
  // A complete earlier run with other layers in the same folder: its run.json must never vouch for new files.
  ASSERT_EQ(run(cached_args(out, "fc")).status, 0);
  // The layers in descriptions.csv and those run.json lists, when there is a run.json: they must agree.
  const auto layers_claimed = [&] {
    std::set<std::string> in_csv, in_run;
    if (!fs::exists(out / "run.json")) return std::pair(in_csv, in_run);  // no claim of a complete run
    for (const auto& row : testing::read_descriptions_csv(out / "descriptions.csv")) in_csv.insert(row.layer);
    const nlohmann::json run = run_json(out);  // named: a range-for would not keep the temporary alive
    for (const auto& layer : run["settings"]["layers"]) in_run.insert(layer.get<std::string>());
    return std::pair(in_csv, in_run);
  };
  // Kill times spread over a whole run (the later ones find CLIP's embeddings cached and may finish first).
  for (double fraction : {0.005, 0.05, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0}) {
    const auto delay = std::chrono::milliseconds(static_cast<std::int64_t>(fraction * whole_run.count()));
    const pid_t pid = spawn(testing::cli_command(cached_args(out, "layer3,layer4,fc")), dir_.path() / "err");
    std::this_thread::sleep_for(delay);
    ::kill(pid, SIGKILL);
    wait_for(pid);
    const auto [in_csv, in_run] = layers_claimed();
    EXPECT_EQ(in_csv, in_run) << "killed after " << delay.count() << " ms";
  }
  const testing::CliResult final_run = run(cached_args(out, "layer3,layer4,fc"));
  ASSERT_EQ(final_run.status, 0) << final_run.err;
  EXPECT_TRUE(testing::read_file(out / "descriptions.csv") == expected);
  EXPECT_EQ(layers_claimed().second, (std::set<std::string>{"layer3", "layer4", "fc"}));
  EXPECT_EQ(layers_claimed().first, layers_claimed().second);
}

TEST_F(DescribeInterrupted, TwoRunsSharingACacheBothFinishWithTheSameResults) {
  const std::string expected = reference_csv("layer4,fc");
  const fs::path first = dir_.path() / "first", second = dir_.path() / "second";
  const pid_t a = spawn(testing::cli_command(cached_args(first, "layer4,fc")), dir_.path() / "first.err");
  const pid_t b = spawn(testing::cli_command(cached_args(second, "layer4,fc")), dir_.path() / "second.err");
  const int status_a = wait_for(a), status_b = wait_for(b);
  ASSERT_TRUE(WIFEXITED(status_a) && WEXITSTATUS(status_a) == 0) << testing::read_file(dir_.path() / "first.err");
  ASSERT_TRUE(WIFEXITED(status_b) && WEXITSTATUS(status_b) == 0) << testing::read_file(dir_.path() / "second.err");
  EXPECT_TRUE(testing::read_file(first / "descriptions.csv") == expected);
  EXPECT_TRUE(testing::read_file(second / "descriptions.csv") == expected);
  // What they left in the cache is whole: a third run takes everything from it and agrees.
  const testing::CliResult third = run(cached_args(dir_.path() / "third", "layer4,fc"));
  ASSERT_EQ(third.status, 0) << third.err;
  EXPECT_TRUE(run_json(dir_.path() / "third")["cache"]["clip_images"].get<bool>());
  EXPECT_EQ(run_json(dir_.path() / "third")["cache"]["target_layers"], 2);
  EXPECT_TRUE(testing::read_file(dir_.path() / "third" / "descriptions.csv") == expected);
  EXPECT_TRUE(files_starting_with(dir_.path() / "cache", ".").empty()) << "no temporary files left behind";
}

// A file size limit (every process may set one) makes writes fail as a full disk does.
TEST_F(DescribeInterrupted, WritesThatFailLeaveNoOutputThatClaimsToBeComplete) {
  const fs::path out = dir_.path() / "out", err = dir_.path() / "err";
  ASSERT_EQ(run(cached_args(out, "fc")).status, 0);  // an earlier complete run in the same folder
  const std::string command = testing::cli_command(cached_args(out, "layer4,fc"));
  // 400 blocks of 512 bytes: enough for some cache entries and descriptions.csv, not for descriptions.json.
  const int status = shell("trap '' XFSZ; ulimit -f 400; exec " + redirected(command, err));
  EXPECT_EQ(status, 1);
  const std::string message = testing::read_file(err);
  EXPECT_NE(message.find("descriptions.json: write failed: File too large"), std::string::npos) << message;
  EXPECT_NE(message.find("cannot write a cache entry"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(out / "run.json"));
  EXPECT_TRUE(files_starting_with(out, ".").empty()) << "no temporary files left behind";
  EXPECT_TRUE(files_starting_with(dir_.path() / "cache", ".").empty());
}

TEST_F(DescribeInterrupted, FullDisksFailClearlyOrCostOnlyTheCache) {
  if (!can_mount_privately()) GTEST_SKIP() << "needs a private mount namespace (unshare -m) for a small tmpfs";
  const std::string expected = reference_csv("layer4,fc");
  const fs::path small = dir_.path() / "small", err = dir_.path() / "err";
  fs::create_directories(small);
  const std::string mount_small = "mount -t tmpfs -o size=256k tmpfs " + testing::shell_quote(small.string());

  // The output folder's disk fills up: a clear error naming the file, nothing that claims to be complete.
  int status = shell(redirected(with_mounts(mount_small, testing::cli_command(cached_args(small / "out", "layer4,fc"))), err));
  EXPECT_EQ(status, 1);
  EXPECT_NE(testing::read_file(err).find("write failed: No space left on device"), std::string::npos)
      << testing::read_file(err);

  // The cache's disk is full: the run still succeeds, with a warning, and the same results.
  std::vector<std::string> a = cached_args(dir_.path() / "out", "layer4,fc");
  a[14] = (small / "cache").string();  // --cache-dir
  ASSERT_EQ(a[13], "--cache-dir");
  status = shell(redirected(with_mounts(mount_small, testing::cli_command(a)), err));
  EXPECT_EQ(status, 0) << testing::read_file(err);
  EXPECT_NE(testing::read_file(err).find("No space left on device); going on without it"), std::string::npos)
      << testing::read_file(err);
  EXPECT_TRUE(testing::read_file(dir_.path() / "out" / "descriptions.csv") == expected);
}

TEST_F(DescribeInterrupted, ReadOnlyFoldersFailFastOrAreOnlyRead) {
  if (!can_mount_privately()) GTEST_SKIP() << "needs a private mount namespace (unshare -m) for a read-only mount";
  const fs::path err = dir_.path() / "err", cache = dir_.path() / "cache";
  const auto read_only = [](const fs::path& folder) {
    const std::string f = testing::shell_quote(folder.string());
    return "mount --bind " + f + " " + f + " && mount -o remount,bind,ro " + f;
  };

  // Output folder read-only: refused before any work, naming the option.
  const fs::path locked = dir_.path() / "locked";
  fs::create_directories(locked);
  const auto started = std::chrono::steady_clock::now();
  int status = shell(redirected(with_mounts(read_only(locked), testing::cli_command(cached_args(locked / "out", "fc"))), err));
  EXPECT_EQ(status, 1);
  EXPECT_NE(testing::read_file(err).find("--out " + (locked / "out").string() + ": cannot create the folder: Read-only"),
            std::string::npos)
      << testing::read_file(err);
  EXPECT_FALSE(fs::exists(cache)) << "nothing was computed";
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(30));

  // A read-only cache filled by an earlier run (a shared team cache): read, not written, same results.
  ASSERT_EQ(run(cached_args(dir_.path() / "first", "layer4,fc")).status, 0);
  status = shell(redirected(with_mounts(read_only(cache), testing::cli_command(cached_args(dir_.path() / "second", "layer4,fc"))), err));
  ASSERT_EQ(status, 0) << testing::read_file(err);
  const nlohmann::json second = run_json(dir_.path() / "second");
  EXPECT_TRUE(second["cache"]["clip_images"].get<bool>());
  EXPECT_TRUE(second["cache"]["clip_texts"].get<bool>());
  EXPECT_EQ(second["cache"]["target_layers"], 2);
  EXPECT_TRUE(testing::read_file(dir_.path() / "second" / "descriptions.csv") == testing::read_file(dir_.path() / "first" / "descriptions.csv"));

  // An empty read-only cache: warnings, and the run completes.
  const fs::path empty = dir_.path() / "empty-cache";
  fs::create_directories(empty);
  std::vector<std::string> a = cached_args(dir_.path() / "third", "layer4,fc");
  a[14] = empty.string();
  status = shell(redirected(with_mounts(read_only(empty), testing::cli_command(a)), err));
  EXPECT_EQ(status, 0) << testing::read_file(err);
  EXPECT_NE(testing::read_file(err).find("Read-only file system); going on without it"), std::string::npos)
      << testing::read_file(err);
  EXPECT_TRUE(testing::read_file(dir_.path() / "third" / "descriptions.csv") == testing::read_file(dir_.path() / "first" / "descriptions.csv"));
}

}  // namespace
}  // namespace clipdissect
