// The clipdissect command line: a thin layer over the library.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "clipdissect/backend.h"
#include "clipdissect/error.h"
#include "clipdissect/interrupt.h"
#include "clipdissect/network.h"
#include "cli/commands.h"

namespace clipdissect::cli {

void add_compute_options(CLI::App& command, ComputeOptions& options) {
  command.add_option("--threads", options.threads, "CPU threads (default: every core)")->check(CLI::PositiveNumber);
  command.add_option("--batch-size", options.batch_size, "Images per forward pass")->check(CLI::PositiveNumber);
  command.add_option("--device", options.device, "cpu, cuda or cuda:N (needs a build with -DCLIPDISSECT_CUDA=ON)")
      ->capture_default_str();
  command.add_option("--precision", options.precision,
                     "fp32, fp16 or bf16 on a GPU (default: fp16 for CLIP, fp32 for the target; the CPU runs fp32)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
}

Precision ComputeOptions::precision_for(Model model) const {
  if (!precision.empty()) return *parse_precision(precision);  // CLI11 checked the spelling
  return parsed_device().cuda && model == Model::Clip ? Precision::F16 : Precision::F32;
}

std::unique_ptr<Backend> ComputeOptions::make_backend(Model model) const {
  return clipdissect::make_backend(parsed_device(), precision_for(model), threads);
}

std::vector<std::string> split_layers(const std::string& list) {
  std::vector<std::string> layers;
  std::size_t start = 0;
  while (start <= list.size()) {
    const std::size_t comma = std::min(list.find(',', start), list.size());
    if (comma > start) layers.push_back(normalize_layer_name(list.substr(start, comma - start)));
    start = comma + 1;
  }
  if (layers.empty()) fail("--layers: no layer names given");
  return layers;
}

}  // namespace clipdissect::cli

int main(int argc, char** argv) {
  clipdissect::keep_freed_heap_memory();
  spdlog::set_default_logger(spdlog::stderr_color_mt("clipdissect"));
  spdlog::set_pattern("%^%l%$: %v");
  CLI::App app{"clipdissect: describe what the neurons of vision networks do, with CLIP (CLIP-Dissect)"};
  app.set_version_flag("--version", std::string("clipdissect ") + CLIPDISSECT_VERSION);
  app.require_subcommand(1);
  clipdissect::cli::register_model_commands(app);
  clipdissect::cli::register_describe_command(app);
  clipdissect::cli::register_download_command(app);
  clipdissect::cli::register_report_command(app);
  clipdissect::cli::register_eval_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const clipdissect::Interrupted& e) {
    spdlog::warn("{}", e.what());
    return 130;  // the shell's code for a process ended by SIGINT
  } catch (const clipdissect::Error& e) {
    spdlog::error("{}", e.what());
    return 1;
  } catch (const std::exception& e) {
    spdlog::error("unexpected failure: {}", e.what());
    return 2;
  }
  return 0;
}
