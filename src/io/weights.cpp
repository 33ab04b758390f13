#include "clipdissect/weights.h"

#include <algorithm>
#include <cstring>

#include <fmt/ranges.h>

#include "clipdissect/error.h"
#include "io/loaders.h"

namespace clipdissect {

std::int64_t shape_numel(const Shape& shape) {
  std::int64_t numel = 1;
  for (std::int64_t dim : shape) {
    if (dim < 0 || (dim > 0 && numel > INT64_MAX / dim)) fail("shape {} has a negative or overflowing size", fmt::join(shape, "x"));
    numel *= dim;
  }
  return numel;
}

std::string shape_to_string(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

namespace {

template <typename T>
void convert(std::span<const std::byte> bytes, std::vector<float>& out, auto to_float) {
  for (std::size_t i = 0; i < out.size(); ++i) {
    T value;
    std::memcpy(&value, bytes.data() + i * sizeof(T), sizeof(T));  // bytes may be unaligned
    out[i] = to_float(value);
  }
}

}  // namespace

std::vector<float> to_f32(const HostTensor& tensor) {
  const std::size_t element = dtype_size(tensor.dtype);
  const std::optional<std::int64_t> numel = io::checked_numel(tensor.shape);
  if (!numel || tensor.bytes.size() != static_cast<std::uint64_t>(*numel) * element)
    fail("to_f32: tensor '{}' has {} bytes, which does not match shape {} of {}", tensor.name, tensor.bytes.size(),
         shape_to_string(tensor.shape), dtype_name(tensor.dtype));
  std::vector<float> out(static_cast<std::size_t>(*numel));
  const auto cast = [](auto value) { return static_cast<float>(value); };
  switch (tensor.dtype) {
    case DType::F32:
      convert<float>(tensor.bytes, out, cast);
      break;
    case DType::F16:
      convert<std::uint16_t>(tensor.bytes, out, half_to_float);
      break;
    case DType::BF16:
      convert<std::uint16_t>(tensor.bytes, out, bfloat16_to_float);
      break;
    case DType::F64:
      convert<double>(tensor.bytes, out, cast);
      break;
    case DType::I64:
      convert<std::int64_t>(tensor.bytes, out, cast);
      break;
    case DType::I32:
      convert<std::int32_t>(tensor.bytes, out, cast);
      break;
    case DType::I16:
      convert<std::int16_t>(tensor.bytes, out, cast);
      break;
    case DType::I8:
      convert<std::int8_t>(tensor.bytes, out, cast);
      break;
    case DType::U8:
      convert<std::uint8_t>(tensor.bytes, out, cast);
      break;
    case DType::Bool:
      convert<std::uint8_t>(tensor.bytes, out, [](std::uint8_t v) { return v != 0 ? 1.0f : 0.0f; });
      break;
  }
  return out;
}

void WeightMap::add(HostTensor tensor) {
  if (index_.contains(tensor.name)) fail("{}: duplicate tensor name '{}'", source_, tensor.name);
  index_.emplace(tensor.name, tensors_.size());
  tensors_.push_back(std::move(tensor));
}

bool WeightMap::contains(std::string_view name) const { return index_.find(name) != index_.end(); }

const HostTensor* WeightMap::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const HostTensor& WeightMap::at(std::string_view name) const {
  if (const HostTensor* tensor = find(name)) return *tensor;
  fail("{}: no tensor named '{}' (the file has {} tensors)", source_, name, tensors_.size());
}

namespace io {

std::optional<std::int64_t> checked_numel(const Shape& shape) {
  std::int64_t numel = 1;
  for (std::int64_t dim : shape)
    if (dim < 0 || __builtin_mul_overflow(numel, dim, &numel)) return std::nullopt;
  return numel;
}

std::optional<std::size_t> checked_byte_size(std::int64_t numel, DType dtype) {
  std::size_t bytes = 0;
  if (numel < 0 || __builtin_mul_overflow(static_cast<std::size_t>(numel), dtype_size(dtype), &bytes))
    return std::nullopt;
  return bytes;
}

HostTensor make_host_tensor(std::string name, DType dtype, Shape shape, std::span<const std::byte> bytes,
                            std::shared_ptr<const void> keepalive) {
  if (reinterpret_cast<std::uintptr_t>(bytes.data()) % dtype_size(dtype) != 0) {
    auto copy = std::make_shared<std::vector<std::byte>>(bytes.begin(), bytes.end());
    bytes = *copy;
    keepalive = std::move(copy);
  }
  return {std::move(name), dtype, std::move(shape), bytes, std::move(keepalive)};
}

namespace {

bool starts_with(std::span<const std::byte> bytes, std::string_view prefix) {
  return bytes.size() >= prefix.size() && std::memcmp(bytes.data(), prefix.data(), prefix.size()) == 0;
}

WeightMap load_any_format(const std::shared_ptr<const MappedFile>& file) {
  const std::span<const std::byte> bytes = file->bytes();
  if (bytes.empty()) fail("{}: empty file", file->name());
  if (starts_with(bytes, "PK\x03\x04") || starts_with(bytes, "PK\x05\x06")) return load_torch_archive(file);
  if (has_legacy_torch_magic(bytes)) return load_torch_legacy(file);
  if (bytes.size() > 8 && bytes[8] == std::byte{'{'}) return load_safetensors(file);
  if (bytes[0] == std::byte{0x80})
    fail("{}: a pickle without torch's legacy magic number: not a torch checkpoint", file->name());
  fail(
      "{}: unrecognised weights format (first byte 0x{:02x}): expected safetensors, a torch.save zip or legacy "
      "file, or a TorchScript archive",
      file->name(), std::to_integer<unsigned>(bytes[0]));
}

// Checkpoints saved from a DataParallel model prefix every name with "module.".
WeightMap strip_module_prefix(WeightMap weights) {
  constexpr std::string_view kPrefix = "module.";
  const auto& tensors = weights.tensors();
  if (tensors.empty() ||
      !std::all_of(tensors.begin(), tensors.end(), [&](const HostTensor& t) { return t.name.starts_with(kPrefix); }))
    return weights;
  WeightMap stripped(weights.source(), weights.format());
  stripped.metadata = weights.metadata;
  for (HostTensor tensor : tensors) {
    tensor.name.erase(0, kPrefix.size());
    stripped.add(std::move(tensor));
  }
  return stripped;
}

}  // namespace

WeightMap load_weights(const std::shared_ptr<const MappedFile>& file) {
  return strip_module_prefix(load_any_format(file));
}

}  // namespace io

WeightMap load_weights(const std::filesystem::path& path) { return io::load_weights(io::MappedFile::open(path)); }

WeightMap load_weights_folder(const std::filesystem::path& folder) {
  for (const char* name : {"model.safetensors", "pytorch_model.bin"}) {
    const std::filesystem::path candidate = folder / name;
    std::error_code error;
    if (std::filesystem::is_regular_file(candidate, error)) return load_weights(candidate);
  }
  fail("{}: no model.safetensors or pytorch_model.bin in this folder", folder.string());
}

}  // namespace clipdissect
