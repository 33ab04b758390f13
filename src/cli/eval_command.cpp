// clipdissect eval: scores descriptions of final-layer neurons against their classes.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <memory>

#include "cli/commands.h"
#include "clipdissect/download.h"
#include "clipdissect/network.h"
#include "io/atomic_file.h"

namespace clipdissect::cli {

namespace fs = std::filesystem;

void run_and_report_eval(const EvalConfig& config, const std::optional<fs::path>& out) {
  const EvalResult result = evaluate(config);
  fmt::print("{}", eval_table(result));
  if (!out) return;
  if (out->has_parent_path()) fs::create_directories(out->parent_path());
  write_file_atomically(*out, eval_json(result));
  spdlog::info("evaluation of layer '{}' written to {}", config.layer, out->string());
}

void register_eval_command(CLI::App& app) {
  struct EvalOptions {
    EvalConfig config;
    std::string clip;
    std::optional<fs::path> out;
    ComputeOptions compute;
  };
  auto o = std::make_shared<EvalOptions>();
  CLI::App* cmd = app.add_subcommand(
      "eval",
      "Score descriptions of a classifier's last layer against its class names (CLIP and MPNet cosine, "
      "accuracy and ranks)");
  cmd->add_option("--descriptions", o->config.descriptions,
                  "descriptions.csv, or a NetDissect (unit,label,...) or MILAN (layer,unit,description) CSV")
      ->required();
  cmd->add_option("--ground-truth", o->config.ground_truth, "Class names, one per line, line i for unit i")->required();
  cmd->add_option("--layer", o->config.layer, "Layer whose rows are scored")->capture_default_str();
  cmd->add_option("--clip", o->clip, "CLIP checkpoint or name (ViT-B/16, ...)")->required();
  cmd->add_option("--bpe", o->config.bpe, "bpe_simple_vocab_16e6.txt.gz");
  cmd->add_option("--mpnet", o->config.mpnet, "all-mpnet-base-v2 folder (transformers or sentence-transformers)");
  cmd->add_option("--similarity-matrix", o->config.similarity_run,
                  "describe's output folder holding similarity_<layer>.safetensors (--save-similarity)");
  cmd->add_option("--out", o->out, "JSON file for the scores");
  cmd->add_option("--threads", o->compute.threads, "CPU threads (default: every core)")->check(CLI::PositiveNumber);
  cmd->callback([o] {
    EvalConfig config = o->config;
    config.layer = normalize_layer_name(config.layer);
    config.clip = resolve_named_or_path(o->clip, false);
    config.threads = o->compute.threads;
    run_and_report_eval(config, o->out);
  });
}

}  // namespace clipdissect::cli
