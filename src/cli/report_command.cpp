// clipdissect report RUN_DIR: the HTML report of a finished describe run, made again from its files.
#include <filesystem>
#include <memory>

#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "clipdissect/report.h"

namespace clipdissect::cli {

void register_report_command(CLI::App& app) {
  auto run_dir = std::make_shared<std::filesystem::path>();
  CLI::App* cmd = app.add_subcommand("report", "Make report.html again from a finished describe run's files");
  cmd->add_option("RUN_DIR", *run_dir, "The --out folder of a describe run")->required();
  cmd->callback([run_dir] {
    write_report(*run_dir);
    spdlog::info("report: {}", (*run_dir / "report.html").string());
  });
}

}  // namespace clipdissect::cli
