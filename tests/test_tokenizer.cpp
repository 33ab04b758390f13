#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <zlib.h>

#include "clipdissect/error.h"
#include "clipdissect/paths.h"
#include "clipdissect/tokenizer.h"
#include "fixtures.h"
#include "test_files.h"
#include "text/clip_pretokenize.h"
#include "text/html_entities.h"
#include "text/text_normalize.h"

namespace clipdissect {
namespace {

using Ids = std::vector<std::int32_t>;
namespace fs = std::filesystem;
using testing::read_file;
using testing::EnvironmentOverride;
using testing::TemporaryFolder;

const ClipTokenizer& reference_tokenizer() {
  static const ClipTokenizer tokenizer =
      ClipTokenizer::from_file(testing::fixture("clip/bpe_simple_vocab_16e6.txt.gz"));
  return tokenizer;
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::string line;
  std::istringstream in(text);
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

Ids parse_ids(const std::string& text) {
  Ids ids;
  std::istringstream in(text);
  for (std::int32_t id = 0; in >> id;) ids.push_back(id);
  return ids;
}

// tricky.tsv escapes '\', TAB, LF and CR in its first field as \\, \t, \n, \r.
std::string unescape_tsv_field(const std::string& field) {
  static const std::map<char, char> escapes = {{'\\', '\\'}, {'t', '\t'}, {'n', '\n'}, {'r', '\r'}};
  std::string out;
  for (std::size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 1 < field.size() && escapes.contains(field[i + 1])) {
      out.push_back(escapes.at(field[++i]));
    } else {
      out.push_back(field[i]);
    }
  }
  return out;
}

struct TokenizedLine {
  std::string text;
  Ids ids;
};

std::vector<TokenizedLine> read_tokenizer_tsv(const std::string& name, bool escaped) {
  std::vector<TokenizedLine> rows;
  for (const std::string& line : split_lines(read_file(testing::fixture("tokenizer/" + name + ".tsv")))) {
    const std::size_t tab = line.rfind('\t');
    if (tab == std::string::npos) throw std::runtime_error("no TAB in " + name + ".tsv line: " + line);
    const std::string text = line.substr(0, tab);
    rows.push_back({escaped ? unescape_tsv_field(text) : text, parse_ids(line.substr(tab + 1))});
  }
  return rows;
}

Ids with_start_and_end(Ids body) {
  body.insert(body.begin(), kClipStartToken);
  body.push_back(kClipEndToken);
  return body;
}

// --- Reference token lists -------------------------------------------------------------------------------------

struct TsvCase {
  std::string name;
  std::size_t count;
  bool truncate;
};

class TokenizerTsv : public ::testing::TestWithParam<TsvCase> {};

TEST_P(TokenizerTsv, EveryLineMatchesClipTokenize) {
  const TsvCase& param = GetParam();
  const std::vector<TokenizedLine> rows = read_tokenizer_tsv(param.name, /*escaped=*/param.name == "tricky");
  ASSERT_EQ(rows.size(), param.count);
  std::size_t mismatches = 0;
  for (const TokenizedLine& row : rows) {
    const Ids ids = reference_tokenizer().tokenize(row.text, param.truncate);
    if (ids != row.ids && ++mismatches <= 5) ADD_FAILURE() << "ids differ for \"" << row.text << "\"";
  }
  EXPECT_EQ(mismatches, 0u);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizerTsv,
                         ::testing::Values(TsvCase{"20k", 20000, false}, TsvCase{"10k", 9894, false},
                                           TsvCase{"3k", 3000, false}, TsvCase{"broden_labels_clean", 1197, false},
                                           TsvCase{"imagenet_labels", 1000, false},
                                           TsvCase{"categories_places365", 365, false},
                                           TsvCase{"tricky", 70, true}),
                         [](const auto& case_info) { return case_info.param.name; });

TEST(ClipTokenizer, TrickyStringsFullIdsAndTooLongErrors) {
  std::size_t strings = 0;
  std::size_t too_long = 0;
  for (const std::string& line : split_lines(read_file(testing::fixture("tokenizer/tricky.jsonl")))) {
    const auto record = nlohmann::json::parse(line);
    const std::string text = record.at("text").get<std::string>();
    ++strings;
    EXPECT_EQ(with_start_and_end(reference_tokenizer().encode(text)), record.at("ids_full").get<Ids>()) << text;
    EXPECT_EQ(reference_tokenizer().tokenize(text, true), record.at("ids_truncated").get<Ids>()) << text;
    if (record.at("raises_without_truncate").get<bool>()) {
      ++too_long;
      EXPECT_THROW((void)reference_tokenizer().tokenize(text), Error) << text;
    } else {
      EXPECT_EQ(reference_tokenizer().tokenize(text), record.at("ids_full").get<Ids>()) << text;
    }
  }
  EXPECT_EQ(strings, 70u);
  EXPECT_EQ(too_long, 2u);
}

// Minimal safetensors reading for the I64 [n, 77] token tensors (the weights loader is tested on its own).
std::vector<Ids> read_token_rows(const fs::path& path, const std::string& tensor) {
  const std::string file = read_file(path);
  std::uint64_t header_length = 0;
  if (file.size() < 8) throw std::runtime_error("short safetensors file");
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | static_cast<unsigned char>(file[i]);
  const auto header = nlohmann::json::parse(file.substr(8, header_length));
  const auto& entry = header.at(tensor);
  EXPECT_EQ(entry.at("dtype"), "I64");
  const auto shape = entry.at("shape").get<std::vector<std::size_t>>();
  const auto offsets = entry.at("data_offsets").get<std::vector<std::size_t>>();
  EXPECT_EQ(shape.size(), 2u);
  EXPECT_EQ(shape.at(1), static_cast<std::size_t>(kClipContextLength));
  EXPECT_EQ(offsets.at(1) - offsets.at(0), shape.at(0) * shape.at(1) * sizeof(std::int64_t));
  const char* data = file.data() + 8 + header_length + offsets.at(0);
  std::vector<Ids> rows(shape.at(0));
  for (std::size_t row = 0; row < shape.at(0); ++row) {
    for (std::size_t column = 0; column < shape.at(1); ++column) {
      std::int64_t value = 0;
      std::memcpy(&value, data + (row * shape.at(1) + column) * sizeof(value), sizeof(value));
      rows[row].push_back(static_cast<std::int32_t>(value));
    }
  }
  return rows;
}

TEST(ClipTokenizer, MatchesTokenTensorsFedToTheTextEncoder) {
  const auto inputs = nlohmann::json::parse(read_file(testing::fixture("expected/text_inputs.json")));
  const fs::path tensors = testing::fixture("expected/clip_vit_image.safetensors");
  for (const auto& [key, truncate] : {std::pair{"words", false}, std::pair{"tricky", true}}) {
    const auto texts = inputs.at(key).get<std::vector<std::string>>();
    const std::vector<Ids> rows = read_token_rows(tensors, std::string("text_tokens_") + key);
    ASSERT_EQ(rows.size(), texts.size()) << key;
    for (std::size_t i = 0; i < texts.size(); ++i) {
      Ids padded = reference_tokenizer().tokenize(texts[i], truncate);
      padded.resize(kClipContextLength, 0);
      EXPECT_EQ(padded, rows[i]) << key << " " << texts[i];
    }
  }
}

// --- Behaviour of the reference on inputs the fixtures do not cover (values from the Python reference) -------------

TEST(ClipTokenizer, EdgeCasesOfThePythonReference) {
  const std::vector<std::pair<std::string, Ids>> cases = {
      {"a\u0345b", {320, 321}},                 // U+0345 matches no alternative of the pattern: dropped
      {"it'\u017f", {585, 6, 129, 379}},        // "'ſ" matches 's under IGNORECASE
      {"<|\u017ftartoftext|>", {27, 91, 129, 123, 2002, 6659, 18169, 91, 285}},  // matched, but not special
      {"!<|endoftext|>", {0, 27, 347, 40786, 4160, 91, 285}},  // "!<|" is one punctuation run
      {"\x1c a\x1c" "b \x1c", {320, 472, 321}},  // U+001C is stripped (isspace) but is no regex \s
      {"\u03a3\u0391\u03a3 \u039f\u0394\u039f\u03a3.",
       {139, 225, 138, 109, 139, 480, 138, 123, 138, 112, 138, 123, 139, 480, 269}},  // final sigma
      {"\u0130", {328, 16384}},                 // İ lower-cases to i + U+0307
      {"a\u00a0\u3000b", {320, 321}},
      {"&amp;lt;b&amp;gt;", {283, 321, 285}},   // two levels of escaping are undone
      {"&amp;amp;amp;", {261, 6259, 282}},      // not three
      {"\u2160\u2161 \u00bd", {158, 227, 364, 158, 227, 365, 33613}},  // numbers are single pieces
      {"x\u200by", {343, 9844, 344}},           // U+200B is not whitespace
      {"\u0085a\u0085", {320}},
      {"AB\u0300C", {3937, 136, 478, 322}},
  };
  for (const auto& [text, ids] : cases) EXPECT_EQ(reference_tokenizer().encode(text), ids) << text;
}

TEST(ClipTokenizer, TruncationAndContextLength) {
  const ClipTokenizer& tokenizer = reference_tokenizer();
  EXPECT_EQ(tokenizer.tokenize("hello world", false, 4), (Ids{kClipStartToken, 3306, 1002, kClipEndToken}));
  EXPECT_EQ(tokenizer.tokenize("hello world", true, 3), (Ids{kClipStartToken, 3306, kClipEndToken}));
  EXPECT_EQ(tokenizer.tokenize("hello world", true, 1), (Ids{kClipEndToken}));
  EXPECT_THROW((void)tokenizer.tokenize("hello", true, 0), Error);
  const std::string long_text(300, 'x');
  try {
    (void)tokenizer.tokenize(long_text + " " + long_text);
    FAIL() << "expected an Error";
  } catch (const Error& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("too long for context length 77"), std::string::npos) << message;
    EXPECT_NE(message.find("truncation"), std::string::npos) << message;
    EXPECT_NE(message.find(std::string(80, 'x') + "..."), std::string::npos) << message;
    EXPECT_EQ(message.find(std::string(81, 'x')), std::string::npos) << message;
  }
}

TEST(ClipTokenizer, RejectsInvalidUtf8) {
  EXPECT_THROW((void)reference_tokenizer().encode("ab\xff"), Error);
  EXPECT_THROW((void)reference_tokenizer().encode("\xed\xa0\x80"), Error);  // an encoded surrogate
  EXPECT_THROW((void)reference_tokenizer().encode("\xc0\xaf"), Error);      // overlong
  EXPECT_THROW((void)reference_tokenizer().encode("\xe2\x82"), Error);      // cut short
}

TEST(ClipTokenizer, RepeatedCallsGiveTheSameIds) {
  // The second call is served from the per-piece cache.
  const Ids first = reference_tokenizer().encode("antidisestablishmentarianism hotdog");
  EXPECT_EQ(reference_tokenizer().encode("antidisestablishmentarianism hotdog"), first);
  EXPECT_EQ(first, (Ids{3120, 4262, 7726, 12658, 1585, 44351, 43758}));
}

// --- Text normalisation ---------------------------------------------------------------------------------------------

std::u32string unescape(std::u32string_view text) { return text::html_unescape(text); }

TEST(HtmlUnescape, FollowsPythonsHtmlUnescape) {
  const std::vector<std::pair<std::u32string, std::u32string>> cases = {
      {U"&notit;", U"\u00acit;"},  {U"&amp", U"&"},
      {U"&ampx", U"&x"},           {U"&AMP;", U"&"},
      {U"&#x80;", U"\u20ac"},      {U"&#128;", U"\u20ac"},
      {U"&#0;", U"\ufffd"},        {U"&#13;", U"\r"},
      {U"&#1;", U""},              {U"&#x7f;", U""},
      {U"&#xD800;", U"\ufffd"},    {U"&#x110000;", U"\ufffd"},
      {U"&#99999999999999999999;", U"\ufffd"},
      {U"&#xFFFE;", U""},          {U"&#x1FFFF;", U""},
      {U"&#65", U"A"},             {U"&#x41;b", U"Ab"},
      {U"&#x;", U"&#x;"},          {U"&#;", U"&#;"},
      {U"& amp;", U"& amp;"},      {U"&", U"&"},
      {U"a&", U"a&"},              {U"&&amp;", U"&&"},
      {U"&nosuchentity;", U"&nosuchentity;"},
      {U"&ab;", U"&ab;"},          {U"&lt", U"<"},
      {U"&LT", U"<"},              {U"&ltx", U"<x"},
      {U"&ngE;", U"\u2267\u0338"}, {U"&NotEqualTilde;", U"\u2242\u0338"},
      {U"&" + std::u32string(33, U'a') + U";", U"&" + std::u32string(33, U'a') + U";"},
      {U"&CounterClockwiseContourIntegral;", U"\u2233"},
      {U"&\u00e9;", U"&\u00e9;"},  {U"&#38;amp;", U"&amp;"},
      {U"&#x81;&#x8D;&#x9f;", U"\u0081\u008d\u0178"},
      {U"&#11;&#12;", U"\u000c"},  {U"&notin;", U"\u2209"},
      {U"&noti", U"\u00aci"},      {U"&am;", U"&am;"},
  };
  for (const auto& [input, expected] : cases) {
    EXPECT_EQ(unescape(input), expected) << text::utf32_to_utf8(input);
  }
}

TEST(HtmlUnescape, FailsLikePythonOnOverlongDecimalReferences) {
  // Python's int() refuses more than 4300 decimal digits, so the reference raises ValueError.
  EXPECT_EQ(unescape(U"&#" + std::u32string(4298, U'0') + U"65;"), U"A");  // 4300 digits
  EXPECT_THROW(unescape(U"&#" + std::u32string(4300, U'0') + U"1;"), Error);
  EXPECT_EQ(unescape(U"&#x" + std::u32string(5000, U'0') + U"41;"), U"A");  // base 16 has no limit
}

TEST(TextNormalize, PythonSpaceAndRegexSpaceDiffer) {
  for (char32_t c : {U'\t', U'\n', U'\v', U'\f', U'\r', U' ', U'\u0085', U'\u00a0', U'\u1680', U'\u2000', U'\u200a',
                     U'\u2028', U'\u2029', U'\u202f', U'\u205f', U'\u3000'}) {
    EXPECT_TRUE(text::is_python_space(c)) << static_cast<std::uint32_t>(c);
    EXPECT_TRUE(text::is_regex_space(c)) << static_cast<std::uint32_t>(c);
  }
  for (char32_t c = 0x1C; c <= 0x1F; ++c) {
    EXPECT_TRUE(text::is_python_space(c));
    EXPECT_FALSE(text::is_regex_space(c));
  }
  for (char32_t c : {U'a', U'\u200b', U'\u180e', U'\ufeff', U'\0'}) {
    EXPECT_FALSE(text::is_python_space(c)) << static_cast<std::uint32_t>(c);
    EXPECT_FALSE(text::is_regex_space(c)) << static_cast<std::uint32_t>(c);
  }
}

TEST(TextNormalize, LowerCasesLikePython) {
  EXPECT_EQ(text::python_lower(U"\u0130STANBUL"), U"i\u0307stanbul");
  EXPECT_EQ(text::python_lower(U"\u039f\u0394\u039f\u03a3 \u03a3"), U"\u03bf\u03b4\u03bf\u03c2 \u03c3");
  EXPECT_EQ(text::python_lower(U"\u1e9e\u212a\u2160\U00010400"), U"\u00df\u006b\u2170\U00010428");
}

TEST(TextNormalize, CleansLikeBasicCleanThenWhitespaceClean) {
  EXPECT_EQ(text::clip_clean_text("  Fish &amp;amp;\t\n Chips\u3000 "), U"fish & chips");
  EXPECT_EQ(text::clip_clean_text("&#32;a&nbsp;"), U"a");
  EXPECT_EQ(text::clip_clean_text(""), U"");
}

TEST(PreTokenize, SplitsLikeThePattern) {
  const std::u32string text = U"it's 42 rock'n'roll <|endoftext|>!!<|startoftext|>caf\u00e9...";
  const std::vector<std::u32string_view> pieces = text::clip_pre_tokenize(text);
  const std::vector<std::u32string_view> expected = {
      U"it", U"'s", U"4", U"2", U"rock", U"'", U"n", U"'", U"roll", U"<|endoftext|>", U"!!<|", U"startoftext",
      U"|>", U"caf\u00e9", U"..."};
  EXPECT_EQ(pieces, expected);
}

// --- Loading the vocabulary -----------------------------------------------------------------------------------------

void write_gzip(const fs::path& path, const std::string& contents) {
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr);
  ASSERT_EQ(gzwrite(file, contents.data(), static_cast<unsigned>(contents.size())), static_cast<int>(contents.size()));
  gzclose(file);
}

