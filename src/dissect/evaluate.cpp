// eval: descriptions of final-layer neurons against their known classes (the paper's evaluation).
#include "clipdissect/evaluate.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>

#include "clipdissect/clip.h"
#include "clipdissect/describe.h"
#include "clipdissect/error.h"
#include "clipdissect/mpnet.h"
#include "clipdissect/tokenizer.h"
#include "clipdissect/weights.h"
#include "io/sha256.h"

namespace clipdissect {

namespace fs = std::filesystem;

namespace {

std::string read_text_file(const fs::path& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot read the {}", path.string(), what);
  std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (text.starts_with("\xEF\xBB\xBF")) text.erase(0, 3);  // a UTF-8 byte order mark
  return text;
}

struct CsvRow {
  std::size_t line = 0;  // where the row starts, from 1
  std::vector<std::string> fields;
};

// RFC 4180 as Python's csv and pandas read it: fields separated by commas, optionally quoted, "" a quote
// inside quotes, quoted fields may hold commas and line ends; LF, CRLF or CR end a row; blank rows skipped.
std::vector<CsvRow> parse_csv(std::string_view text, const fs::path& path) {
  std::vector<CsvRow> rows;
  CsvRow row{1, {}};
  std::string field;
  bool quoted = false, after_quote = false;
  std::size_t line = 1;
  const auto end_field = [&] {
    row.fields.push_back(std::move(field));
    field.clear();
    after_quote = false;
  };
  const auto end_row = [&] {
    end_field();
    if (row.fields.size() > 1 || !row.fields[0].empty()) rows.push_back(std::move(row));
    row = CsvRow{line, {}};
  };
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
        after_quote = true;
      } else {
        line += c == '\n';
        field += c;
      }
    } else if (c == ',') {
      end_field();
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      ++line;
      end_row();
    } else if (after_quote) {
      fail("{}, line {}: unexpected '{}' after a closing quote", path.string(), line, c);
    } else if (c == '"' && field.empty()) {
      quoted = true;
    } else {
      field += c;
    }
  }
  if (quoted) fail("{}, line {}: a quoted field is not closed", path.string(), row.line);
  end_row();
  return rows;
}

std::optional<std::size_t> column(const std::vector<std::string>& header, std::string_view name) {
  const auto it = std::find(header.begin(), header.end(), name);
  return it == header.end() ? std::nullopt : std::optional(static_cast<std::size_t>(it - header.begin()));
}

// Where a layout keeps what we need.
struct Layout {
  std::optional<std::size_t> layer;  // unset: one layer per file (NetDissect)
  std::size_t unit = 0, text = 0;
  std::int64_t first_unit = 0;
};

Layout detect_layout(const std::vector<std::string>& header, const fs::path& path) {
  const auto layer = column(header, "layer"), unit = column(header, "unit");
  const auto description = column(header, "description"), label = column(header, "label");
  if (layer && unit && description) return {layer, *unit, *description, 0};  // clipdissect, MILAN
  if (!layer && unit && label) return {std::nullopt, *unit, *label, 1};      // NetDissect counts units from 1
  fail(
      "{}: the header '{}' is none of the known layouts: layer,unit,description[,similarity] (clipdissect, MILAN) "
      "or unit,label,... (NetDissect)",
      path.string(), fmt::join(header, ","));
}

std::int64_t parse_unit(const std::string& field, const fs::path& path, std::size_t line) {
  std::int64_t unit = -1;
  const auto [end, error] = std::from_chars(field.data(), field.data() + field.size(), unit);
  if (error != std::errc() || end != field.data() + field.size() || unit < 0)
    fail("{}, line {}: unit '{}' is not a non-negative integer", path.string(), line, field);
  return unit;
}

