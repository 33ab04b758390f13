// Running the clipdissect binary from tests.
#pragma once

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fixtures.h"
#include "test_files.h"

namespace clipdissect::testing {

struct CliResult {
  int status = -1;
  std::string out, err;
};

inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// The command line that runs clipdissect with `args`.
inline std::string cli_command(const std::vector<std::string>& args) {
  std::string command = shell_quote(cli_path().string());
  for (const std::string& a : args) {
    command += ' ';  // not " " + ...: GCC 12 warns falsely (-Wrestrict) on operator+(const char*, string&&)
    command += shell_quote(a);
  }
  return command;
}

// Runs clipdissect with `args` and `input` on stdin; `scratch` holds the captured streams.
inline CliResult run_cli(const std::vector<std::string>& args, const std::filesystem::path& scratch,
                         const std::string& input = "") {
  const std::filesystem::path in = scratch / "stdin", out = scratch / "stdout", err = scratch / "stderr";
  std::ofstream(in, std::ios::binary) << input;
  const std::string command =
      cli_command(args) + " <" + shell_quote(in) + " >" + shell_quote(out) + " 2>" + shell_quote(err);
  const int raw = std::system(command.c_str());
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, read_file(out), read_file(err)};
}

}  // namespace clipdissect::testing