// A vocabulary with `merges` merge lines "a b" after the header (a valid count for kMergeCount lines).
std::string merges_file(std::size_t merges, const std::string& line = "a b") {
  std::string contents = "#version: 0.2\n";
  for (std::size_t i = 0; i < merges; ++i) contents += line + "\n";
  return contents;
}

void expect_load_error(const fs::path& path, const std::string& expected_part) {
  try {
    (void)ClipTokenizer::from_file(path);
    ADD_FAILURE() << "expected an Error for " << path;
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(expected_part), std::string::npos) << error.what();
    EXPECT_NE(std::string(error.what()).find(path.string()), std::string::npos) << error.what();
  }
}

constexpr std::size_t kMerges = 49152 - 256 - 2;

TEST(ClipTokenizerLoading, RejectsBrokenVocabularies) {
  TemporaryFolder folder;
  expect_load_error(folder.path() / "missing.txt.gz", "cannot open");

  const std::string real = read_file(testing::fixture("clip/bpe_simple_vocab_16e6.txt.gz"));
  const fs::path truncated = folder.path() / "truncated.txt.gz";
  std::ofstream(truncated, std::ios::binary) << real.substr(0, real.size() / 2);
  expect_load_error(truncated, "cannot read");

  const fs::path short_file = folder.path() / "short.txt.gz";
  write_gzip(short_file, merges_file(1000));
  expect_load_error(short_file, "at least 48894 merge lines");

  const fs::path three_fields = folder.path() / "three.txt.gz";
  write_gzip(three_fields, merges_file(kMerges, "a b c"));
  expect_load_error(three_fields, "line 2 has 3 fields");

  const fs::path invalid_utf8 = folder.path() / "invalid.txt.gz";
  write_gzip(invalid_utf8, merges_file(kMerges, "a \xff"));
  expect_load_error(invalid_utf8, "UTF-8");
}