// The units must run from the layout's first unit without a gap.
std::vector<std::string> contiguous_units(const std::map<std::int64_t, std::string>& by_unit, const Layout& layout,
                                          const std::string& layer, const fs::path& path) {
  std::vector<std::string> descriptions;
  std::int64_t expected = layout.first_unit;
  for (const auto& [unit, text] : by_unit) {
    if (unit != expected)
      fail("{}: layer '{}' has no description for unit {} (units must run from {} to {} without gaps)", path.string(),
           layer, expected, layout.first_unit, by_unit.rbegin()->first);
    descriptions.push_back(text);
    ++expected;
  }
  return descriptions;
}

std::vector<std::vector<std::int32_t>> clip_tokens(const ClipTokenizer& tokenizer,
                                                   const std::vector<std::string>& texts, const char* what) {
  return tokenizer.tokenize_all(texts, [&](std::size_t i) { return fmt::format("{} {}", what, i); });
}

// Mean over rows of the cosine of a's row and b's row ([rows, dim] each).
double mean_row_cosine(const std::vector<float>& a, const std::vector<float>& b, std::size_t rows) {
  if (rows == 0) fail("eval: nothing to compare");
  const std::size_t dim = a.size() / rows;
  double total = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    double dot = 0, norm_a = 0, norm_b = 0;
    for (std::size_t c = 0; c < dim; ++c) {
      const double x = a[r * dim + c], y = b[r * dim + c];
      dot += x * y;
      norm_a += x * x;
      norm_b += y * y;
    }
    total += dot / std::sqrt(norm_a * norm_b);
  }
  return total / static_cast<double>(rows);
}

// torch.max's order over one row: NaN above everything, then higher scores, ties by the lower index.
bool ranks_above(const float* row, std::int64_t a, std::int64_t b) {
  const bool nan_a = std::isnan(row[a]), nan_b = std::isnan(row[b]);
  if (nan_a != nan_b) return nan_a;
  if (!nan_a && row[a] != row[b]) return row[a] > row[b];
  return a < b;
}

RankMetrics load_rank_metrics(const fs::path& run_dir, const std::string& layer,
                              const std::vector<std::string>& truth) {
  const fs::path path = similarity_matrix_path(run_dir, layer);
  if (!fs::exists(path))
    fail("{}: no similarity matrix for layer '{}' in this run (describe keeps it with --save-similarity {})",
         path.string(), layer, layer);
  const WeightMap saved = load_weights(path);
  const HostTensor& matrix = saved.at("similarity");
  const auto neurons = static_cast<std::int64_t>(truth.size());
  if (matrix.shape.size() != 2 || matrix.shape[0] != neurons)
    fail("{}: similarity matrix of shape {}, expected [{} neurons, concepts]", path.string(),
         shape_to_string(matrix.shape), neurons);
  const auto sha = saved.metadata.find("concepts_sha256");
  if (sha == saved.metadata.end() || sha->second != sha256_hex(fmt::format("{}", fmt::join(truth, "\n"))))
    fail(
        "{}: the run's concept set is not the list of class names; accuracy and ranks need the class names as the "
        "concept set (describe --concepts LABELS.txt)",
        path.string());
  return rank_metrics(to_f32(matrix), neurons, matrix.shape[1]);
}

}  // namespace

std::vector<std::string> read_unit_descriptions(const fs::path& csv, const std::string& layer) {
  const std::vector<CsvRow> rows = parse_csv(read_text_file(csv, "descriptions"), csv);
  if (rows.empty()) fail("{}: empty file, expected a header and one row per unit", csv.string());
  const std::vector<std::string>& header = rows.front().fields;
  const Layout layout = detect_layout(header, csv);
  std::map<std::int64_t, std::string> by_unit;
  std::map<std::int64_t, std::size_t> line_of;
  std::vector<std::string> layers;
  for (std::size_t r = 1; r < rows.size(); ++r) {
    const CsvRow& row = rows[r];
    if (row.fields.size() != header.size())
      fail("{}, line {}: {} fields, but the header has {}", csv.string(), row.line, row.fields.size(), header.size());
    if (layout.layer) {
      const std::string& row_layer = row.fields[*layout.layer];
      if (std::find(layers.begin(), layers.end(), row_layer) == layers.end()) layers.push_back(row_layer);
      if (row_layer != layer) continue;
    }
    const std::int64_t unit = parse_unit(row.fields[layout.unit], csv, row.line);
    if (!by_unit.emplace(unit, row.fields[layout.text]).second)
      fail("{}: unit {} of layer '{}' is described twice (lines {} and {})", csv.string(), unit, layer, line_of[unit],
           row.line);
    line_of[unit] = row.line;
  }
  if (by_unit.empty())
    fail("{}: no rows for layer '{}' (layers in the file: {})", csv.string(), layer, fmt::join(layers, ", "));
  return contiguous_units(by_unit, layout, layer, csv);
}

