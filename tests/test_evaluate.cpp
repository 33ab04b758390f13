// `clipdissect eval`: the CSV layouts, the metrics against independent computations, the CLIP and MPNet
// cosines against the embedding APIs, the describe integration and the errors on bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "cli_runner.h"
#include "clipdissect/error.h"
#include "clipdissect/evaluate.h"
#include "clipdissect/mpnet.h"
#include "clipdissect/weights.h"
#include "fixtures.h"
#include "test_files.h"
#include "test_util.h"

namespace clipdissect {
namespace {

namespace fs = std::filesystem;
using testing::fixture;

// The first 16 ImageNet class names: the fixture target's fc layer has 16 units.
const std::vector<std::string> kClasses{
    "tench, Tinca tinca",
    "goldfish, Carassius auratus",
    "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias",
    "tiger shark, Galeocerdo cuvieri",
    "hammerhead, hammerhead shark",
    "electric ray, crampfish, numbfish, torpedo",
    "stingray",
    "cock",
    "hen",
    "ostrich, Struthio camelus",
    "brambling, Fringilla montifringilla",
    "goldfinch, Carduelis carduelis",
    "house finch, linnet, Carpodacus mexicanus",
    "junco, snowbird",
    "indigo bunting, indigo finch, indigo bird, Passerina cyanea",
    "robin, American robin, Turdus migratorius"};

fs::path write(const fs::path& path, const std::string& content) {
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

std::string lines(const std::vector<std::string>& texts) {
  std::string out;
  for (const std::string& t : texts) out += t + "\n";
  return out;
}

template <typename F>
std::string error_of(F run) {
  try {
    run();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an Error";
  return "";
}

// ---- reading --------------------------------------------------------------------------------------------

TEST(EvalReading, OurLayoutPicksTheLayerInUnitOrder) {
  const testing::TemporaryFolder dir;
  const fs::path csv = write(dir.path() / "d.csv",
                             "layer,unit,description,similarity\r\n"
                             "layer4,0,dog,0.5\r\n"
                             "fc,1,\"fish, small\",0.25\r\n"
                             "fc,0,\"a \"\"quoted\"\" word\",0.5\r\n"
                             "\r\n"
                             "fc,2,\"two\nlines\",\r\n");
  EXPECT_EQ(read_unit_descriptions(csv, "fc"),
            (std::vector<std::string>{"a \"quoted\" word", "fish, small", "two\nlines"}));
  EXPECT_EQ(read_unit_descriptions(csv, "layer4"), std::vector<std::string>{"dog"});
}

TEST(EvalReading, MilanAndNetDissectLayouts) {
  const testing::TemporaryFolder dir;
  const fs::path milan =
      write(dir.path() / "milan.csv",
            "layer,unit,description\nconv1,0,Neon green\nfc,1,Fish in pictures\nfc,0,Living things\n");
  EXPECT_EQ(read_unit_descriptions(milan, "fc"), (std::vector<std::string>{"Living things", "Fish in pictures"}));
  // NetDissect numbers units from 1 and holds one layer; the label column is the description.
  const fs::path netdissect = write(dir.path() / "nd.csv",
                                    "unit,category,label,score\n2,object,bird,0.09\n1,texture,scaly,0.14\n"
                                    "3,scene,aquatic_theater-s,0.12\n");
  EXPECT_EQ(read_unit_descriptions(netdissect, "fc"), (std::vector<std::string>{"scaly", "bird", "aquatic_theater-s"}));
}

TEST(EvalReading, MalformedDescriptionsAreClearErrors) {
  const testing::TemporaryFolder dir;
  const auto error_for = [&](const std::string& content, const std::string& layer = "fc") {
    const fs::path csv = write(dir.path() / "bad.csv", content);
    return error_of([&] { read_unit_descriptions(csv, layer); });
  };
  EXPECT_NE(error_for("layer,unit,description\nfc,0,a\nfc,1,b\nfc,3,d\n").find("unit 2"), std::string::npos);
  EXPECT_NE(error_for("layer,unit,description\nfc,1,b\n").find("unit 0"), std::string::npos);
  EXPECT_NE(error_for("unit,label\n0,b\n1,c\n").find("unit 1"), std::string::npos);  // NetDissect starts at 1
  EXPECT_NE(error_for("layer,unit,description\nfc,0,a\nfc,0,b\n").find("twice"), std::string::npos);
  EXPECT_NE(error_for("layer,unit,description\nconv1,0,a\nlayer4,0,b\n").find("conv1, layer4"), std::string::npos);
  EXPECT_NE(error_for("name,text\nfc,a\n").find("layouts"), std::string::npos);
  EXPECT_NE(error_for("layer,unit,description\nfc,zero,a\n").find("'zero'"), std::string::npos);
  EXPECT_NE(error_for("layer,unit,description\nfc,-1,a\n").find("'-1'"), std::string::npos);
  EXPECT_NE(error_for("layer,unit,description\nfc,0\n").find("line 2"), std::string::npos);
  EXPECT_NE(error_for("layer,unit,description\nfc,0,\"open\n").find("not closed"), std::string::npos);
  EXPECT_NE(error_for("").find("empty"), std::string::npos);
  EXPECT_NE(error_of([&] { read_unit_descriptions(dir.path() / "missing.csv", "fc"); }).find("missing.csv"),
            std::string::npos);
}

TEST(EvalReading, GroundTruthLines) {
  const testing::TemporaryFolder dir;
  EXPECT_EQ(read_ground_truth(write(dir.path() / "a.txt", "tench, Tinca tinca\r\ngoldfish\n")),
            (std::vector<std::string>{"tench, Tinca tinca", "goldfish"}));
  EXPECT_EQ(read_ground_truth(write(dir.path() / "b.txt", "a\nb")), (std::vector<std::string>{"a", "b"}));
  EXPECT_NE(error_of([&] { read_ground_truth(write(dir.path() / "c.txt", "a\n\nb\n")); }).find("line 2"),
            std::string::npos);
  EXPECT_THROW(read_ground_truth(write(dir.path() / "d.txt", "")), Error);
}

// ---- metrics --------------------------------------------------------------------------------------------

TEST(EvalMetrics, HandMadeMatrixWithTies) {
  const std::vector<float> similarity{
      0.9f, 0.1f, 0.2f, 0.3f,  // true class first: rank 1, right
      0.5f, 0.5f, 0.1f, 0.0f,  // tied with a lower index, which torch.max picks: rank 2, wrong
      0.1f, 0.2f, 0.3f, 0.3f,  // tied with a higher index: rank 1, right
      0.4f, 0.8f, 0.6f, 0.2f,  // last: rank 4, wrong
  };
  const RankMetrics m = rank_metrics(similarity, 4, 4);
  EXPECT_DOUBLE_EQ(m.top1, 0.5);
  EXPECT_DOUBLE_EQ(m.top5, 1.0);
  EXPECT_DOUBLE_EQ(m.mean_rank, 2.0);
  EXPECT_EQ(m.median_rank, 2);  // sorted ranks [1, 1, 2, 4][4 / 2]
  // Top-1 scores 0.9 (right), 0.5 (wrong), 0.3 (right), 0.8 (wrong): 2 of 4 pairs ordered.
  ASSERT_TRUE(m.auc);
  EXPECT_DOUBLE_EQ(*m.auc, 0.5);

  // A right and a wrong neuron with the same top-1 score count half.
  const RankMetrics tied = rank_metrics(std::vector<float>{0.7f, 0.1f, 0.1f, 0.7f, 0.2f, 0.1f, 0.1f, 0.2f, 0.9f}, 3, 3);
  EXPECT_DOUBLE_EQ(tied.top1, 2.0 / 3);
  EXPECT_DOUBLE_EQ(tied.mean_rank, 4.0 / 3);
  EXPECT_EQ(tied.median_rank, 1);
  ASSERT_TRUE(tied.auc);
  EXPECT_DOUBLE_EQ(*tied.auc, 0.75);

  // NaN ranks first (torch.max), and leaves the AUC undefined; all right leaves it undefined too.
  const RankMetrics nan = rank_metrics(std::vector<float>{0.5f, NAN, 0.1f, 0.9f}, 2, 2);
  EXPECT_DOUBLE_EQ(nan.top1, 0.5);
  EXPECT_DOUBLE_EQ(nan.mean_rank, 1.5);
  EXPECT_FALSE(nan.auc);
  EXPECT_FALSE(rank_metrics(std::vector<float>{1, 0, 0, 1}, 2, 2).auc);
  EXPECT_THROW(rank_metrics(std::vector<float>{1, 0, 0}, 2, 2), Error);
}

TEST(EvalMetrics, RocAucKnownValues) {
  // sklearn's documented example.
  EXPECT_DOUBLE_EQ(*roc_auc(std::vector<float>{0.1f, 0.4f, 0.35f, 0.8f}, {false, false, true, true}), 0.75);
  EXPECT_DOUBLE_EQ(*roc_auc(std::vector<float>{1, 1, 1, 1}, {false, true, false, true}), 0.5);
  EXPECT_FALSE(roc_auc(std::vector<float>{0.1f, 0.2f}, {true, true}));
  EXPECT_FALSE(roc_auc(std::vector<float>{0.1f, INFINITY}, {true, false}));
}

// Independent versions: ranks by a stable sort of the row, AUC over every positive/negative pair.
struct Independent {
  std::vector<std::int64_t> ranks;
  std::vector<float> top;
  std::vector<bool> right;
};
Independent independent_ranks(const std::vector<float>& sim, int n, int k) {
  Independent out;
  for (int i = 0; i < n; ++i) {
    std::vector<int> order(k);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return sim[i * k + a] > sim[i * k + b]; });
    out.ranks.push_back(std::find(order.begin(), order.end(), i) - order.begin() + 1);
    out.top.push_back(sim[i * k + order[0]]);
    out.right.push_back(order[0] == i);
  }
  return out;
}
double pairwise_auc(const std::vector<float>& score, const std::vector<bool>& positive) {
  double ordered = 0, pairs = 0;
  for (std::size_t p = 0; p < score.size(); ++p)
    for (std::size_t q = 0; q < score.size(); ++q)
      if (positive[p] && !positive[q]) {
        pairs += 1;
        ordered += score[p] > score[q] ? 1 : score[p] == score[q] ? 0.5 : 0;
      }
  return ordered / pairs;
}

TEST(EvalMetrics, RandomTiedMatricesAgreeWithIndependentImplementation) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 20; ++trial) {
    const int n = 40, k = 60;
    std::vector<float> sim(n * k);
    // Scores in steps of 0.25 (many ties); the true class gets a random boost so that some are right.
    for (float& v : sim) v = static_cast<float>(rng() % 8) * 0.25f;
    for (int i = 0; i < n; ++i) sim[i * k + i] += static_cast<float>(rng() % 3) * 0.5f;
    const Independent want = independent_ranks(sim, n, k);
    const RankMetrics got = rank_metrics(sim, n, k);
    std::vector<std::int64_t> sorted = want.ranks;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_DOUBLE_EQ(got.top1, std::count(want.ranks.begin(), want.ranks.end(), 1) / double(n));
    EXPECT_DOUBLE_EQ(got.top5, std::count_if(sorted.begin(), sorted.end(), [](auto r) { return r <= 5; }) / double(n));
    EXPECT_DOUBLE_EQ(got.mean_rank, std::accumulate(sorted.begin(), sorted.end(), 0.0) / n);
    EXPECT_EQ(got.median_rank, sorted[n / 2]);
    const auto right = std::count(want.right.begin(), want.right.end(), true);
    if (right == 0 || right == n) {
      EXPECT_FALSE(got.auc);
    } else {
      ASSERT_TRUE(got.auc);
      EXPECT_NEAR(*got.auc, pairwise_auc(want.top, want.right), 1e-12);
    }
  }
}

