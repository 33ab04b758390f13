// safetensors: u64 little-endian header size N, N bytes of JSON, then the raw data that the
// header's data_offsets (relative to the end of the header) point into.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "clipdissect/error.h"
#include "io/atomic_file.h"
#include "io/byte_reader.h"
#include "io/json_file.h"
#include "io/loaders.h"

namespace clipdissect {

namespace {

using Json = nlohmann::ordered_json;  // keeps the header's (= the file's) tensor order

constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;  // the limit of the reference implementation
constexpr std::string_view kMetadataKey = "__metadata__";

std::int64_t json_count(const Json& value, const std::string& source, const std::string& name, std::string_view field) {
  if (!value.is_number_unsigned() || value.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
    fail("{}: tensor '{}': {} must hold non-negative integers, found {}", source, name, field,
         value.is_primitive() ? value.dump() : value.type_name());
  return static_cast<std::int64_t>(value.get<std::uint64_t>());
}

const Json& json_field(const Json& entry, std::string_view field, const std::string& source, const std::string& name) {
  auto it = entry.find(field);
  if (it == entry.end()) fail("{}: tensor '{}' has no '{}' field", source, name, field);
  return *it;
}

HostTensor parse_entry(const std::string& name, const Json& entry, std::span<const std::byte> data,
                       const std::shared_ptr<const io::MappedFile>& file) {
  const std::string& source = file->name();
  if (!entry.is_object()) fail("{}: header entry '{}' is not an object", source, name);
  const Json& dtype_json = json_field(entry, "dtype", source, name);
  const Json& shape_json = json_field(entry, "shape", source, name);
  const Json& offsets_json = json_field(entry, "data_offsets", source, name);
  if (!dtype_json.is_string()) fail("{}: tensor '{}': dtype is not a string", source, name);
  const std::optional<DType> dtype = dtype_from_name(dtype_json.get<std::string>());
  if (!dtype) fail("{}: tensor '{}' has unsupported dtype '{}'", source, name, dtype_json.get<std::string>());
  if (!shape_json.is_array()) fail("{}: tensor '{}': shape is not an array", source, name);
  Shape shape;
  for (const Json& dim : shape_json) shape.push_back(json_count(dim, source, name, "shape"));
  if (!offsets_json.is_array() || offsets_json.size() != 2)
    fail("{}: tensor '{}': data_offsets must be [begin, end]", source, name);
  const std::int64_t begin = json_count(offsets_json[0], source, name, "data_offsets");
  const std::int64_t end = json_count(offsets_json[1], source, name, "data_offsets");
  if (begin > end || static_cast<std::uint64_t>(end) > data.size())
    fail("{}: tensor '{}': data_offsets [{}, {}] lie outside the {} data bytes", source, name, begin, end, data.size());
  const std::optional<std::int64_t> numel = io::checked_numel(shape);
  const std::optional<std::size_t> bytes = numel ? io::checked_byte_size(*numel, *dtype) : std::nullopt;
  if (!bytes || *bytes != static_cast<std::uint64_t>(end - begin))
    fail("{}: tensor '{}': shape {} of {} needs {} bytes but data_offsets [{}, {}] span {}", source, name,
         shape_to_string(shape), dtype_name(*dtype), bytes ? std::to_string(*bytes) : "too many", begin, end,
         end - begin);
  return io::make_host_tensor(name, *dtype, std::move(shape), data.subspan(static_cast<std::size_t>(begin), *bytes),
                              file);
}

void read_metadata(const Json& metadata, const std::string& source, WeightMap& weights) {
  if (!metadata.is_object()) fail("{}: __metadata__ is not an object", source);
  for (const auto& [key, value] : metadata.items()) {
    if (!value.is_string()) fail("{}: __metadata__ entry '{}' is not a string", source, key);
    weights.metadata[key] = value.get<std::string>();
  }
}

std::string safetensors_header(const std::vector<OwnedTensor>& tensors,
                               const std::map<std::string, std::string>& metadata, const std::string& path) {
  Json header = Json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  std::set<std::string_view> names;
  std::uint64_t offset = 0;
  for (const OwnedTensor& tensor : tensors) {
    if (tensor.name == kMetadataKey || !names.insert(tensor.name).second)
      fail("{}: cannot save tensor name '{}' twice or under the reserved name", path, tensor.name);
    const std::optional<std::int64_t> numel = io::checked_numel(tensor.shape);
    const std::optional<std::size_t> bytes = numel ? io::checked_byte_size(*numel, tensor.dtype) : std::nullopt;
    if (!bytes || *bytes != tensor.bytes.size())
      fail("{}: tensor '{}' has {} bytes but shape {} of {} needs {}", path, tensor.name, tensor.bytes.size(),
           shape_to_string(tensor.shape), dtype_name(tensor.dtype), bytes ? std::to_string(*bytes) : "too many");
    header[tensor.name] = {{"dtype", std::string(dtype_name(tensor.dtype))},
                           {"shape", tensor.shape},
                           {"data_offsets", {offset, offset + tensor.bytes.size()}}};
    offset += tensor.bytes.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data section 8-byte aligned
  return text;
}

}  // namespace

namespace io {

WeightMap load_safetensors(const std::shared_ptr<const MappedFile>& file) {
  const std::string& source = file->name();
  ByteReader reader(file->bytes(), source);
  const std::uint64_t header_size = reader.u64("safetensors header size");
  if (header_size > reader.remaining() || header_size > kMaxHeaderBytes)
    fail("{}: safetensors header claims {} bytes but {} follow (limit {})", source, header_size, reader.remaining(),
         kMaxHeaderBytes);
  const std::string_view text = reader.take_text(header_size, "safetensors header");
  const Json header = parse_json_text<Json>(text, source + " (safetensors header)");
  if (!header.is_object()) fail("{}: safetensors header is not a JSON object", source);
  const std::span<const std::byte> data = file->bytes().subspan(reader.position());
  WeightMap weights(source, "safetensors");
  for (const auto& [name, entry] : header.items()) {
    if (name == kMetadataKey)
      read_metadata(entry, source, weights);
    else
      weights.add(parse_entry(name, entry, data, file));
  }
  return weights;
}

}  // namespace io

OwnedTensor make_f32_tensor(std::string name, Shape shape, std::span<const float> values) {
  const std::optional<std::int64_t> numel = io::checked_numel(shape);
  if (!numel || static_cast<std::uint64_t>(*numel) != values.size())
    fail("make_f32_tensor('{}'): shape {} does not hold {} values", name, shape_to_string(shape), values.size());
  const auto* bytes = reinterpret_cast<const std::byte*>(values.data());
  return {std::move(name), DType::F32, std::move(shape), {bytes, bytes + values.size_bytes()}};
}

void save_safetensors(const std::filesystem::path& path, const std::vector<OwnedTensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  const std::string header = safetensors_header(tensors, metadata, path.string());
  const std::uint64_t header_size = header.size();
  std::vector<std::span<const std::byte>> parts{std::as_bytes(std::span(&header_size, 1)),
                                                std::as_bytes(std::span(header))};
  for (const OwnedTensor& tensor : tensors) parts.emplace_back(tensor.bytes);  // in header order
  write_file_atomically(path, parts);
}

}  // namespace clipdissect
