// A scratch folder and the fixture arguments for running `clipdissect describe` from tests.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "fixtures.h"
#include "test_files.h"

namespace clipdissect {

class DescribeCli : public ::testing::Test {
 protected:
  using path = std::filesystem::path;

  std::vector<std::string> args(const path& images, const path& target, const path& out,
                                const std::string& layers = "layer4,fc") const {
    return {"describe", "--clip", testing::fixture("models/clip_vit.pt"), "--target", target.string(), "--probe",
            images.string(), "--concepts", testing::fixture("e2e/concepts.txt"), "--layers", layers, "--out",
            out.string(), "--cache-dir", (dir_.path() / "cache").string(), "--bpe",
            testing::fixture("clip/bpe_simple_vocab_16e6.txt.gz"), "--threads", "2", "--quiet"};
  }
  nlohmann::json run_json(const path& out) const { return nlohmann::json::parse(testing::read_file(out / "run.json")); }
  // A private copy of the fixture probe images, which the test may change.
  path copy_images() const {
    const path images = dir_.path() / "images";
    std::filesystem::copy(testing::fixture("images"), images, std::filesystem::copy_options::recursive);
    std::filesystem::permissions(images, std::filesystem::perms::owner_write, std::filesystem::perm_options::add);
    for (const auto& entry : std::filesystem::recursive_directory_iterator(images))  // fixtures are read-only
      std::filesystem::permissions(entry.path(), std::filesystem::perms::owner_write, std::filesystem::perm_options::add);
    return images;
  }
  testing::CliResult run(const std::vector<std::string>& a) const { return testing::run_cli(a, dir_.path()); }

  // Starts `command` (a shell command line) in the background, its stderr into `err`; returns its pid.
  static pid_t spawn(const std::string& command, const path& err) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      const std::string line = "exec " + command + " >/dev/null 2>" + testing::shell_quote(err.string());
      ::execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    return pid;
  }
  // The raw wait status of `pid`.
  static int wait_for(pid_t pid) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    return status;
  }

  testing::TemporaryFolder dir_;
};

}  // namespace clipdissect
