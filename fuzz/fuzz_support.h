// What the fuzz targets share: scratch files for readers that take paths, fixture paths, and reading every
// byte of loaded tensors (so that AddressSanitizer checks the spans a loader hands out).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>

#include "clipdissect/error.h"
#include "clipdissect/weights.h"
#include "io/mapped_file.h"

namespace clipdissect::fuzz {

using Bytes = std::span<const std::uint8_t>;

// Writes `data` to `name` inside this process's scratch folder (removed at exit) and returns its path.
std::filesystem::path write_scratch(const std::filesystem::path& name, Bytes data);
// Makes `name` in the scratch folder a symbolic link to `target` (a fixture, read in place).
std::filesystem::path link_scratch(const std::filesystem::path& name, const std::filesystem::path& target);

// A fixture file; throws std::runtime_error (not a clean rejection) when the fixtures are missing.
std::filesystem::path fixture_path(const std::string& relative);

// `data` as an in-memory file, the way the weight loaders see a mapped checkpoint.
std::shared_ptr<const io::MappedFile> as_file(std::string name, Bytes data);

// Sums every byte of every tensor (returned so that the reads stay): out-of-bounds spans become AddressSanitizer
// reports.
std::uint64_t read_every_byte(const WeightMap& weights);

// Runs one reader of a target that tries several: a clean rejection (Error) lets the next one run.
template <typename Read>
void try_reader(Read&& read) {
  try {
    read();
  } catch (const Error&) {
  }
}

}  // namespace clipdissect::fuzz
