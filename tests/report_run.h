// A finished describe run of the fixtures for the report tests: layers layer4 and fc, 5 top images, and a
// concept set where every other concept holds HTML's and CSV's special characters.
#pragma once

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "cli_runner.h"
#include "fixtures.h"
#include "test_files.h"

namespace clipdissect::testing {

inline constexpr int kReportTopImages = 5;

// e2e/concepts.txt with every even line WORD written as `<i>WORD</i> & "WORD, too"`.
inline std::filesystem::path write_special_concepts(const std::filesystem::path& folder) {
  std::ifstream in(fixture("e2e/concepts.txt"));
  const std::filesystem::path path = folder / "concepts.txt";
  std::ofstream out(path);
  std::string word;
  for (int line = 0; std::getline(in, word); ++line)
    out << (line % 2 == 0 ? "<i>" + word + "</i> & \"" + word + ", too\"" : word) << "\n";
  return path;
}

// Runs `clipdissect describe` into `out`; fails the test with its stderr when it fails. The cache lives in
// the build folder, shared by the test processes that ctest starts: only the first pays for forward passes
// (entries are keyed by content and written atomically, so sharing is safe).
inline void describe_fixture_run(const std::filesystem::path& scratch, const std::filesystem::path& out) {
  const CliResult result = run_cli(
      {"describe", "--clip", fixture("models/clip_vit.pt").string(), "--target",
       fixture("models/resnet_bottleneck.pth").string(), "--probe", fixture("images").string(), "--concepts",
       write_special_concepts(scratch).string(), "--layers", "layer4,fc", "--top-images",
       std::to_string(kReportTopImages), "--out", out.string(), "--cache-dir",
       (cli_path().parent_path() / "test-cache").string(), "--bpe",
       fixture("clip/bpe_simple_vocab_16e6.txt.gz").string(), "--threads", "2", "--quiet"},
      scratch);
  ASSERT_EQ(result.status, 0) << result.err;
}

// The fixture run, made once per test process in a folder removed at exit. Tests only read it: those that
// change files work on a copy_run.
inline const std::filesystem::path& fixture_run() {
  static const TemporaryFolder folder;
  static const std::filesystem::path run = [] {
    describe_fixture_run(folder.path(), folder.path() / "run");
    return folder.path() / "run";
  }();
  return run;
}

// A copy of the fixture run's files, without report.html, in `folder`.
inline std::filesystem::path copy_run(const std::filesystem::path& folder) {
  const std::filesystem::path copy = folder / "run";
  std::filesystem::copy(fixture_run(), copy, std::filesystem::copy_options::recursive);
  std::filesystem::remove(copy / "report.html");
  return copy;
}

struct CsvRow {
  std::string layer, unit, description;
};

// descriptions.csv's rows (Python csv quoting: fields with commas or quotes are quoted, quotes doubled).
inline std::vector<CsvRow> read_descriptions_csv(const std::filesystem::path& path) {
  const std::string text = read_file(path);
  std::vector<std::vector<std::string>> rows(1, std::vector<std::string>(1));
  bool quoted = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted && c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
      rows.back().back() += '"';
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (!quoted && c == ',') {
      rows.back().emplace_back();
    } else if (!quoted && c == '\n') {
      rows.emplace_back(1);
    } else {
      rows.back().back() += c;
    }
  }
  std::vector<CsvRow> out;
  for (std::size_t r = 1; r < rows.size(); ++r)  // after the header; the last row is the empty one after "\n"
    if (rows[r].size() == 4) out.push_back({rows[r][0], rows[r][1], rows[r][2]});
  return out;
}

}  // namespace clipdissect::testing
