#include "fuzz_support.h"

#include <fstream>
#include <stdexcept>
#include <vector>

#include "fixtures_dir.h"
#include "test_files.h"

namespace clipdissect::fuzz {

namespace {

const std::filesystem::path& scratch_folder() {
  static const testing::TemporaryFolder folder;
  return folder.path();
}

}  // namespace

std::filesystem::path write_scratch(const std::filesystem::path& name, Bytes data) {
  const std::filesystem::path path = scratch_folder() / name;
  std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  if (!out) throw std::runtime_error("cannot write the scratch file " + path.string());
  return path;
}

std::filesystem::path link_scratch(const std::filesystem::path& name, const std::filesystem::path& target) {
  const std::filesystem::path path = scratch_folder() / name;
  std::filesystem::create_directories(path.parent_path());
  if (!std::filesystem::is_symlink(path)) std::filesystem::create_symlink(target, path);
  return path;
}

std::filesystem::path fixture_path(const std::string& relative) {
  const std::filesystem::path path = testing::fixtures_dir() / relative;
  if (!std::filesystem::exists(path))
    throw std::runtime_error("fixture missing: " + path.string() + " (set CLIPDISSECT_FIXTURES)");
  return path;
}

std::shared_ptr<const io::MappedFile> as_file(std::string name, Bytes data) {
  const auto* begin = reinterpret_cast<const std::byte*>(data.data());
  return io::MappedFile::from_bytes(std::move(name), std::vector<std::byte>(begin, begin + data.size()));
}

std::uint64_t read_every_byte(const WeightMap& weights) {
  std::uint64_t sum = 0;
  for (const HostTensor& tensor : weights.tensors())
    for (std::byte b : tensor.bytes) sum += std::to_integer<std::uint8_t>(b);
  return sum;
}

}  // namespace clipdissect::fuzz
