// The HTML report: its data, its images, `clipdissect report`, and errors on broken run files.
#include <algorithm>
#include <fstream>
#include <map>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "clipdissect/error.h"
#include "clipdissect/image.h"
#include "clipdissect/report.h"
#include "report/thumbnails.h"
#include "report_run.h"

namespace clipdissect {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The data the page embeds in <script id="data" type="application/json">.
json page_data(const std::string& html) {
  const std::string open = R"(<script id="data" type="application/json">)";
  const std::size_t start = html.find(open);
  EXPECT_NE(start, std::string::npos);
  const std::size_t end = html.find("</script>", start);
  return json::parse(html.substr(start + open.size(), end - start - open.size()));
}

RgbImage gradient(int width, int height) {
  RgbImage image{width, height, std::vector<std::uint8_t>(static_cast<std::size_t>(width) * height * 3)};
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < 3; ++c)
        image.pixels[(static_cast<std::size_t>(y) * width + x) * 3 + c] = static_cast<std::uint8_t>((x * 3 + y * (c + 1)) % 256);
  return image;
}

TEST(ReportImages, JpegRoundTripsWithinQualityNoise) {
  const RgbImage image = gradient(70, 40);
  const std::vector<std::uint8_t> bytes = encode_jpeg(image, 90);
  const RgbImage decoded = decode_image_bytes(bytes, "encoded.jpg");
  ASSERT_EQ(decoded.width, 70);
  ASSERT_EQ(decoded.height, 40);
  double error = 0;
  for (std::size_t i = 0; i < image.pixels.size(); ++i) error += std::abs(image.pixels[i] - decoded.pixels[i]);
  EXPECT_LT(error / image.pixels.size(), 6.0);
  EXPECT_THROW(encode_jpeg(RgbImage{2, 2, std::vector<std::uint8_t>(5)}, 80), Error);
}

TEST(ReportImages, FitWithinScalesTheLongerSideDownOnly) {
  const RgbImage wide = fit_within(gradient(800, 200), 128);
  EXPECT_EQ(wide.width, 128);
  EXPECT_EQ(wide.height, 32);
  const RgbImage tall = fit_within(gradient(3, 500), 128);
  EXPECT_EQ(tall.width, 1);
  EXPECT_EQ(tall.height, 128);
  EXPECT_EQ(fit_within(gradient(32, 32), 128).pixels, gradient(32, 32).pixels);
}

