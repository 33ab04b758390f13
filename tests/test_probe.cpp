// Probe-set layouts: ImageFolder order, flat folders, list files, Broden, CIFAR-100, joined sets.
#include <fstream>

#include <gtest/gtest.h>

#include "clipdissect/error.h"
#include "clipdissect/probe.h"
#include "fixtures.h"
#include "test_files.h"

namespace clipdissect {
namespace {

namespace fs = std::filesystem;
using testing::fixture;

class ProbeTest : public ::testing::Test {
 protected:

  // A copy of a fixture image at `relative` inside the temp dir.
  fs::path image_at(const std::string& relative, const std::string& source = "Zebra_stripes/02_jpg_224x224.jpg") {
    const fs::path path = dir_ / relative;
    fs::create_directories(path.parent_path());
    fs::copy_file(fixture("images/" + source), path);
    return path;
  }

  testing::TemporaryFolder scratch_;
  const fs::path& dir_ = scratch_.path();
};

TEST_F(ProbeTest, ImageFolderOrderMatchesTorchvision) {
  const ProbeSet probe = ProbeSet::open(fixture("images"));
  std::ifstream index(fixture("images/index.tsv"));
  std::string line;
  std::size_t i = 0;
  while (std::getline(index, line)) {
    ASSERT_LT(i, probe.size());
    EXPECT_EQ(probe.name(i), (testing::fixtures_dir() / "images" / line.substr(0, line.find('\t'))).string()) << i;
    ++i;
  }
  EXPECT_EQ(i, probe.size());
  EXPECT_EQ(probe.size(), 130u);
}

TEST_F(ProbeTest, OsWalkOrderPutsSiblingFolderBeforeDeeperPath) {
  // sorted(os.walk()) orders folders by full path: "c/a b" < "c/a/x" because ' ' < '/'.
  image_at("c/z.jpg");
  image_at("c/a/x/1.jpg");
  image_at("c/a b/2.jpg");
  image_at("c/a/3.jpg");
  const ProbeSet probe = ProbeSet::open(dir_);
  ASSERT_EQ(probe.size(), 4u);
  EXPECT_EQ(fs::path(probe.name(0)).filename(), "z.jpg");
  EXPECT_EQ(fs::path(probe.name(1)).filename(), "3.jpg");
  EXPECT_EQ(fs::path(probe.name(2)).filename(), "2.jpg");
  EXPECT_EQ(fs::path(probe.name(3)).filename(), "1.jpg");
}

TEST_F(ProbeTest, FlatFolderListFileAndJoin) {
  image_at("flat/b.png");
  image_at("flat/a.JPG");
  std::ofstream(dir_ / "flat" / "readme.txt") << "not an image";
  const ProbeSet flat = ProbeSet::open(dir_ / "flat");
  ASSERT_EQ(flat.size(), 2u);
  EXPECT_EQ(fs::path(flat.name(0)).filename(), "a.JPG");

  std::ofstream(dir_ / "list.txt") << "flat/b.png\r\n\n" << (dir_ / "flat" / "a.JPG").string() << "\n";
  const ProbeSet list = ProbeSet::open(dir_ / "list.txt");
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list.name(0), (dir_ / "flat" / "b.png").string());
  EXPECT_EQ(list.load(1).width, 224);