TEST(ClipTokenizerLoading, SmallVocabularyBuildsVocabularyLikeTheReference) {
  // Every merge "a b": the vocabulary is 512 byte symbols, then "ab" 48894 times (a repeated string keeps its
  // last id), then the special pieces. In "abab" only the first pair merges: the last b carries </w>.
  TemporaryFolder folder;
  const fs::path path = folder.path() / "ab.txt.gz";
  write_gzip(path, merges_file(kMerges));
  const ClipTokenizer tokenizer = ClipTokenizer::from_file(path);
  const std::int32_t last_ab = 512 + static_cast<std::int32_t>(kMerges) - 1;
  EXPECT_EQ(tokenizer.encode("abab"), (Ids{last_ab, 'a' - '!', 'b' - '!' + 256}));
  EXPECT_EQ(tokenizer.tokenize("x"), (Ids{kClipStartToken, 'x' - '!' + 256, kClipEndToken}));
}

// --- Locating the vocabulary ----------------------------------------------------------------------------------------

TEST(Paths, DefaultCacheDirOrder) {
  {
    EnvironmentOverride env{{"CLIPDISSECT_CACHE", "/c/d"}, {"XDG_CACHE_HOME", "/x"}, {"HOME", "/h"}};
    EXPECT_EQ(default_cache_dir(), fs::path("/c/d"));
  }
  {
    EnvironmentOverride env{{"CLIPDISSECT_CACHE", ""}, {"XDG_CACHE_HOME", "/x"}, {"HOME", "/h"}};
    EXPECT_EQ(default_cache_dir(), fs::path("/x/clipdissect"));
  }
  {
    EnvironmentOverride env{{"CLIPDISSECT_CACHE", std::nullopt}, {"XDG_CACHE_HOME", "relative"}, {"HOME", "/h"}};
    EXPECT_EQ(default_cache_dir(), fs::path("/h/.cache/clipdissect"));
  }
  {
    EnvironmentOverride env{{"CLIPDISSECT_CACHE", std::nullopt}, {"XDG_CACHE_HOME", std::nullopt}, {"HOME", std::nullopt}};
    EXPECT_THROW((void)default_cache_dir(), Error);
  }
}

