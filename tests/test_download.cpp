#include <algorithm>
#include <chrono>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "clipdissect/download.h"
#include "clipdissect/error.h"
#include "clipdissect/progress.h"
#include "local_http_server.h"
#include "test_files.h"

namespace clipdissect {
namespace {

namespace fs = std::filesystem;
using testing::read_file;
using testing::EnvironmentOverride;
using testing::LocalHttpServer;
using testing::TemporaryFolder;
using Behaviour = LocalHttpServer::Behaviour;

constexpr std::size_t kBlobSize = 200000;
// Computed independently with Python's hashlib over the same bytes (see make_blob).
constexpr const char* kBlobSha256 = "4b48089f07ac283414515c0232033ec039e1d72c457cad948ead5807e60575f4";
// The blob with byte 100000 inverted, as the server's corrupt mode sends it.
constexpr const char* kCorruptSha256 = "ba3ff15dc559927e2318fd22b0ad5863b01f83bd3ea2c06b4bde82ef126d6792";

std::string make_blob() {
  std::string blob(kBlobSize, '\0');
  for (std::size_t i = 0; i < kBlobSize; ++i) blob[i] = static_cast<char>((i * i + 7 * i) % 251);
  return blob;
}

fs::path part_of(const fs::path& destination) { return fs::path(destination) += ".part"; }

DownloadOptions with_sha256(std::string sha256) {
  DownloadOptions options;
  options.sha256 = std::move(sha256);
  return options;
}

// The message of the Error that download_file throws.
std::string download_error(const std::string& url, const fs::path& destination, const DownloadOptions& options) {
  try {
    download_file(url, destination, options);
  } catch (const Error& error) {
    return error.what();
  }
  ADD_FAILURE() << "expected an Error from downloading " << url;
  return "";
}

class Download : public ::testing::Test {
 protected:
  const std::string blob_ = make_blob();
  LocalHttpServer server_{blob_};
  TemporaryFolder folder_;
  const fs::path destination_ = folder_.path() / "sub" / "blob.bin";
};

TEST_F(Download, CompleteFileWithCorrectHashLeavesExactBytesAndNoPart) {
  DownloadOptions options = with_sha256(kBlobSha256);
  std::uint64_t last_done = 0, last_total = 0;
  options.progress = [&](std::uint64_t done, std::uint64_t total) {
    EXPECT_GE(done, last_done);
    last_done = done;
    last_total = total;
  };
  download_file(server_.url(), destination_, options);
  EXPECT_EQ(read_file(destination_), blob_);
  EXPECT_FALSE(fs::exists(part_of(destination_)));
  EXPECT_EQ(last_done, kBlobSize);
  EXPECT_EQ(last_total, kBlobSize);
  EXPECT_EQ(server_.range_headers(), std::vector<std::string>{""});
}

TEST_F(Download, FollowsRedirects) {
  download_file(server_.url("/moved"), destination_, with_sha256(kBlobSha256));
  EXPECT_EQ(read_file(destination_), blob_);
  EXPECT_EQ(server_.range_headers().size(), 2u);
}

TEST_F(Download, AcceptsAHashPrefixAndUpperCase) {
  download_file(server_.url(), destination_, with_sha256("4B48089F"));
  EXPECT_EQ(read_file(destination_), blob_);
}

TEST_F(Download, RejectsAnExpectedHashThatIsNotHex) {
  const std::string message = download_error(server_.url(), destination_, with_sha256("not-a-hash"));
  EXPECT_NE(message.find("not-a-hash"), std::string::npos) << message;
  EXPECT_TRUE(server_.range_headers().empty());
}

TEST_F(Download, CorruptTransferFailsWithHashMismatchAndLeavesNothing) {
  server_.set_behaviour(Behaviour::corrupt);
  const std::string message = download_error(server_.url(), destination_, with_sha256(kBlobSha256));
  for (const std::string& expected : {destination_.string(), server_.url(), std::string(kBlobSha256),
                                      std::string(kCorruptSha256)})
    EXPECT_NE(message.find(expected), std::string::npos) << "missing " << expected << " in: " << message;
  EXPECT_FALSE(fs::exists(destination_));
  EXPECT_FALSE(fs::exists(part_of(destination_)));
}

TEST_F(Download, WrongHashPrefixFails) {
  const std::string message = download_error(server_.url(), destination_, with_sha256("4b48089e"));
  EXPECT_NE(message.find(kBlobSha256), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(destination_));
}

TEST_F(Download, InterruptedTransferKeepsPartThenResumesWithRange) {
  server_.set_behaviour(Behaviour::interrupt);
  const std::string message = download_error(server_.url(), destination_, with_sha256(kBlobSha256));
  EXPECT_NE(message.find("resume"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(destination_));
  ASSERT_EQ(fs::file_size(part_of(destination_)), kBlobSize / 2);

  server_.set_behaviour(Behaviour::normal);
  std::uint64_t first_done = 0;
  DownloadOptions options = with_sha256(kBlobSha256);
  options.progress = [&](std::uint64_t done, std::uint64_t total) {
    if (first_done == 0) first_done = done;
    EXPECT_EQ(total, kBlobSize);
  };
  download_file(server_.url(), destination_, options);
  EXPECT_EQ(read_file(destination_), blob_);
  EXPECT_FALSE(fs::exists(part_of(destination_)));
  EXPECT_GE(first_done, kBlobSize / 2);  // progress counts the resumed bytes
  EXPECT_EQ(server_.range_headers(), (std::vector<std::string>{"", "bytes=100000-"}));
}

TEST_F(Download, ServerIgnoringRangeStillGivesTheRightFile) {
  server_.set_behaviour(Behaviour::interrupt);
  (void)download_error(server_.url(), destination_, with_sha256(kBlobSha256));
  server_.set_behaviour(Behaviour::ignore_range);
  download_file(server_.url(), destination_, with_sha256(kBlobSha256));
  EXPECT_EQ(read_file(destination_), blob_);
  EXPECT_EQ(server_.range_headers(), (std::vector<std::string>{"", "bytes=100000-"}));
}

TEST_F(Download, CompletePartIsCheckedWhenTheServerHasNothingMore) {
  fs::create_directories(destination_.parent_path());
  std::ofstream(part_of(destination_), std::ios::binary) << blob_;
  download_file(server_.url(), destination_, with_sha256(kBlobSha256));
  EXPECT_EQ(read_file(destination_), blob_);
  EXPECT_EQ(server_.range_headers(), std::vector<std::string>{"bytes=200000-"});
}

TEST_F(Download, UnverifiablePartIsDownloadedAgainWhenTheServerHasNothingMore) {
  fs::create_directories(destination_.parent_path());
  std::ofstream(part_of(destination_), std::ios::binary) << std::string(kBlobSize + 5, 'x');
  download_file(server_.url(), destination_, DownloadOptions{});
  EXPECT_EQ(read_file(destination_), blob_);
  EXPECT_EQ(server_.range_headers(), (std::vector<std::string>{"bytes=200005-", ""}));
}

TEST_F(Download, NotFoundNamesTheUrlAndLeavesNothing) {
  server_.set_behaviour(Behaviour::not_found);
  const std::string url = server_.url("/missing.pt");
  const std::string message = download_error(url, destination_, DownloadOptions{});
  EXPECT_NE(message.find(url), std::string::npos) << message;
  EXPECT_NE(message.find("404"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(destination_));
  EXPECT_FALSE(fs::exists(part_of(destination_)));
}

TEST_F(Download, StalledServerEndsInAnError) {
  server_.set_behaviour(Behaviour::stall);
  DownloadOptions options;
  options.low_speed_time_s = 1;
  const auto start = std::chrono::steady_clock::now();
  const std::string message = download_error(server_.url(), destination_, options);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_NE(message.find("stalled"), std::string::npos) << message;
  EXPECT_EQ(fs::file_size(part_of(destination_)), LocalHttpServer::kStallBytes);
}

TEST(DownloadProtocols, RefusesAnythingButHttp) {
  TemporaryFolder folder;
  const fs::path source = folder.path() / "source.txt";
  std::ofstream(source) << "x";
  EXPECT_THROW(download_file("file://" + source.string(), folder.path() / "copy.txt", DownloadOptions{}), Error);
  EXPECT_FALSE(fs::exists(folder.path() / "copy.txt"));
}

// --- Named files ----------------------------------------------------------------------------------------------------

bool is_lower_hex(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return std::isdigit(c) || (c >= 'a' && c <= 'f'); });
}

TEST(NamedFiles, ClipEntriesCarryTheSha256OfTheirUrl) {
  int clip_models = 0;
  for (const NamedFile& file : named_files()) {
    if (file.kind != NamedFileKind::clip_model) continue;
    ++clip_models;
    EXPECT_EQ(file.sha256.size(), 64u) << file.name;
    EXPECT_TRUE(is_lower_hex(file.sha256)) << file.name;
    // clip.py: expected_sha256 = url.split("/")[-2]; the cached file keeps the URL's file name.
    EXPECT_TRUE(file.url.ends_with(std::string("/") + std::string(file.sha256) + "/" + std::string(file.file_name)))
        << file.name;
  }
  EXPECT_EQ(clip_models, 9);
}

TEST(NamedFiles, NamesAreUniqueAndHashesWellFormed) {
  std::set<std::string_view> names;
  for (const NamedFile& file : named_files()) {
    EXPECT_TRUE(names.insert(file.name).second) << file.name;
    EXPECT_TRUE(is_lower_hex(file.sha256) && file.sha256.size() <= 64) << file.name;
    EXPECT_TRUE(file.url.starts_with("http://") || file.url.starts_with("https://")) << file.name;
    EXPECT_FALSE(file.file_name.empty()) << file.name;
  }
}

TEST(NamedFiles, TorchvisionPrefixIsTheHashInTheFileName) {
  const auto resnet50 = find_named_file("resnet50");
  ASSERT_TRUE(resnet50);
  EXPECT_EQ(resnet50->url, "https://download.pytorch.org/models/resnet50-0676ba61.pth");
  EXPECT_EQ(resnet50->sha256, "0676ba61");
}

TEST(NamedFiles, FindsExactNamesOnly) {
  const auto vit = find_named_file("ViT-B/16");
  ASSERT_TRUE(vit);
  EXPECT_EQ(vit->file_name, "ViT-B-16.pt");
  EXPECT_EQ(vit->kind, NamedFileKind::clip_model);
  EXPECT_FALSE(find_named_file("vit-b/16"));
  EXPECT_FALSE(find_named_file("ViT-B-16.pt"));
}

std::string resolve_error(std::string_view name) {
  try {
    (void)resolve_named_or_path(name, false);
  } catch (const Error& error) {
    return error.what();
  }
  ADD_FAILURE() << "expected an Error resolving " << name;
  return "";
}

TEST(NamedFiles, ResolvesPathsThenCachedNamesAndExplainsWhatIsMissing) {
  TemporaryFolder folder;
  EnvironmentOverride env{{"CLIPDISSECT_CACHE", folder.path().string()}};
  const fs::path own_copy = folder.path() / "mine.pt";
  std::ofstream(own_copy) << "x";
  EXPECT_EQ(resolve_named_or_path(own_copy.string(), false), own_copy);

  const fs::path cached = folder.path() / "ViT-B-16.pt";
  EXPECT_EQ(cached_path(*find_named_file("ViT-B/16")), cached);
  const std::string message = resolve_error("ViT-B/16");
  for (const std::string& expected :
       {cached.string(), std::string(find_named_file("ViT-B/16")->url), std::string("clipdissect download ViT-B/16"),
        std::string("--clip /path/to/ViT-B-16.pt")})
    EXPECT_NE(message.find(expected), std::string::npos) << "missing " << expected << " in: " << message;

  std::ofstream(cached) << "x";
  EXPECT_EQ(resolve_named_or_path("ViT-B/16", false), cached);

  const std::string unknown = resolve_error("ViT-Z/99");
  EXPECT_NE(unknown.find("ViT-Z/99"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("ViT-L/14@336px"), std::string::npos) << unknown;
}

// --- Progress bar ---------------------------------------------------------------------------------------------------

TEST(ProgressBar, RendersPercentageRateAndEta) {
  const ProgressBar items("images", 100, ProgressUnit::items, true);
  EXPECT_EQ(items.render(50, 10.0),
            "images  50% [###############...............] 50/100 10.0 items/s ETA 0:05");
  EXPECT_EQ(items.render(100, 0), "images 100% [##############################] 100/100");

  const ProgressBar bytes("ViT-B/16", 4 * 1024 * 1024, ProgressUnit::bytes, true);
  EXPECT_EQ(bytes.render(1024 * 1024, 1024 * 1024),
            "ViT-B/16  25% [#######.......................] 1.0 MiB/4.0 MiB 1.0 MiB/s ETA 0:03");

  const ProgressBar unknown("broden", 0, ProgressUnit::bytes, true);
  EXPECT_EQ(unknown.render(512, 0), "broden 512 B");
}

}  // namespace
}  // namespace clipdissect