// ---- the command ----------------------------------------------------------------------------------------

class EvalCli : public ::testing::Test {
 protected:
  testing::CliResult run(const std::vector<std::string>& args) const { return testing::run_cli(args, dir_.path()); }
  fs::path path(const std::string& name) const { return dir_.path() / name; }
  std::vector<std::string> eval_args(const fs::path& csv, const fs::path& labels, const fs::path& out) const {
    return {"eval",
            "--descriptions",
            csv.string(),
            "--ground-truth",
            labels.string(),
            "--clip",
            fixture("models/clip_vit.pt").string(),
            "--bpe",
            fixture("clip/bpe_simple_vocab_16e6.txt.gz").string(),
            "--out",
            out.string(),
            "--threads",
            "2"};
  }
  // Un-normalised CLIP embeddings of a text file's lines, through `clipdissect embed`.
  std::vector<float> embed(const fs::path& texts, const std::string& name) const {
    const fs::path out = path(name + ".safetensors");
    const auto r = run({"embed", "--clip", fixture("models/clip_vit.pt").string(), "--texts", texts.string(), "--bpe",
                        fixture("clip/bpe_simple_vocab_16e6.txt.gz").string(), "--out", out.string()});
    EXPECT_EQ(r.status, 0) << r.err;
    return testing::fixture_tensor(load_weights(out), "embeddings");
  }
  nlohmann::json json_of(const fs::path& file) const { return nlohmann::json::parse(testing::read_file(file)); }

