// The HTML report of a finished describe run: one static page that opens from disk, with every neuron's
// label, alternatives, score and top-activating probe images.
#pragma once

#include <filesystem>

namespace clipdissect {

// Reads `run_dir`/run.json and descriptions.json and writes `run_dir`/report.html, with thumbnails
// (report_images/thumbs/<probe index>.jpg) and larger copies (report_images/full/<probe index>.jpg) of
// every top image beside it. Images already made for the same probe listing are kept; missing ones are
// decoded from the probe sets named in run.json, which must not have changed since the run.
// Throws Error naming the file and field when the run's files are missing or malformed.
void write_report(const std::filesystem::path& run_dir);

}  // namespace clipdissect
