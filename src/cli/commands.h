// Subcommands of the clipdissect binary. Each file registers its subcommands; the options live in
// structs owned by the callbacks, which run after parsing.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "clipdissect/device.h"
#include "clipdissect/evaluate.h"

namespace clipdissect::cli {

struct ComputeOptions {
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int batch_size = 32;
  std::string device = "cpu";
  std::string precision;  // empty: the default for the model and device

  enum class Model { Clip, Target };
  Device parsed_device() const { return parse_device(device); }
  // --precision, else fp16 for CLIP on a GPU (what the reference runs) and fp32 for everything else.
  Precision precision_for(Model model) const;
  std::unique_ptr<Backend> make_backend(Model model) const;
};
// --threads, --batch-size, --device, --precision.
void add_compute_options(CLI::App& command, ComputeOptions& options);

// "conv1,layer2[0].conv1" -> {"conv1", "layer2.0.conv1"}
std::vector<std::string> split_layers(const std::string& list);

void register_model_commands(CLI::App& app);     // inspect, tokenize, embed, activations
void register_describe_command(CLI::App& app);   // describe
void register_download_command(CLI::App& app);   // download
void register_report_command(CLI::App& app);     // report
void register_eval_command(CLI::App& app);       // eval

// Runs the evaluation, prints its table and writes its JSON to `out` when given.
void run_and_report_eval(const EvalConfig& config, const std::optional<std::filesystem::path>& out);

}  // namespace clipdissect::cli
