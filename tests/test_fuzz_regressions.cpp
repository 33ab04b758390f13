// Replays every input the fuzzers found (tests/data/fuzz_regressions/<target>/*) through the same entry point
// as its fuzz target (fuzz/targets/<target>.cpp): each must load or be rejected with a clipdissect::Error,
// never crash, hang or throw anything else. Under scripts/test.sh's ASan+UBSan pass this also catches the
// memory errors they once caused.
#include <gtest/gtest.h>

#include <algorithm>

#include "fuzz_targets.h"
#include "test_files.h"

namespace clipdissect {
namespace {

namespace fs = std::filesystem;

const fs::path kRegressions = fs::path(CLIPDISSECT_SOURCE_DIR) / "tests" / "data" / "fuzz_regressions";

std::vector<fs::path> sorted_files(const fs::path& folder) {
  std::vector<fs::path> files;
  for (const fs::directory_entry& entry : fs::directory_iterator(folder))
    if (entry.is_regular_file()) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

// The targets with kept inputs.
std::vector<fuzz::Target> targets_with_regressions() {
  std::vector<fuzz::Target> targets;
  for (const fuzz::Target& target : fuzz::kTargets)
    if (fs::is_directory(kRegressions / target.name)) targets.push_back(target);
  return targets;
}

TEST(FuzzRegressions, EveryFolderNamesAFuzzTarget) {
  for (const fs::directory_entry& entry : fs::directory_iterator(kRegressions)) {
    const std::string name = entry.path().filename().string();
    EXPECT_TRUE(std::any_of(std::begin(fuzz::kTargets), std::end(fuzz::kTargets),
                            [&](const fuzz::Target& target) { return target.name == name; }))
        << name << " is not a fuzz target";
  }
}

class FuzzRegression : public ::testing::TestWithParam<fuzz::Target> {};

TEST_P(FuzzRegression, EveryKeptInputIsRejectedCleanlyOrLoads) {
  const std::vector<fs::path> files = sorted_files(kRegressions / GetParam().name);
  EXPECT_FALSE(files.empty());
  for (const fs::path& file : files) {
    const std::string bytes = testing::read_file(file);
    SCOPED_TRACE(file.string());
    try {
      GetParam().run({reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()});
    } catch (const Error& error) {
      EXPECT_GT(std::string_view(error.what()).size(), 0u);
    } catch (const std::exception& error) {
      ADD_FAILURE() << "not a clean rejection: " << error.what();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, FuzzRegression, ::testing::ValuesIn(targets_with_regressions()),
                         [](const ::testing::TestParamInfo<fuzz::Target>& target) {
                           return std::string(target.param.name);
                         });

}  // namespace
}  // namespace clipdissect
