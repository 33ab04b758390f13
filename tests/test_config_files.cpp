// Settings files from model folders (config.json beside a transformers CLIP checkpoint, tokenizer.json):
// malformed or hostile content is an Error naming the file.
#include <fstream>

#include <gtest/gtest.h>

#include "fixtures.h"
#include "io/json_file.h"
#include "models/clip_hf.h"
#include "text/wordpiece_tokenizer.h"
#include "weights_test_util.h"

namespace clipdissect {
namespace {

using namespace clipdissect::testing;

// Loads the fixture transformers CLIP weights with `config` as their config.json.
void load_with_config(const std::string& config) {
  TempDir dir;
  std::filesystem::create_symlink(fixture("hf/clip_hf/model.safetensors"), dir.path() / "model.safetensors");
  std::ofstream(dir.path() / "config.json") << config;
  std::optional<HfClipConfig> hf;
  load_clip_weights(dir.path(), hf);
}

TEST(HfClipConfig, WrongTypesAreErrorsNamingTheFile) {
  expect_error([] { load_with_config(R"({"text_config": 5})"); }, {"config.json: unexpected content", "number"});
  expect_error([] { load_with_config(R"({"vision_config": {"num_attention_heads": "12"}})"); },
               {"config.json: unexpected content", "string"});
}

TEST(HfClipConfig, HeadCountsMustBePositive) {
  expect_error([] { load_with_config(R"({"vision_config": {"num_attention_heads": 0}})"); },
               {"config.json: num_attention_heads must be positive (text 8, vision 0)"});
}

TEST(HfClipConfig, MissingConfigIsNamed) {
  TempDir dir;
  std::filesystem::create_symlink(fixture("hf/clip_hf/model.safetensors"), dir.path() / "model.safetensors");
  std::optional<HfClipConfig> hf;
  expect_error([&] { load_clip_weights(dir.path(), hf); }, {"config.json: missing"});
}

// The fixture MPNet tokenizer.json with model.max_input_chars_per_word set to `limit`, tokenizing one long word.
std::vector<std::int32_t> tokenize_with_word_limit(std::size_t limit, std::size_t word_length) {
  TempDir dir;
  nlohmann::json tokenizer = read_json_object(fixture("hf/mpnet/tokenizer.json"));
  tokenizer["model"]["max_input_chars_per_word"] = limit;
  std::ofstream(dir.path() / "tokenizer.json") << tokenizer.dump();
  return WordPieceTokenizer::from_folder(dir.path()).tokenize(std::string(word_length, 'q'), 8);
}

TEST(WordPieceTokenizerJson, WordLengthLimitIsBounded) {
  // Within the bound the setting applies: a word longer than it is one unknown token ([UNK] is 3 in MPNet).
  EXPECT_EQ(tokenize_with_word_limit(256, 257).at(1), 3);
  EXPECT_NE(tokenize_with_word_limit(256, 200).at(1), 3);
  expect_error([] { tokenize_with_word_limit(1'000'000, 1); },
               {"tokenizer.json: model.max_input_chars_per_word is 1000000, above the 256"});
}

}  // namespace
}  // namespace clipdissect
