// MPNet sentence embeddings and the WordPiece tokenizer against sentence-transformers' outputs on the
// fixture model (random weights, a WordPiece vocabulary trained for it), from both folder layouts.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "clipdissect/error.h"
#include "clipdissect/mpnet.h"
#include "fixtures.h"
#include "test_files.h"
#include "test_util.h"
#include "text/wordpiece_tokenizer.h"

namespace clipdissect {
namespace {

namespace fs = std::filesystem;
using testing::fixture;

struct TokenCase {
  std::string text;
  std::vector<std::int32_t> ids;
};

// mpnet_tokens.tsv: text TAB ids; a tab inside a text is written as the two characters "\t".
std::vector<TokenCase> token_cases() {
  std::ifstream in(fixture("hf/mpnet_tokens.tsv"), std::ios::binary);
  std::vector<TokenCase> cases;
  std::string line;
  while (std::getline(in, line)) {
    const std::size_t tab = line.rfind('\t');
    TokenCase c;
    for (std::size_t i = 0; i < tab; ++i) {
      const bool escaped_tab = line[i] == '\\' && i + 1 < tab && line[i + 1] == 't';
      c.text += escaped_tab ? '\t' : line[i];
      i += escaped_tab;
    }
    std::istringstream ids(line.substr(tab + 1));
    for (std::int32_t id; ids >> id;) c.ids.push_back(id);
    cases.push_back(std::move(c));
  }
  return cases;
}

// A writable copy of a fixture folder.
fs::path copy_folder(const fs::path& from, const fs::path& to) {
  fs::copy(from, to, fs::copy_options::recursive);
  for (const auto& entry : fs::recursive_directory_iterator(to))
    fs::permissions(entry.path(), fs::perms::owner_write, fs::perm_options::add);
  fs::permissions(to, fs::perms::owner_write, fs::perm_options::add);
  return to;
}

void expect_fixture_tokens(const WordPieceTokenizer& tokenizer, const std::string& what) {
  const std::vector<TokenCase> cases = token_cases();
  ASSERT_EQ(cases.size(), 606u);
  int mismatches = 0;
  for (const TokenCase& c : cases)
    if (tokenizer.tokenize(c.text, 384) != c.ids && ++mismatches <= 5) ADD_FAILURE() << what << ": '" << c.text << "'";
  EXPECT_EQ(mismatches, 0) << what;
}

TEST(WordPieceTokenizer, MatchesFixtureTokensFromEitherFolder) {
  expect_fixture_tokens(WordPieceTokenizer::from_folder(fixture("hf/mpnet")), "mpnet/tokenizer.json");
  expect_fixture_tokens(WordPieceTokenizer::from_folder(fixture("hf/mpnet_st")), "mpnet_st/tokenizer.json");
}

TEST(WordPieceTokenizer, VocabTxtAloneGivesTheSameTokens) {
  const testing::TemporaryFolder scratch;
  const fs::path folder = copy_folder(fixture("hf/mpnet"), scratch.path() / "mpnet");
  fs::remove(folder / "tokenizer.json");
  expect_fixture_tokens(WordPieceTokenizer::from_folder(folder), "vocab.txt");
}

TEST(WordPieceTokenizer, SpecialTokensInTextAndTruncation) {
  const WordPieceTokenizer tokenizer = WordPieceTokenizer::from_folder(fixture("hf/mpnet"));
  // The special tokens are matched in the raw text, before normalisation and splitting.
  const auto hen = tokenizer.tokenize("hen", 384);  // <s> hen </s>
  ASSERT_EQ(hen.size(), 3u);
  EXPECT_EQ(tokenizer.tokenize("hen</s>hen", 384), (std::vector<std::int32_t>{0, hen[1], 2, hen[1], 2}));
  EXPECT_EQ(tokenizer.tokenize("hen   <mask> hen", 384), (std::vector<std::int32_t>{0, hen[1], 4, hen[1], 2}));

  // Longer texts keep their first max_length - 2 pieces between the start and end tokens.
  std::string long_text;
  for (int i = 0; i < 500; ++i) long_text += "hen ";
  const auto ids = tokenizer.tokenize(long_text, 384);
  ASSERT_EQ(ids.size(), 384u);
  EXPECT_EQ(ids.front(), 0);
  EXPECT_EQ(ids.back(), 2);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), hen[1]), 382);
  EXPECT_EQ(tokenizer.tokenize(long_text, 10).size(), 10u);
}

TEST(WordPieceTokenizer, BadFoldersAreClearErrors) {
  const testing::TemporaryFolder scratch;
  EXPECT_THROW(WordPieceTokenizer::from_folder(scratch.path() / "missing"), Error);
  try {
    WordPieceTokenizer::from_folder(scratch.path());
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocab.txt"), std::string::npos) << e.what();
  }
  std::ofstream(scratch.path() / "tokenizer.json") << R"({"model": {"type": "BPE"}})";
  EXPECT_THROW(WordPieceTokenizer::from_folder(scratch.path()), Error);
  std::ofstream(scratch.path() / "tokenizer.json") << R"({"model": {"type": "WordPiece", "vocab": []}})";
  EXPECT_THROW(WordPieceTokenizer::from_folder(scratch.path()), Error);
}

