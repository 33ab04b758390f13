// The command line end to end on the fixtures: the same numbers as the library and the reference.
#include <cstdio>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "clipdissect/weights.h"
#include "cli_runner.h"
#include "fixtures.h"
#include "test_files.h"
#include "test_util.h"

namespace clipdissect {
namespace {

namespace fs = std::filesystem;
using testing::fixture;

using testing::CliResult;

class CliTest : public ::testing::Test {
 protected:

  CliResult run(const std::vector<std::string>& args, const std::string& input = "") {
    return testing::run_cli(args, dir_, input);
  }

  // The first `count` probe images in ImageFolder order, as a list file.
  fs::path image_list(int count) {
    std::ifstream index(fixture("images/index.tsv"));
    const fs::path list = dir_ / "images.txt";
    std::ofstream out(list);
    std::string line;
    for (int i = 0; i < count && std::getline(index, line); ++i)
      out << (testing::fixtures_dir() / "images" / line.substr(0, line.find('\t'))).string() << "\n";
    return list;
  }

  testing::TemporaryFolder scratch_;
  const fs::path& dir_ = scratch_.path();
};

TEST_F(CliTest, EmbedImagesAndTextsMatchReferenceForBothClipTowers) {
  // The 200 words of the text fixture, one per line.
  std::ifstream words(fixture("concepts/20k.txt"));
  const fs::path texts = dir_ / "words.txt";
  std::ofstream list(texts);
  std::string word;
  for (int i = 0; i < 200 && std::getline(words, word); ++i) list << word << "\n";
  list.close();

  for (const std::string model : {"clip_vit", "clip_rn"}) {
    const WeightMap expected = load_weights(fixture("expected/" + model + "_image.safetensors"));
    const fs::path images_out = dir_ / (model + "-images.safetensors");
    CliResult r = run({"embed", "--clip", fixture("models/" + model + ".pt"), "--images", image_list(24), "--out",
                       images_out.string(), "--batch-size", "7", "--threads", "2"});
    ASSERT_EQ(r.status, 0) << r.err;
    const WeightMap images = load_weights(images_out);
    EXPECT_EQ(images.at("embeddings").shape, (Shape{24, 64}));
    EXPECT_LE(testing::max_relative_error(to_f32(images.at("embeddings")),
                                          testing::fixture_tensor(expected, "image_features")),
              1e-4)
        << model;

    const fs::path texts_out = dir_ / (model + "-texts.safetensors");
    r = run({"embed", "--clip", fixture("models/" + model + ".pt"), "--texts", texts.string(), "--out",
             texts_out.string(), "--bpe", fixture("clip/bpe_simple_vocab_16e6.txt.gz")});
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_LE(testing::max_relative_error(to_f32(load_weights(texts_out).at("embeddings")),
                                          testing::fixture_tensor(expected, "text_features_words")),
              1e-4)
        << model;
  }
}

TEST_F(CliTest, ActivationsMatchReferenceHooksForEveryTarget) {
  struct Target {
    std::string checkpoint, reference, layers;
  };
  const std::string resnet_layers = "conv1,layer1,layer2,layer3,layer4,fc,layer2[0].conv1,layer4.0";
  for (const Target& t : {Target{"resnet_basic.pth", "resnet_basic", resnet_layers},
                          Target{"resnet_places_legacy.pth.tar", "resnet_basic", resnet_layers},
                          Target{"resnet_bottleneck.pth", "resnet_bottleneck", resnet_layers},
                          Target{"vit_target.pth", "vit_target",
                                 "conv_proj,encoder.layers.encoder_layer_0,encoder.layers.encoder_layer_1,encoder,heads"}}) {
    const WeightMap expected = load_weights(fixture("expected/hooks_" + t.reference + ".safetensors"));
    for (const std::string pool : {"avg", "max"}) {
      const fs::path out = dir_ / (pool + ".safetensors");
      const CliResult r = run({"activations", "--target", fixture("models/" + t.checkpoint), "--layers", t.layers,
                               "--images", image_list(24), "--pool", pool, "--out", out.string()});
      ASSERT_EQ(r.status, 0) << r.err;
      const WeightMap got = load_weights(out);
      EXPECT_EQ(got.size(), 1 + static_cast<std::size_t>(std::count(t.layers.begin(), t.layers.end(), ',')));
      for (const HostTensor& tensor : got.tensors())
        EXPECT_LE(testing::max_relative_error(to_f32(tensor), testing::fixture_tensor(expected, pool + "/" + tensor.name)),
                  1e-4)
            << t.checkpoint << " " << pool << " " << tensor.name;
    }
  }
}

TEST_F(CliTest, ActivationsRejectUnknownLayerWithSuggestions) {
  const CliResult r = run({"activations", "--target", fixture("models/resnet_basic.pth"), "--layers", "layer9",
                           "--images", image_list(2), "--out", (dir_ / "x.safetensors").string()});
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("no layer named 'layer9'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("layer4"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "x.safetensors"));
}

TEST_F(CliTest, TokenizeLinesFromStdin) {
  const CliResult r = run({"tokenize", "--bpe", fixture("clip/bpe_simple_vocab_16e6.txt.gz")}, "a dog\nHello, World!\n");
  ASSERT_EQ(r.status, 0) << r.err;
  std::istringstream lines(r.out);
  std::string first, second;
  std::getline(lines, first);
  std::getline(lines, second);
  EXPECT_EQ(first.substr(0, 6), "49406 ");
  EXPECT_EQ(first.substr(first.size() - 6), " 49407");
  EXPECT_EQ(std::count(first.begin(), first.end(), ' '), 3);  // start, a, dog, end
  EXPECT_EQ(second.substr(0, 6), "49406 ");

  const CliResult missing = run({"tokenize", "--bpe", (dir_ / "nope.txt.gz").string()}, "x\n");
  EXPECT_EQ(missing.status, 1);
  EXPECT_NE(missing.err.find("nope.txt.gz"), std::string::npos) << missing.err;
}

TEST_F(CliTest, InspectShowsFormatTensorsAndArchitecture) {
  struct Case {
    std::string file, format, architecture;
  };
  for (const Case& c : {Case{"models/clip_vit.jit.pt", "torchscript", "CLIP VisionTransformer"},
                        Case{"models/resnet_places_legacy.pth.tar", "torch-legacy", "torchvision ResNet (BasicBlock"},
                        Case{"models/vit_target.pth", "torch-zip", "torchvision VisionTransformer"},
                        Case{"models/clip_rn.pt", "torch-zip", "CLIP ModifiedResNet"},
                        Case{"hf/clip_hf", "safetensors", "CLIP VisionTransformer"}}) {
    const CliResult r = run({"inspect", fixture(c.file)});
    ASSERT_EQ(r.status, 0) << c.file << ": " << r.err;
    EXPECT_NE(r.out.find("format: " + c.format), std::string::npos) << c.file << "\n" << r.out.substr(0, 300);
    EXPECT_NE(r.out.find("architecture: " + c.architecture), std::string::npos) << c.file;
  }
  const CliResult r = run({"inspect", fixture("models/resnet_bottleneck.pth")});
  EXPECT_NE(r.out.find("layer4.0.conv3.weight  F32  [768, 48, 1, 1]"), std::string::npos);
  EXPECT_NE(r.out.find(" layer4.0.downsample.0 "), std::string::npos);
}

}  // namespace
}  // namespace clipdissect
