// config.json beside a transformers CLIP checkpoint: malformed content is an Error naming the file.
#include <fstream>

#include <gtest/gtest.h>

#include "fixtures.h"
#include "models/clip_hf.h"
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

}  // namespace
}  // namespace clipdissect