TEST(ReportImages, CompleteJpegNeedsBothEndMarkers) {
  testing::TemporaryFolder dir;
  const std::vector<std::uint8_t> bytes = encode_jpeg(gradient(16, 16), 80);
  std::ofstream(dir.path() / "whole.jpg", std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  std::ofstream(dir.path() / "cut.jpg", std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size() / 2);
  EXPECT_TRUE(is_complete_jpeg(dir.path() / "whole.jpg"));
  EXPECT_FALSE(is_complete_jpeg(dir.path() / "cut.jpg"));
  EXPECT_FALSE(is_complete_jpeg(dir.path() / "absent.jpg"));
}

class ReportOfFixtureRun : public ::testing::Test {
 protected:
  std::string html() const { return testing::read_file(run_ / "report.html"); }
  testing::CliResult report(const fs::path& run_dir) const { return testing::run_cli({"report", run_dir.string()}, dir_.path()); }

  const fs::path& run_ = testing::fixture_run();
  testing::TemporaryFolder dir_;
};

TEST_F(ReportOfFixtureRun, PageHoldsEveryNeuronWithItsCsvLabelAndNoUrl) {
  const std::string page = html();
  EXPECT_EQ(page.find("http://"), std::string::npos);
  EXPECT_EQ(page.find("https://"), std::string::npos);
  EXPECT_EQ(page.find("<i>"), std::string::npos) << "concept text must not reach the page as markup";
  EXPECT_LT(page.size(), 300'000u);

  const json data = page_data(page);
  std::map<std::pair<std::string, std::string>, std::string> labels;
  std::size_t images = 0;
  for (const json& layer : data["layers"])
    for (const json& neuron : layer["neurons"]) {
      labels[{layer["name"], neuron[0].dump()}] = data["concepts"][neuron[1].get<std::size_t>()];
      EXPECT_EQ(neuron[4].size(), 2u * testing::kReportTopImages);  // index, activation
      images += neuron[4].size() / 2;
    }
  const std::vector<testing::CsvRow> rows = testing::read_descriptions_csv(run_ / "descriptions.csv");
  ASSERT_EQ(rows.size(), 768u + 16u);
  EXPECT_EQ(labels.size(), rows.size());
  std::size_t special = 0;
  for (const testing::CsvRow& row : rows) {
    EXPECT_EQ(labels[std::make_pair(row.layer, row.unit)], row.description) << row.layer << "/" << row.unit;
    special += row.description.find('<') != std::string::npos;
  }
  EXPECT_GT(special, 0u) << "no label exercises escaping";
  EXPECT_EQ(images, rows.size() * testing::kReportTopImages);
  EXPECT_EQ(data["run"]["similarity"], "soft_wpmi");
  EXPECT_EQ(data["run"]["used_images"], 130);
}

TEST_F(ReportOfFixtureRun, EveryTopImageHasASmallThumbnailAndAFullCopy) {
  std::map<std::string, std::string> paths;  // probe index -> path, as descriptions.json has them
  const json descriptions = json::parse(testing::read_file(run_ / "descriptions.json"));
  for (const json& layer : descriptions["layers"])
    for (const json& neuron : layer["neurons"])
      for (const json& image : neuron["top_images"]) paths[image["index"].dump()] = image["path"];
  const json data = page_data(html());
  ASSERT_EQ(data["images"].size(), paths.size());
  for (const auto& [index, name] : data["images"].items()) {
    const fs::path thumb = run_ / "report_images" / "thumbs" / (index + ".jpg");
    const fs::path full = run_ / "report_images" / "full" / (index + ".jpg");
    ASSERT_TRUE(is_complete_jpeg(thumb)) << thumb;
    ASSERT_TRUE(is_complete_jpeg(full)) << full;
    EXPECT_LE(fs::file_size(thumb), 12'000u) << thumb;
    // The page names images "folder/file"; the copies are the original scaled down to fit.
    EXPECT_TRUE(paths[index].ends_with("/" + name.get<std::string>())) << paths[index];
    const RgbImage original = decode_image_file(paths[index]);
    const RgbImage small = decode_image_file(thumb), large = decode_image_file(full);
    const int longer = std::max(original.width, original.height);
    EXPECT_EQ(std::max(large.width, large.height), std::min(longer, kFullImageSide)) << full;
    EXPECT_EQ(std::max(small.width, small.height), std::min(longer, kThumbnailSide)) << thumb;
    EXPECT_EQ(small.width >= small.height, original.width >= original.height) << thumb;
  }
}

TEST_F(ReportOfFixtureRun, ReportCommandMakesTheSameFilesAgain) {
  const std::string page = html();
  const fs::path copy = testing::copy_run(dir_.path());
  const std::string first = page_data(page)["images"].begin().key() + ".jpg";
  const fs::path thumb = fs::path("report_images") / "thumbs" / first, full = fs::path("report_images") / "full" / first;
  const std::string full_bytes = testing::read_file(run_ / full);
  fs::remove(copy / thumb);
  std::ofstream(copy / full, std::ios::binary) << full_bytes.substr(0, 100);  // a cut file is made again

  const testing::CliResult result = report(copy);
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_EQ(testing::read_file(copy / "report.html"), page);
  EXPECT_EQ(testing::read_file(copy / thumb), testing::read_file(run_ / thumb));
  EXPECT_EQ(testing::read_file(copy / full), full_bytes);
}

TEST_F(ReportOfFixtureRun, ChangedProbeListingDiscardsImagesAndRefusesToRemakeThem) {
  const fs::path copy = testing::copy_run(dir_.path());
  json run = json::parse(testing::read_file(copy / "run.json"));
  run["inputs"]["probe_listing_sha256"] = std::string(64, '0');
  std::ofstream(copy / "run.json") << run.dump();
  const testing::CliResult result = report(copy);
  EXPECT_EQ(result.status, 1);
  EXPECT_NE(result.err.find("probe images changed since the run"), std::string::npos) << result.err;
  EXPECT_TRUE(fs::is_empty(copy / "report_images" / "thumbs"));
}

TEST_F(ReportOfFixtureRun, BrokenRunFilesGiveErrorsNamingFileAndField) {
  const fs::path copy = testing::copy_run(dir_.path());
  fs::remove(copy / "run.json");
  testing::CliResult result = report(copy);
  EXPECT_EQ(result.status, 1);
  EXPECT_NE(result.err.find("run.json: missing"), std::string::npos) << result.err;

  fs::copy_file(run_ / "run.json", copy / "run.json");
  json descriptions = json::parse(testing::read_file(copy / "descriptions.json"));
  descriptions["layers"][1]["neurons"][3]["top_images"][2]["index"] = "seven";
  std::ofstream(copy / "descriptions.json") << descriptions.dump();
  result = report(copy);
  EXPECT_EQ(result.status, 1);
  EXPECT_NE(result.err.find("descriptions.json: layers[1].neurons[3].top_images[2].index: expected a non-negative"),
            std::string::npos)
      << result.err;

  std::ofstream(copy / "descriptions.json") << "{\"layers\": [";
  result = report(copy);
  EXPECT_EQ(result.status, 1);
  EXPECT_NE(result.err.find("descriptions.json: not valid JSON"), std::string::npos) << result.err;
  EXPECT_FALSE(fs::exists(copy / "report.html"));
}

}  // namespace
}  // namespace clipdissect
