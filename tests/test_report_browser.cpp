// The report in a real browser: Debian's chromium, headless, renders the page of a fixture run; the tests
// read the DOM it dumps after the scripts ran and a screenshot. Without chromium they fail: CI installs it
// (scripts/setup.sh).
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "clipdissect/image.h"
#include "clipdissect/report.h"
#include "report_run.h"

namespace clipdissect {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// $CLIPDISSECT_CHROMIUM, else chromium on $PATH.
std::optional<fs::path> find_chromium() {
  if (const char* env = std::getenv("CLIPDISSECT_CHROMIUM"); env && *env) return fs::path(env);
  const char* path = std::getenv("PATH");
  std::stringstream folders(path ? path : "");
  for (std::string folder; std::getline(folders, folder, ':');)
    if (!folder.empty() && ::access((fs::path(folder) / "chromium").c_str(), X_OK) == 0) return fs::path(folder) / "chromium";
  return std::nullopt;
}

// file:// URL of `path` (absolute) with `suffix` (query, fragment) appended.
std::string file_url(const fs::path& path, const std::string& suffix = "") {
  std::string url = "file://";
  for (const unsigned char c : fs::absolute(path).string())
    url += std::isalnum(c) || std::string_view("/-_.~").find(c) != std::string_view::npos ? std::string(1, c)
                                                                                         : fmt::format("%{:02X}", c);
  return url + suffix;
}

std::string percent_encode(const std::string& text) {
  std::string out;
  for (const unsigned char c : text) out += std::isalnum(c) ? std::string(1, c) : fmt::format("%{:02X}", c);
  return out;
}

// Chromium's text serialisation escapes these in text nodes and attribute values.
std::string unescape_html(std::string text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    bool replaced = false;
    for (const auto& [entity, c] : {std::pair<std::string_view, std::string_view>{"&amp;", "&"}, {"&lt;", "<"},
                                    {"&gt;", ">"}, {"&quot;", "\""}, {"&nbsp;", "\u00a0"}})
      if (std::string_view(text).substr(i).starts_with(entity)) {
        out += c;
        i += entity.size() - 1;
        replaced = true;
        break;
      }
    if (!replaced) out += text[i];
  }
  return out;
}

struct Card {
  std::string id, label;
  bool hidden = false;
};