  const ProbeSet joined = ProbeSet::join({flat, list});
  ASSERT_EQ(joined.size(), 4u);
  EXPECT_EQ(joined.name(2), list.name(0));
  EXPECT_NE(joined.fingerprint(), flat.fingerprint());
  EXPECT_THROW(joined.name(4), Error);
}

TEST_F(ProbeTest, BrodenUsesTheImagesOfItsIndex) {
  image_at("broden1_224/images/ade20k/ADE_1.jpg");
  image_at("broden1_224/images/ade20k/ADE_1_object.png");  // a segmentation mask: not a probe image
  image_at("broden1_224/images/dtd/x.jpg");
  std::ofstream(dir_ / "broden1_224" / "index.csv")
      << "image,split,ih,iw,sh,sw,color,object,part,material,scene,texture\n"
      << "dtd/x.jpg,train,224,224,112,112,,,,,,\n"
      << "ade20k/ADE_1.jpg,train,224,224,112,112,,ade20k/ADE_1_object.png,,,,\n";
  const ProbeSet probe = ProbeSet::open(dir_ / "broden1_224");
  ASSERT_EQ(probe.size(), 2u);
  EXPECT_EQ(probe.name(0), (dir_ / "broden1_224" / "images" / "dtd" / "x.jpg").string());
  EXPECT_EQ(probe.name(1), (dir_ / "broden1_224" / "images" / "ade20k" / "ADE_1.jpg").string());
}

TEST_F(ProbeTest, CifarBinaryRecordsBecomeRgbImages) {
  const fs::path folder = dir_ / "cifar-100-binary";
  fs::create_directories(folder);
  std::string records;
  for (int n = 0; n < 3; ++n) {
    records += static_cast<char>(n);       // coarse label
    records += static_cast<char>(n + 10);  // fine label
    for (int c = 0; c < 3; ++c)
      for (int p = 0; p < 1024; ++p) records += static_cast<char>((n * 50 + c * 20 + p) % 256);
  }
  std::ofstream(folder / "test.bin", std::ios::binary) << records;
  const ProbeSet probe = ProbeSet::open(folder.string() + ":test");
  ASSERT_EQ(probe.size(), 3u);
  const RgbImage image = probe.load(2);
  EXPECT_EQ(image.width, 32);
  EXPECT_EQ(image.height, 32);
  // pixel 5: R from plane 0, G from plane 1, B from plane 2
  EXPECT_EQ(image.pixels[5 * 3 + 0], (2 * 50 + 0 + 5) % 256);
  EXPECT_EQ(image.pixels[5 * 3 + 1], (2 * 50 + 20 + 5) % 256);
  EXPECT_EQ(image.pixels[5 * 3 + 2], (2 * 50 + 40 + 5) % 256);
  EXPECT_NE(probe.name(2).find("test.bin#2"), std::string::npos);

  std::ofstream(folder / "train.bin", std::ios::binary) << records.substr(0, 100);
  EXPECT_THROW(ProbeSet::open(folder / "train.bin"), Error);
  EXPECT_THROW(ProbeSet::open(folder.string() + ":train"), Error);
}

// The python release's split files as Python 2's cPickle wrote them (protocol 2): a dict whose 'data' is
// numpy.core.multiarray._reconstruct(ndarray, (0,), 'b') with BUILD state (1, (N, 3072), dtype('u1'),
// False, raw bytes).
std::string cifar_python_pickle(const std::string& pixels, int images, const std::string& global = "numpy\ndtype\n") {
  const auto u16 = [](int v) { return std::string{static_cast<char>(v & 255), static_cast<char>(v >> 8)}; };
  const auto u32 = [](std::size_t v) {
    std::string out;
    for (int i = 0; i < 4; ++i) out += static_cast<char>((v >> (8 * i)) & 255);
    return out;
  };
  // Adjacent literals keep hex escapes from swallowing the letters after them.
  using namespace std::string_literals;  // the pickle has NUL bytes
  std::string p = "\x80\x02" "}q\x00" "(U\x04" "data"s;
  p += "cnumpy.core.multiarray\n_reconstruct\nq\x01" "cnumpy\nndarray\nq\x02" "K\x00" "\x85" "U\x01" "b\x87" "Rq\x03"s;
  p += "(K\x01" "K"s + std::string(1, static_cast<char>(images)) + "M" + u16(3072) + "\x86";
  p += "c" + global + "U\x02" "u1K\x00" "K\x01" "\x87" "R(K\x03" "U\x01" "|NNNJ\xff\xff\xff\xff" "J\xff\xff\xff\xff" "K\x00" "tb"s;
  p += "\x89" "T" + u32(pixels.size()) + pixels + "tb";
  p += "U\x0b" "fine_labels]q\x04" "(K\x01" "K\x02" "eu."s;
  return p;
}

TEST_F(ProbeTest, CifarPythonReleaseLoadsWithoutRunningAnything) {
  const fs::path folder = dir_ / "cifar-100-python";
  fs::create_directories(folder);
  std::ofstream(folder / "meta") << "meta";
  std::string pixels;
  for (int n = 0; n < 2; ++n)
    for (int i = 0; i < 3072; ++i) pixels += static_cast<char>((n * 7 + i) % 251);
  std::ofstream(folder / "test", std::ios::binary) << cifar_python_pickle(pixels, 2);
  const ProbeSet probe = ProbeSet::open(folder.string() + ":test");
  ASSERT_EQ(probe.size(), 2u);
  const RgbImage image = probe.load(1);
  EXPECT_EQ(image.pixels[3 * 3 + 0], (7 + 3) % 251);          // R plane, pixel 3
  EXPECT_EQ(image.pixels[3 * 3 + 2], (7 + 2048 + 3) % 251);   // B plane
  // The same file naming a global outside the allow-list is refused, not called.
  std::ofstream(folder / "train", std::ios::binary) << cifar_python_pickle(pixels, 2, "os\nsystem\n");
  try {
    ProbeSet::open(folder / "train");
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("os.system"), std::string::npos) << e.what();
  }
}

