#include "clipdissect/describe.h"
#include "clipdissect/evaluate.h"
#include "clipdissect/probe.h"
#include "fuzz_targets.h"

namespace clipdissect::fuzz {

// The input as each kind of text file a user passes: descriptions CSV (eval), ground-truth labels, concept
// list, Broden index.csv, and a list of image paths.
void label_files(Bytes data) {
  const std::filesystem::path file = write_scratch("labels/input.txt", data);
  try_reader([&] { read_unit_descriptions(file, "layer4"); });
  try_reader([&] { read_unit_descriptions(file, "fc"); });
  try_reader([&] { read_ground_truth(file); });
  try_reader([&] { read_concepts(file); });
  try_reader([&] { list_images(file); });
  const std::filesystem::path broden = write_scratch("broden/index.csv", data).parent_path();
  std::filesystem::create_directories(broden / "images");
  try_reader([&] { ProbeSet::open(broden); });
}

}  // namespace clipdissect::fuzz
