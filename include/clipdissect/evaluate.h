// Scoring descriptions of neurons whose meaning is known (neuron i of a classifier's last layer means class i),
// as the paper does: the CLIP and MPNet cosine similarity between each description and its class name
// (the reference's utils.get_cos_similarity), and, when the concept set was the class names and the run kept
// its similarity matrix, top-1/top-5 accuracy, the rank of the true class and the ROC AUC of "the top-1 label
// is correct" against the top-1 score (the reference's table-3 notebook).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace clipdissect {

class ClipModel;
class ClipTokenizer;
class MpnetModel;

// The descriptions of one layer's units, by unit, from our descriptions.csv (layer,unit,description,...),
// MILAN's layout (layer,unit,description) or NetDissect's (unit,label,... with units from 1; one layer per file,
// so `layer` is not consulted). Throws Error on a malformed file, a missing layer, duplicate or missing units.
std::vector<std::string> read_unit_descriptions(const std::filesystem::path& csv, const std::string& layer);

// One class name per line (LF or CRLF; a final line end is optional), kept whole ("tench, Tinca tinca").
// An empty line is an error naming it.
std::vector<std::string> read_ground_truth(const std::filesystem::path& labels);

// Mean over i of cos(CLIP text embedding of predicted[i], of truth[i]). Texts are tokenised without
// truncation, as clip.tokenize's default: a text longer than CLIP's context is an error naming it.
double mean_clip_cosine(ClipModel& clip, const ClipTokenizer& tokenizer, const std::vector<std::string>& predicted,
                        const std::vector<std::string>& truth);
// The same with MPNet sentence embeddings.
double mean_mpnet_cosine(MpnetModel& mpnet, const std::vector<std::string>& predicted,
                         const std::vector<std::string>& truth);

struct RankMetrics {
  double top1 = 0, top5 = 0;     // fractions of neurons
  double mean_rank = 0;          // rank of the true class, 1 = best
  std::int64_t median_rank = 0;  // sorted(ranks)[n / 2], as the reference notebook
  std::optional<double> auc;     // unset when every top-1 label is right, or every one wrong, or a score is not finite
};

// From a [neurons, concepts] similarity matrix where concept i is neuron i's class. Concepts are ordered as
// torch.max picks them: NaN first, then by score, ties by the lower index.
RankMetrics rank_metrics(std::span<const float> similarity, std::int64_t neurons, std::int64_t concepts);

// ROC AUC of `scores` for telling the positives from the rest: the Mann-Whitney statistic with tied scores
// at their average rank (sklearn's roc_auc_score). Unset without both classes or with a non-finite score.
std::optional<double> roc_auc(std::span<const float> scores, const std::vector<bool>& positive);

struct EvalConfig {
  std::filesystem::path descriptions, ground_truth;
  std::string layer = "fc";
  std::filesystem::path clip;
  std::optional<std::filesystem::path> bpe;
  std::optional<std::filesystem::path> mpnet;           // folder; no MPNet score without it
  std::optional<std::filesystem::path> similarity_run;  // describe's --out with similarity_<layer>.safetensors
  int threads = 1;
};

struct EvalResult {
  std::int64_t neurons = 0;
  double clip_cos = 0;
  std::optional<double> mpnet_cos;
  std::optional<RankMetrics> ranks;
};

EvalResult evaluate(const EvalConfig& config);

// JSON with the keys that apply: neurons, clip_cos, mpnet_cos, top1, top5, mean_rank, median_rank, auc.
std::string eval_json(const EvalResult& result);
// A short aligned table for the terminal.
std::string eval_table(const EvalResult& result);

}  // namespace clipdissect