TEST_F(ProbeTest, UnreadableImagesAreReportedNotThrownByBatches) {
  image_at("set/a.jpg");
  std::ofstream(dir_ / "set" / "b.jpg") << "garbage";
  image_at("set/c.jpg", "Zebra_stripes/00_jpg_500x375.jpg");
  image_at("set/d.jpg", "Zebra_stripes/01_jpg_375x500.jpg");
  const ProbeSet probe = ProbeSet::open(dir_ / "set");
  const Preprocess both[] = {clip_preprocess(224), imagenet_preprocess()};
  const PreprocessedBatch batch = preprocess_batch(probe, 0, 4, both);
  EXPECT_EQ(batch.images, (std::vector<std::size_t>{0, 2, 3}));
  ASSERT_EQ(batch.failures.size(), 1u);
  EXPECT_EQ(batch.failures[0].first, 1u);
  EXPECT_NE(batch.failures[0].second.find("b.jpg"), std::string::npos);
  ASSERT_EQ(batch.pixels.size(), 2u);
  // Each image's rows, in order after the gap: the same values as preprocessing it alone.
  constexpr std::size_t kFloats = 3 * 224 * 224;
  for (std::size_t p = 0; p < 2; ++p) {
    ASSERT_EQ(batch.pixels[p].size(), 3 * kFloats);
    for (std::size_t row = 0; row < 3; ++row) {
      std::vector<float> alone(kFloats);
      normalize_to_chw(apply_geometry(probe.load(batch.images[row]), both[p]), both[p], alone);
      EXPECT_TRUE(std::equal(alone.begin(), alone.end(), batch.pixels[p].begin() + row * kFloats))
          << "pipeline " << p << ", row " << row;
    }
  }
}

TEST_F(ProbeTest, MissingAndEmptySourcesAreErrors) {
  EXPECT_THROW(ProbeSet::open(dir_ / "nope"), Error);
  std::ofstream(dir_ / "broden1_224.zip") << "PK";
  EXPECT_THROW(ProbeSet::open(dir_ / "broden1_224.zip"), Error);
  fs::create_directories(dir_ / "empty" / "class");
  EXPECT_THROW(ProbeSet::open(dir_ / "empty"), Error);
  std::ofstream(dir_ / "empty.txt") << "\n\n";
  EXPECT_THROW(ProbeSet::open(dir_ / "empty.txt"), Error);
}

}  // namespace
}  // namespace clipdissect