  testing::TemporaryFolder dir_;
};

double mean_cosine(const std::vector<float>& a, const std::vector<float>& b, std::size_t rows) {
  const std::size_t dim = a.size() / rows;
  double total = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    double ab = 0, aa = 0, bb = 0;
    for (std::size_t c = 0; c < dim; ++c) {
      ab += double(a[r * dim + c]) * b[r * dim + c];
      aa += double(a[r * dim + c]) * a[r * dim + c];
      bb += double(b[r * dim + c]) * b[r * dim + c];
    }
    total += ab / std::sqrt(aa) / std::sqrt(bb);
  }
  return total / double(rows);
}

TEST_F(EvalCli, ClipCosineMatchesTheEmbedApiAndMilanLayoutWorks) {
  const std::vector<std::string> predicted{"fish",     "goldfish", "a shark",   "shark",    "hammer", "ray",
                                           "stingray", "rooster",  "chicken",   "big bird", "finch",  "yellow finch",
                                           "house",    "snowbird", "blue bird", "robin"};
  std::string csv = "layer,unit,description\nconv1,0,edges\n";
  for (std::size_t unit = predicted.size(); unit-- > 0;)
    csv += "fc," + std::to_string(unit) + "," + predicted[unit] + "\n";
  const fs::path descriptions = write(path("milan.csv"), csv), labels = write(path("labels.txt"), lines(kClasses));
  const auto r = run(eval_args(descriptions, labels, path("eval.json")));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("CLIP cosine"), std::string::npos) << r.out;
  const nlohmann::json json = json_of(path("eval.json"));
  EXPECT_EQ(json["neurons"], 16);
  EXPECT_FALSE(json.contains("mpnet_cos"));
  EXPECT_FALSE(json.contains("top1"));

  const std::vector<float> a = embed(write(path("predicted.txt"), lines(predicted)), "predicted");
  const std::vector<float> b = embed(labels, "labels");
  EXPECT_NEAR(json["clip_cos"].get<double>(), mean_cosine(a, b, 16), 1e-5);
}

