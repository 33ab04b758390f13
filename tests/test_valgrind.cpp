// A small end-to-end `describe` under valgrind's memcheck: no invalid access, no use of uninitialised memory,
// no definite leak, and the same results as without valgrind. (ASan+UBSan cover the unit tests; valgrind also
// sees the uninstrumented libraries and the whole program as users run it.)
#include <fstream>

#include <gtest/gtest.h>

#include "cli_runner.h"
#include "fixtures.h"
#include "test_files.h"

namespace clipdissect {
namespace {

namespace fs = std::filesystem;
using testing::fixture;

TEST(Valgrind, SmallDescribeHasNoMemoryErrorsAndTheSameResults) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "valgrind cannot run AddressSanitizer binaries; the Release build's pass runs this test";
#endif
  ASSERT_EQ(std::system("valgrind --version >/dev/null 2>&1"), 0) << "valgrind is missing (scripts/setup.sh installs it)";
  testing::TemporaryFolder dir;
  std::ofstream list(dir.path() / "images.txt");
  for (const char* image : {"00_jpg_500x375.jpg", "09_jpg_cmyk_300x400.jpg", "12_png_p_200x150.png",
                            "14_png_i16_160x120.png"})  // decoders and mode conversions too
    list << fixture(std::string("images/Zebra_stripes/") + image).string() << "\n";
  list.close();
  std::ifstream all(fixture("e2e/concepts.txt"));
  std::ofstream concepts(dir.path() / "concepts.txt");
  std::string line;
  for (int i = 0; i < 20 && std::getline(all, line); ++i) concepts << line << "\n";
  concepts.close();
  const auto args = [&](const std::string& out) {
    return std::vector<std::string>{
        "describe", "--clip", fixture("models/clip_vit.pt"), "--target", fixture("models/resnet_basic.pth"),
        "--probe", (dir.path() / "images.txt").string(), "--concepts", (dir.path() / "concepts.txt").string(),
        "--layers", "layer4,fc", "--similarity", "cos", "--bpe", fixture("clip/bpe_simple_vocab_16e6.txt.gz"),
        "--no-cache", "--threads", "1", "--batch-size", "4", "--top-images", "3", "--quiet", "--out",
        (dir.path() / out).string()};
  };
  ASSERT_EQ(testing::run_cli(args("plain"), dir.path()).status, 0);

  const std::string suppressions = std::string(CLIPDISSECT_SOURCE_DIR) + "/tests/data/valgrind.supp";
  const fs::path log = dir.path() / "valgrind.log";
  const std::string command = "valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite "
                              "--show-leak-kinds=definite --suppressions=" + testing::shell_quote(suppressions) +
                              " --log-file=" + testing::shell_quote(log.string()) + " " +
                              testing::cli_command(args("valgrind")) + " >/dev/null 2>&1";
  const int raw = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(raw)) << command;
  EXPECT_EQ(WEXITSTATUS(raw), 0) << testing::read_file(log);
  EXPECT_NE(testing::read_file(log).find("ERROR SUMMARY: 0 errors"), std::string::npos) << testing::read_file(log);
  EXPECT_EQ(testing::read_file(dir.path() / "valgrind" / "descriptions.csv"),
            testing::read_file(dir.path() / "plain" / "descriptions.csv"));
}

}  // namespace
}  // namespace clipdissect