// The cards of a dumped DOM, in document order.
std::vector<Card> parse_cards(const std::string& dom) {
  std::vector<Card> cards;
  for (std::size_t at = dom.find("<article "); at != std::string::npos; at = dom.find("<article ", at + 1)) {
    std::size_t end = at;
    for (bool quoted = false; end < dom.size() && (quoted || dom[end] != '>'); ++end)
      if (dom[end] == '"') quoted = !quoted;
    const std::string tag = dom.substr(at, end - at);
    Card card;
    const std::size_t id = tag.find(" id=\"") + 5;
    card.id = unescape_html(tag.substr(id, tag.find('"', id) - id));
    card.hidden = tag.find(" hidden=\"\"") != std::string::npos;  // quotes inside values are escaped
    const std::size_t label = dom.find("<h3 class=\"label\">", end) + 18;
    card.label = unescape_html(dom.substr(label, dom.find("</h3>", label) - label));
    cards.push_back(card);
  }
  return cards;
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

std::string lowercase(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

class ReportInBrowser : public ::testing::Test {
 protected:
  void SetUp() override {
    chromium_ = find_chromium();
    ASSERT_TRUE(chromium_) << "chromium not found on PATH (nor $CLIPDISSECT_CHROMIUM): the report's browser "
                              "tests need Debian's chromium package (`apt-get install chromium`, as scripts/setup.sh does)";
  }

  // Runs headless chromium on `url` with `args`; its stdout.
  std::string chromium(const std::string& url, const std::vector<std::string>& args) const {
    std::vector<std::string> words = {
        chromium_->string(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
        "--virtual-time-budget=5000", "--user-data-dir=" + (dir_.path() / "profile").string()};
    words.insert(words.end(), args.begin(), args.end());
    words.push_back(url);
    const fs::path out = dir_.path() / "chromium.out", err = dir_.path() / "chromium.err";
    std::string command = "timeout 120";
    for (const std::string& word : words) {
      command += ' ';
      command += testing::shell_quote(word);
    }
    command += " >" + testing::shell_quote(out.string());
    command += " 2>" + testing::shell_quote(err.string());
    const int status = std::system(command.c_str());
    EXPECT_EQ(status, 0) << command << "\n" << testing::read_file(err);
    return testing::read_file(out);
  }
  // The DOM after the page's scripts ran, without the scripts' own text.
  std::string dump_dom(const std::string& url) const {
    std::string dom = chromium(url, {"--dump-dom"});
    for (std::size_t at = dom.find("<script"); at != std::string::npos; at = dom.find("<script", at + 1))
      dom.erase(at, dom.find("</script>", at) - at);
    return dom;
  }

  std::optional<fs::path> chromium_;
  testing::TemporaryFolder dir_;
};

TEST_F(ReportInBrowser, CardsLabelsImagesDeepLinkSearchAndScreenshot) {
  const fs::path& run = testing::fixture_run();
  const std::vector<testing::CsvRow> rows = testing::read_descriptions_csv(run / "descriptions.csv");
  ASSERT_EQ(rows.size(), 768u + 16u);

  // Filtered to fc, but the link to a layer4 card shows everything again.
  const std::string dom = dump_dom(file_url(run / "report.html", "?layer=fc#layer4/3"));
  std::map<std::string, Card> cards;
  for (const Card& card : parse_cards(dom)) cards[card.id] = card;
  ASSERT_EQ(cards.size(), rows.size()) << dom.substr(0, 2000);
  for (const testing::CsvRow& row : rows) {
    const Card& card = cards[row.layer + "/" + row.unit];
    EXPECT_EQ(card.label, row.description) << row.layer << "/" << row.unit;
    EXPECT_FALSE(card.hidden) << card.id;
  }
  EXPECT_EQ(count(dom, "<img "), rows.size() * testing::kReportTopImages);
  EXPECT_EQ(count(dom, " hidden=\"\""), 0u);
  EXPECT_EQ(dom.find("http://"), std::string::npos);

  // Search by the label of fc's unit 0: exactly the cards whose label contains it stay visible.
  const std::string query = rows[768].description;
  std::size_t matches = 0;
  for (const Card& card : parse_cards(dump_dom(file_url(run / "report.html", "?q=" + percent_encode(query))))) {
    const bool match = lowercase(card.label).find(lowercase(query)) != std::string::npos;
    EXPECT_EQ(card.hidden, !match) << card.id << " '" << card.label << "' for '" << query << "'";
    matches += match;
  }
  EXPECT_GE(matches, 1u);
  EXPECT_LT(matches, rows.size());

  const fs::path png = dir_.path() / "screenshot.png";
  chromium(file_url(run / "report.html"), {"--screenshot=" + png.string(), "--window-size=1280,900"});
  const RgbImage shot = decode_image_file(png);
  EXPECT_EQ(shot.width, 1280);
  double sum = 0, squares = 0;
  for (const std::uint8_t v : shot.pixels) {
    sum += v;
    squares += double(v) * v;
  }
  const double mean = sum / shot.pixels.size();
  EXPECT_GT(squares / shot.pixels.size() - mean * mean, 100.0) << "the screenshot is (nearly) blank";
}

// 4,000 neurons with 10 images each: the page stays small and the browser renders every card.
TEST_F(ReportInBrowser, FourThousandNeuronsStaySmallAndRenderEveryCard) {
  const fs::path run = testing::copy_run(dir_.path());
  json descriptions = json::parse(testing::read_file(run / "descriptions.json"));
  const json concepts = descriptions["layers"][0]["neurons"][0]["top_concepts"];
  std::vector<json> images;  // the run's top images, whose thumbnails exist
  for (const json& layer : descriptions["layers"])
    for (const json& neuron : layer["neurons"])
      for (const json& image : neuron["top_images"]) images.push_back(image);
  json layers = json::array();
  for (int l = 0; l < 4; ++l) {
    json neurons = json::array();
    for (int unit = 0; unit < 1000; ++unit) {
      json top = json::array();
      for (int i = 0; i < 10; ++i) top.push_back(images[(unit * 7 + i * 13 + l) % images.size()]);
      json concept_list = concepts;
      std::rotate(concept_list.begin(), concept_list.begin() + unit % concept_list.size(), concept_list.end());
      neurons.push_back({{"unit", unit}, {"description", concept_list[0]["concept"]}, {"similarity", unit * 0.001},
                         {"top_concepts", concept_list}, {"top_images", top}});
    }
    layers.push_back({{"layer", fmt::format("block{}", l)}, {"neurons", neurons}});
  }
  descriptions["layers"] = layers;
  std::ofstream(run / "descriptions.json") << descriptions.dump(1);
  write_report(run);
  const std::uintmax_t page_size = fs::file_size(run / "report.html");
  EXPECT_LT(page_size, 4000u * 250u) << "bytes per neuron: " << page_size / 4000.0;

  const auto start = std::chrono::steady_clock::now();
  const std::string dom = dump_dom(file_url(run / "report.html"));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(count(dom, "<article "), 4000u);
  EXPECT_EQ(count(dom, "<img "), 40000u);
  std::cout << "report of 4,000 neurons: " << page_size / 1024 << " KiB, loaded and dumped by chromium in "
            << seconds << " s\n";
}

}  // namespace
}  // namespace clipdissect