TEST_F(EvalCli, DescribeWithClassNamesAsConceptsEvaluatesEverything) {
  const fs::path labels = write(path("labels.txt"), lines(kClasses));
  const fs::path out = path("run");
  const auto r = run({"describe",
                      "--clip",
                      fixture("models/clip_vit.pt"),
                      "--target",
                      fixture("models/resnet_bottleneck.pth"),
                      "--probe",
                      fixture("images"),
                      "--concepts",
                      labels.string(),
                      "--layers",
                      "layer4,fc",
                      "--out",
                      out.string(),
                      "--no-cache",
                      "--bpe",
                      fixture("clip/bpe_simple_vocab_16e6.txt.gz"),
                      "--threads",
                      "2",
                      "--quiet",
                      "--eval-ground-truth",
                      labels.string(),
                      "--mpnet",
                      fixture("hf/mpnet_st").string()});
  ASSERT_EQ(r.status, 0) << r.err;
  const nlohmann::json json = json_of(out / "eval.json");
  for (const char* key : {"neurons", "clip_cos", "mpnet_cos", "top1", "top5", "mean_rank", "median_rank"})
    EXPECT_TRUE(json.contains(key)) << key;
  EXPECT_EQ(json["neurons"], 16);

  // Independently: the saved matrix's ranks, the descriptions' agreement with the classes, and MPNet cosines.
  const WeightMap saved = load_weights(out / "similarity_fc.safetensors");
  EXPECT_EQ(saved.at("similarity").shape, (Shape{16, 16}));
  const Independent want = independent_ranks(testing::fixture_tensor(saved, "similarity"), 16, 16);
  EXPECT_DOUBLE_EQ(json["mean_rank"].get<double>(), std::accumulate(want.ranks.begin(), want.ranks.end(), 0.0) / 16);
  const std::vector<std::string> described = read_unit_descriptions(out / "descriptions.csv", "fc");
  std::size_t right = 0;
  for (std::size_t i = 0; i < 16; ++i) right += described[i] == kClasses[i];
  EXPECT_DOUBLE_EQ(json["top1"].get<double>(), right / 16.0);
  EXPECT_EQ(json.contains("auc"), right > 0 && right < 16);

  auto backend = make_cpu_backend(2);
  auto mpnet = MpnetModel::load(*backend, fixture("hf/mpnet"));
  EXPECT_NEAR(json["mpnet_cos"].get<double>(), mean_cosine(mpnet->encode(described), mpnet->encode(kClasses), 16),
              1e-5);

  // `eval` on the run folder gives the same numbers.
  std::vector<std::string> args = eval_args(out / "descriptions.csv", labels, path("again.json"));
  args.insert(args.end(), {"--similarity-matrix", out.string(), "--mpnet", fixture("hf/mpnet").string()});
  const auto again = run(args);
  ASSERT_EQ(again.status, 0) << again.err;
  const nlohmann::json second = json_of(path("again.json"));
  for (const auto& [key, value] : json.items())
    EXPECT_NEAR(second[key].get<double>(), value.get<double>(), 1e-6) << key;
}