std::string resolve_error(const std::optional<fs::path>& flag) {
  try {
    (void)resolve_bpe_path(flag);
  } catch (const Error& error) {
    return error.what();
  }
  ADD_FAILURE() << "expected an Error";
  return "";
}

TEST(Paths, ResolveBpePath) {
  TemporaryFolder folder;
  const fs::path flag_file = folder.path() / "flag.gz";
  const fs::path env_file = folder.path() / "env.gz";
  const fs::path cache = folder.path() / "cache";
  fs::create_directories(cache);
  std::ofstream(flag_file) << "x";
  std::ofstream(env_file) << "x";

  EnvironmentOverride env{{"CLIPDISSECT_BPE", env_file.string()}, {"CLIPDISSECT_CACHE", cache.string()}};
  EXPECT_EQ(resolve_bpe_path(flag_file), flag_file);
  EXPECT_NE(resolve_error(folder.path() / "nope.gz").find((folder.path() / "nope.gz").string()), std::string::npos);
  EXPECT_EQ(resolve_bpe_path(std::nullopt), env_file);

  ::setenv("CLIPDISSECT_BPE", (folder.path() / "gone.gz").string().c_str(), 1);
  EXPECT_NE(resolve_error(std::nullopt).find("gone.gz"), std::string::npos);

  ::unsetenv("CLIPDISSECT_BPE");
  const fs::path cached = cache / "bpe_simple_vocab_16e6.txt.gz";
  const std::string message = resolve_error(std::nullopt);
  EXPECT_NE(message.find(cached.string()), std::string::npos) << message;
  EXPECT_NE(message.find("clip/bpe_simple_vocab_16e6.txt.gz"), std::string::npos) << message;
  EXPECT_NE(message.find("--bpe"), std::string::npos) << message;
  EXPECT_NE(message.find("CLIPDISSECT_BPE"), std::string::npos) << message;

  std::ofstream(cached) << "x";
  EXPECT_EQ(resolve_bpe_path(std::nullopt), cached);
}

}  // namespace
}  // namespace clipdissect