// Sentence-transformers' embeddings of the 606 fixture texts.
void expect_fixture_embeddings(const fs::path& folder) {
  auto backend = make_cpu_backend(2);
  auto model = MpnetModel::load(*backend, folder);
  EXPECT_EQ(model->config().max_seq_length, 384u);
  EXPECT_EQ(model->config().layers, 2);
  std::vector<std::string> texts;
  for (const TokenCase& c : token_cases()) {
    texts.push_back(c.text);
    EXPECT_EQ(model->tokenize(c.text), c.ids) << c.text;
  }
  const std::vector<float> got = model->encode(texts);
  Shape shape;
  const std::vector<float> want =
      testing::fixture_tensor(load_weights(fixture("hf/mpnet_expected.safetensors")), "embeddings", &shape);
  ASSERT_EQ(shape, (Shape{606, 64}));
  ASSERT_EQ(got.size(), want.size());
  double worst = 0;
  for (std::size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(double(got[i]) - want[i]));
  EXPECT_LE(worst, 1e-5) << folder.string();  // the bound asked is 1e-4; float noise here is ~1e-7
  // Batches of mixed lengths (padding and masks) give each text what it gets alone.
  const std::vector<float> alone = model->encode({texts[2]});
  for (std::size_t c = 0; c < alone.size(); ++c) EXPECT_NEAR(alone[c], want[2 * 64 + c], 1e-4);
}

TEST(Mpnet, EmbeddingsMatchSentenceTransformersFromTransformersFolder) {
  expect_fixture_embeddings(fixture("hf/mpnet"));
}

TEST(Mpnet, EmbeddingsMatchSentenceTransformersFromSentenceTransformersFolder) {
  expect_fixture_embeddings(fixture("hf/mpnet_st"));
}

TEST(Mpnet, LongTextsUseFarRelativePositions) {
  // Fixture texts are short; a 384-token text reaches the logarithmic buckets. Its embedding is still unit
  // length and finite, and equal whether encoded alone or next to a short text.
  auto backend = make_cpu_backend(2);
  auto model = MpnetModel::load(*backend, fixture("hf/mpnet"));
  std::string long_text;
  for (int i = 0; i < 400; ++i) long_text += i % 2 ? "shark " : "tench ";
  const std::vector<float> alone = model->encode({long_text});
  const std::vector<float> paired = model->encode({"hen", long_text});
  double norm = 0;
  for (std::size_t c = 0; c < alone.size(); ++c) {
    norm += double(alone[c]) * alone[c];
    EXPECT_NEAR(alone[c], paired[64 + c], 1e-5);
  }
  EXPECT_NEAR(norm, 1.0, 1e-5);
}

TEST(Mpnet, RelativePositionBucketsAsTransformers) {
  // transformers' MPNetEncoder.relative_position_bucket (torch), key position minus query position.
  const std::pair<int, int> expected[] = {
      {-600, 15}, {-200, 15}, {-128, 15}, {-127, 15}, {-65, 14}, {-64, 14}, {-63, 13}, {-33, 12}, {-32, 12},
      {-31, 11},  {-17, 10},  {-16, 10},  {-15, 9},   {-9, 8},   {-8, 8},   {-7, 7},   {-1, 1},   {0, 0},
      {1, 17},    {7, 23},    {8, 24},    {9, 24},    {15, 25},  {16, 26},  {17, 26},  {31, 27},  {32, 28},
      {33, 28},   {63, 29},   {64, 30},   {65, 30},   {127, 31}, {128, 31}, {600, 31}};
  for (const auto& [relative, bucket] : expected)
    EXPECT_EQ(mpnet_relative_position_bucket(relative), bucket) << relative;
}

TEST(Mpnet, BadFoldersAreClearErrors) {
  auto backend = make_cpu_backend(1);
  const testing::TemporaryFolder scratch;
  try {
    MpnetModel::load(*backend, scratch.path() / "all-mpnet-base-v2");
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("all-mpnet-base-v2"), std::string::npos) << e.what();
  }
  // Weights without their config.json.
  const fs::path folder = copy_folder(fixture("hf/mpnet"), scratch.path() / "mpnet");
  fs::remove(folder / "config.json");
  try {
    MpnetModel::load(*backend, folder);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
  }
  // A sentence-transformers folder whose pooling is not the mean.
  const fs::path st = copy_folder(fixture("hf/mpnet_st"), scratch.path() / "st");
  std::ofstream(st / "1_Pooling" / "config.json") << R"({"embedding_dimension": 64, "pooling_mode": "cls"})";
  try {
    MpnetModel::load(*backend, st);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mean pooling"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace clipdissect
