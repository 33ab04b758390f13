// clipdissect describe: the main job.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <memory>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "io/atomic_file.h"
#include "clipdissect/describe.h"
#include "clipdissect/download.h"
#include "clipdissect/error.h"
#include "clipdissect/interrupt.h"
#include "clipdissect/network.h"

namespace clipdissect::cli {

namespace fs = std::filesystem;

namespace {

struct DescribeOptions {
  std::string clip = "ViT-B/16", target = "resnet50", probe = "broden1_224", concepts = "20k";
  std::string layers = "conv1,layer1,layer2,layer3,layer4";
  std::optional<fs::path> target_config, cache_dir, bpe, eval_ground_truth, mpnet;
  std::optional<std::string> save_similarity;
  fs::path out;
  std::string similarity = "soft_wpmi", pool = "avg";
  bool no_cache = false, strict = false, quiet = false, download = false;
  int top_concepts = 5, top_images = 10;
  ComputeOptions compute;
};

std::vector<std::string> split_commas(const std::string& list) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (start <= list.size()) {
    const std::size_t comma = std::min(list.find(',', start), list.size());
    if (comma > start) parts.push_back(list.substr(start, comma - start));
    start = comma + 1;
  }
  return parts;
}

// --eval-ground-truth: the evaluation of layer fc (else the last layer) that follows the run. When the concept
// set is the class names, the run keeps that layer's similarity matrix for the accuracy and rank metrics.
EvalConfig eval_config(const DescribeOptions& o, DescribeConfig& describe_config) {
  EvalConfig eval;
  const std::vector<std::string>& layers = describe_config.layers;
  eval.layer = std::find(layers.begin(), layers.end(), "fc") != layers.end() ? "fc" : layers.back();
  eval.ground_truth = *o.eval_ground_truth;
  // A bad class-name file fails here, before the run.
  const bool concepts_are_classes = read_concepts(describe_config.concepts) == read_ground_truth(eval.ground_truth);
  if (concepts_are_classes && !describe_config.save_similarity) describe_config.save_similarity = eval.layer;
  if (concepts_are_classes && describe_config.save_similarity == eval.layer) eval.similarity_run = o.out;
  if (o.mpnet && !fs::is_directory(*o.mpnet)) fail("{}: MPNet folder not found (--mpnet)", o.mpnet->string());
  eval.descriptions = o.out / "descriptions.csv";
  eval.clip = describe_config.clip;
  eval.bpe = o.bpe;
  eval.mpnet = o.mpnet;
  eval.threads = o.compute.threads;
  return eval;
}

// SIGINT (Ctrl-C) and SIGTERM while describe computes: the first asks for a stop at the next safe point, after
// what is done has been saved; SA_RESETHAND makes a second one end the process at once.
class StopOnSignals {
 public:
  StopOnSignals() {
    struct sigaction action {};
    action.sa_handler = on_signal;
    action.sa_flags = SA_RESETHAND;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &previous_interrupt_);
    sigaction(SIGTERM, &action, &previous_terminate_);
  }
  ~StopOnSignals() {
    sigaction(SIGINT, &previous_interrupt_, nullptr);
    sigaction(SIGTERM, &previous_terminate_, nullptr);
  }
  StopOnSignals(const StopOnSignals&) = delete;
  StopOnSignals& operator=(const StopOnSignals&) = delete;

 private:
  static void on_signal(int) {
    request_stop();
    static constexpr char kMessage[] = "\nstopping after the current step (interrupt again to quit at once)\n";
    [[maybe_unused]] const ssize_t ignored = ::write(STDERR_FILENO, kMessage, sizeof kMessage - 1);
  }
  struct sigaction previous_interrupt_ {}, previous_terminate_ {};
};