std::vector<std::string> read_ground_truth(const fs::path& labels) {
  const std::string text = read_text_file(labels, "class names");
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start < text.size()) {
    const std::size_t end = std::min(text.find('\n', start), text.size());
    std::string line = text.substr(start, end - start);
    if (line.ends_with('\r')) line.pop_back();
    if (line.empty()) fail("{}, line {}: empty; expected one class name per line", labels.string(), lines.size() + 1);
    lines.push_back(std::move(line));
    start = end + 1;
  }
  if (lines.empty()) fail("{}: no class names", labels.string());
  return lines;
}

double mean_clip_cosine(ClipModel& clip, const ClipTokenizer& tokenizer, const std::vector<std::string>& predicted,
                        const std::vector<std::string>& truth) {
  if (predicted.size() != truth.size())
    fail("eval: {} descriptions for {} class names", predicted.size(), truth.size());
  const std::vector<float> a = clip.encode_text(clip_tokens(tokenizer, predicted, "description of unit"));
  const std::vector<float> b = clip.encode_text(clip_tokens(tokenizer, truth, "class name of unit"));
  return mean_row_cosine(a, b, predicted.size());
}

double mean_mpnet_cosine(MpnetModel& mpnet, const std::vector<std::string>& predicted,
                         const std::vector<std::string>& truth) {
  if (predicted.size() != truth.size())
    fail("eval: {} descriptions for {} class names", predicted.size(), truth.size());
  return mean_row_cosine(mpnet.encode(predicted), mpnet.encode(truth), predicted.size());
}

RankMetrics rank_metrics(std::span<const float> similarity, std::int64_t neurons, std::int64_t concepts) {
  if (neurons <= 0 || concepts < neurons || static_cast<std::int64_t>(similarity.size()) != neurons * concepts)
    fail("eval: a similarity matrix of {} values is not [{} neurons, {} concepts] with a concept per neuron",
         similarity.size(), neurons, concepts);
  std::vector<std::int64_t> ranks;
  std::vector<float> top_scores;
  std::vector<bool> correct;
  for (std::int64_t i = 0; i < neurons; ++i) {
    const float* row = similarity.data() + i * concepts;
    std::int64_t rank = 1, best = 0;
    for (std::int64_t j = 0; j < concepts; ++j) {
      rank += j != i && ranks_above(row, j, i);
      if (ranks_above(row, j, best)) best = j;
    }
    ranks.push_back(rank);
    top_scores.push_back(row[best]);
    correct.push_back(best == i);
  }
  const auto n = static_cast<double>(neurons);
  RankMetrics m;
  m.top1 = static_cast<double>(std::count(ranks.begin(), ranks.end(), 1)) / n;
  m.top5 = static_cast<double>(std::count_if(ranks.begin(), ranks.end(), [](std::int64_t r) { return r <= 5; })) / n;
  m.mean_rank = static_cast<double>(std::accumulate(ranks.begin(), ranks.end(), std::int64_t{0})) / n;
  std::sort(ranks.begin(), ranks.end());
  m.median_rank = ranks[ranks.size() / 2];
  m.auc = roc_auc(top_scores, correct);
  return m;
}