TEST_F(EvalCli, BadInputIsAClearError) {
  const fs::path labels = write(path("labels.txt"), lines(kClasses));
  std::string csv = "layer,unit,description,similarity\n";
  for (int unit = 0; unit < 16; ++unit) csv += "fc," + std::to_string(unit) + ",fish,0.5\n";
  const fs::path good = write(path("good.csv"), csv);

  const auto short_labels =
      run(eval_args(good, write(path("short.txt"), lines({"tench", "goldfish"})), path("e.json")));
  EXPECT_EQ(short_labels.status, 1);
  EXPECT_NE(short_labels.err.find("2 class names"), std::string::npos) << short_labels.err;
  EXPECT_NE(short_labels.err.find("16 units"), std::string::npos) << short_labels.err;

  std::string gap = "layer,unit,description,similarity\n";
  for (int unit = 0; unit < 17; ++unit)
    if (unit != 7) gap += "fc," + std::to_string(unit) + ",fish,0.5\n";
  const auto missing_unit = run(eval_args(write(path("gap.csv"), gap), labels, path("e.json")));
  EXPECT_EQ(missing_unit.status, 1);
  EXPECT_NE(missing_unit.err.find("unit 7"), std::string::npos) << missing_unit.err;

  std::vector<std::string> args = eval_args(good, labels, path("e.json"));
  args.insert(args.end(), {"--mpnet", path("no-such-model").string()});
  const auto no_mpnet = run(args);
  EXPECT_EQ(no_mpnet.status, 1);
  EXPECT_NE(no_mpnet.err.find("no-such-model"), std::string::npos) << no_mpnet.err;

  args = eval_args(good, labels, path("e.json"));
  args.insert(args.end(), {"--similarity-matrix", dir_.path().string()});
  const auto no_matrix = run(args);
  EXPECT_EQ(no_matrix.status, 1);
  EXPECT_NE(no_matrix.err.find("--save-similarity"), std::string::npos) << no_matrix.err;
  EXPECT_FALSE(fs::exists(path("e.json")));
}

TEST_F(EvalCli, MatrixOfAnotherConceptSetIsRefused) {
  const fs::path labels = write(path("labels.txt"), lines(kClasses));
  std::vector<std::string> concepts = kClasses;
  concepts.insert(concepts.end(), {"water", "feathers", "scales"});
  const fs::path out = path("run");
  const auto r = run({"describe",
                      "--clip",
                      fixture("models/clip_vit.pt"),
                      "--target",
                      fixture("models/resnet_bottleneck.pth"),
                      "--probe",
                      fixture("images"),
                      "--concepts",
                      write(path("concepts.txt"), lines(concepts)).string(),
                      "--layers",
                      "fc",
                      "--out",
                      out.string(),
                      "--no-cache",
                      "--bpe",
                      fixture("clip/bpe_simple_vocab_16e6.txt.gz"),
                      "--threads",
                      "2",
                      "--quiet",
                      "--save-similarity",
                      "fc",
                      "--eval-ground-truth",
                      labels.string()});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(load_weights(out / "similarity_fc.safetensors").at("similarity").shape, (Shape{16, 19}));
  // The concepts are not the classes: the run's own evaluation has cosines only.
  const nlohmann::json json = json_of(out / "eval.json");
  EXPECT_TRUE(json.contains("clip_cos"));
  EXPECT_FALSE(json.contains("top1"));

  std::vector<std::string> args = eval_args(out / "descriptions.csv", labels, path("e.json"));
  args.insert(args.end(), {"--similarity-matrix", out.string()});
  const auto refused = run(args);
  EXPECT_EQ(refused.status, 1);
  EXPECT_NE(refused.err.find("concept set"), std::string::npos) << refused.err;
}

}  // namespace
}  // namespace clipdissect