void run_describe(const DescribeOptions& o) {
  DescribeConfig config;
  config.clip = resolve_named_or_path(o.clip, o.download);
  config.target = resolve_named_or_path(o.target, o.download);
  for (const std::string& probe : split_commas(o.probe)) config.probes.push_back(resolve_named_or_path(probe, o.download));
  config.concepts = resolve_named_or_path(o.concepts, o.download);
  config.target_config = o.target_config;
  config.layers = split_layers(o.layers);
  const auto similarity = parse_similarity_function(o.similarity);
  if (!similarity) fail("--similarity: unknown function '{}' (soft_wpmi, wpmi, rank_reorder, cos, cos3)", o.similarity);
  config.similarity = *similarity;
  config.pool = o.pool == "max" ? PoolMode::Max : PoolMode::Avg;
  config.batch_size = o.compute.batch_size;
  config.threads = o.compute.threads;
  config.device = o.compute.parsed_device();
  config.clip_precision = o.compute.precision_for(ComputeOptions::Model::Clip);
  config.target_precision = o.compute.precision_for(ComputeOptions::Model::Target);
  config.cache_dir = o.cache_dir;
  config.use_cache = !o.no_cache;
  config.top_concepts = o.top_concepts;
  config.top_images = o.top_images;
  config.bpe = o.bpe;
  config.strict = o.strict;
  config.quiet = o.quiet;
  if (o.save_similarity) config.save_similarity = normalize_layer_name(*o.save_similarity);
  if (o.quiet) spdlog::set_level(spdlog::level::warn);
  const std::optional<EvalConfig> eval = o.eval_ground_truth ? std::optional(eval_config(o, config)) : std::nullopt;

  check_writable_folder(o.out, "--out");  // before hours of work, not after
  const DescribeResult result = [&] {
    const StopOnSignals stop_on_signals;
    return describe(config);
  }();
  write_describe_outputs(config, result, o.out);
  std::size_t neurons = 0;
  for (const LayerDescription& layer : result.layers) neurons += layer.neurons.size();
  spdlog::info("described {} neurons in {} layers on {} images ({} skipped) in {:.1f} s; results in {}", neurons,
               result.layers.size(), result.used_images.size(), result.skipped_images.size(), result.stats.seconds,
               o.out.string());
  if (eval) run_and_report_eval(*eval, o.out / "eval.json");
}

}  // namespace

void register_download_command(CLI::App& app) {
  auto names = std::make_shared<std::vector<std::string>>();
  auto quiet = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("download", "Fetch named models, data sets and concept sets into the cache");
  std::string known;
  for (const NamedFile& file : named_files()) known += fmt::format("\n  {} ({})", file.name, kind_description(file.kind));
  cmd->footer("Names:" + known);
  cmd->add_option("NAME", *names, "What to fetch")->required();
  cmd->add_flag("--quiet", *quiet, "No progress bar");
  cmd->callback([names, quiet] {
    for (const std::string& name : *names) {
      const auto file = find_named_file(name);
      if (!file) fail("download: unknown name '{}' (`clipdissect download --help` lists them)", name);
      spdlog::info("{}: {}", name, download_named_file(*file, *quiet).string());
    }
  });
}

void register_describe_command(CLI::App& app) {
  auto o = std::make_shared<DescribeOptions>();
  CLI::App* cmd = app.add_subcommand("describe", "Label every neuron of the chosen layers with a concept");
  cmd->add_option("--clip", o->clip, "CLIP checkpoint or name (ViT-B/16, RN50, ...)")->capture_default_str();
  cmd->add_option("--target", o->target, "Target checkpoint or name (resnet50, ...)")->capture_default_str();
  cmd->add_option("--target-config", o->target_config, "JSON with the target constructor's arguments");
  cmd->add_option("--probe", o->probe, "Probe set(s), comma-separated: image folder, list file, Broden, CIFAR-100")
      ->capture_default_str();
  cmd->add_option("--concepts", o->concepts, "Concept set: one concept per line, or a name (20k)")
      ->capture_default_str();
  cmd->add_option("--layers", o->layers, "Comma-separated module names")->capture_default_str();
  cmd->add_option("--out", o->out, "Output folder")->required();
  cmd->add_option("--similarity", o->similarity, "soft_wpmi, wpmi, rank_reorder, cos or cos3")
      ->check(CLI::IsMember({"soft_wpmi", "wpmi", "rank_reorder", "cos", "cos3"}))
      ->capture_default_str();
  cmd->add_option("--pool", o->pool, "Summary of conv maps: spatial avg or max")
      ->check(CLI::IsMember({"avg", "max"}))
      ->capture_default_str();
  add_compute_options(*cmd, o->compute);
  cmd->add_option("--cache-dir", o->cache_dir, "Cache folder (default: <cache>/activations)");
  cmd->add_flag("--no-cache", o->no_cache, "Neither read nor write cached embeddings and activations");
  cmd->add_option("--top-concepts", o->top_concepts, "Best concepts kept per neuron in descriptions.json")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--top-images", o->top_images, "Top-activating images kept per neuron")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--bpe", o->bpe, "bpe_simple_vocab_16e6.txt.gz");
  cmd->add_flag("--strict", o->strict, "Fail on an unreadable image instead of skipping it");
  cmd->add_flag("--quiet", o->quiet, "No progress output");
  cmd->add_flag("--download", o->download, "Download named defaults that are missing");
  cmd->add_option("--save-similarity", o->save_similarity,
                  "Keep this layer's whole neurons x concepts similarity matrix (similarity_<layer>.safetensors)");
  cmd->add_option("--eval-ground-truth", o->eval_ground_truth,
                  "Class names, one per unit: run `eval` on layer fc (else the last layer) at the end");
  cmd->add_option("--mpnet", o->mpnet, "all-mpnet-base-v2 folder, for --eval-ground-truth's MPNet score");
  cmd->callback([o] { run_describe(*o); });
}

}  // namespace clipdissect::cli