std::optional<double> roc_auc(std::span<const float> scores, const std::vector<bool>& positive) {
  if (scores.size() != positive.size()) fail("roc_auc: {} scores for {} labels", scores.size(), positive.size());
  if (std::any_of(scores.begin(), scores.end(), [](float s) { return !std::isfinite(s); })) return std::nullopt;
  const auto positives = static_cast<double>(std::count(positive.begin(), positive.end(), true));
  const double negatives = static_cast<double>(positive.size()) - positives;
  if (positives == 0 || negatives == 0) return std::nullopt;
  std::vector<std::size_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return scores[a] < scores[b]; });
  double positive_rank_sum = 0;
  for (std::size_t first = 0; first < order.size();) {
    std::size_t last = first;
    while (last + 1 < order.size() && scores[order[last + 1]] == scores[order[first]]) ++last;
    const double average_rank = (static_cast<double>(first + last) + 2) / 2;  // ranks counted from 1
    for (std::size_t k = first; k <= last; ++k)
      if (positive[order[k]]) positive_rank_sum += average_rank;
    first = last + 1;
  }
  return (positive_rank_sum - positives * (positives + 1) / 2) / (positives * negatives);
}

EvalResult evaluate(const EvalConfig& config) {
  const std::vector<std::string> predicted = read_unit_descriptions(config.descriptions, config.layer);
  const std::vector<std::string> truth = read_ground_truth(config.ground_truth);
  if (predicted.size() != truth.size())
    fail("{}: {} class names, but layer '{}' in {} has {} units; the class names must list one class per unit",
         config.ground_truth.string(), truth.size(), config.layer, config.descriptions.string(), predicted.size());
  EvalResult result;
  result.neurons = static_cast<std::int64_t>(truth.size());
  // Checked before any model loads, so that a wrong run folder fails at once.
  if (config.similarity_run) result.ranks = load_rank_metrics(*config.similarity_run, config.layer, truth);
  if (config.mpnet && !fs::is_directory(*config.mpnet))
    fail("{}: MPNet folder not found (--mpnet expects a transformers or sentence-transformers folder)",
         config.mpnet->string());

  auto backend = make_cpu_backend(config.threads);
  const ClipTokenizer tokenizer = ClipTokenizer::from_file(resolve_bpe_path(config.bpe));
  result.clip_cos = mean_clip_cosine(*ClipModel::load(*backend, config.clip), tokenizer, predicted, truth);
  if (config.mpnet) result.mpnet_cos = mean_mpnet_cosine(*MpnetModel::load(*backend, *config.mpnet), predicted, truth);
  return result;
}

std::string eval_json(const EvalResult& result) {
  nlohmann::ordered_json json{{"neurons", result.neurons}, {"clip_cos", result.clip_cos}};
  if (result.mpnet_cos) json["mpnet_cos"] = *result.mpnet_cos;
  if (const auto& r = result.ranks) {
    json["top1"] = r->top1;
    json["top5"] = r->top5;
    json["mean_rank"] = r->mean_rank;
    json["median_rank"] = r->median_rank;
    if (r->auc) json["auc"] = *r->auc;
  }
  return json.dump(1) + "\n";
}

std::string eval_table(const EvalResult& result) {
  std::string table =
      fmt::format("{:<14}{}\n{:<14}{:.4f}\n", "neurons", result.neurons, "CLIP cosine", result.clip_cos);
  if (result.mpnet_cos) table += fmt::format("{:<14}{:.4f}\n", "MPNet cosine", *result.mpnet_cos);
  if (const auto& r = result.ranks) {
    table += fmt::format("{:<14}{:.2f} %\n{:<14}{:.2f} %\n", "top-1", 100 * r->top1, "top-5", 100 * r->top5);
    table += fmt::format("{:<14}{:.2f}\n{:<14}{}\n", "mean rank", r->mean_rank, "median rank", r->median_rank);
    table += r->auc ? fmt::format("{:<14}{:.4f}\n", "AUC", *r->auc)
                    : fmt::format("{:<14}n/a (needs finite top-1 scores, some labels right and some wrong)\n", "AUC");
  }
  return table;
}

}  // namespace clipdissect
