// torch.save zip archives, legacy (pre-1.6) torch.save files and TorchScript archives.
#include <algorithm>
#include <array>
#include <cstring>
#include <unordered_map>

#include "clipdissect/error.h"
#include "io/byte_reader.h"
#include "io/loaders.h"
#include "io/unpickler.h"
#include "io/zip_archive.h"

namespace clipdissect::io {

namespace {

// Deeper module trees or state_dict wrappers than this are treated as malicious (or cyclic).
constexpr int kMaxNesting = 64;
constexpr std::int64_t kLegacyProtocolVersion = 1001;

// What a persistent id says about a storage: ('storage', torch.XStorage, key, location, numel[, view]).
struct StorageId {
  DType dtype;
  std::string key;
  std::int64_t numel;
};

StorageId parse_storage_id(const Value& pid, const std::string& source) {
  const std::vector<Value*>& fields = pid.items;
  if (pid.kind != Kind::Tuple || fields.size() < 5 || fields[0]->kind != Kind::String || fields[0]->text != "storage")
    fail("{}: persistent id is not a ('storage', type, key, location, numel) tuple", source);
  const Value& type = *fields[1];
  const Value& key = *fields[2];
  const Value& numel = *fields[4];
  if (type.kind != Kind::Global || type.global != Global::StorageType)
    fail("{}: persistent id names {} '{}' instead of a storage type", source, kind_name(type.kind), type.text);
  if (key.kind != Kind::String) fail("{}: storage key is a {}, expected a string", source, kind_name(key.kind));
  if (numel.kind != Kind::Int || numel.integer < 0)
    fail("{}: storage '{}' has an invalid element count", source, key.text);
  if (fields.size() > 5 && fields[5]->kind != Kind::None)
    fail("{}: storage '{}' is a view of another storage (legacy view_metadata), which is not supported", source,
         key.text);
  return {type.storage_dtype, key.text, numel.integer};
}

// One Storage per key, so tensors sharing a storage share its bytes.
class StorageTable {
 public:
  explicit StorageTable(std::string source) : source_(std::move(source)) {}

  // Returns the storage and whether it was created by this call.
  std::pair<std::shared_ptr<Storage>, bool> get(const StorageId& id) {
    auto [it, created] = storages_.try_emplace(id.key);
    if (created) {
      it->second = std::make_shared<Storage>(Storage{id.dtype, id.key, id.numel, {}, {}});
    } else if (it->second->dtype != id.dtype || it->second->numel != id.numel) {
      fail("{}: storage '{}' is referenced as {} x {} and as {} x {}", source_, id.key, it->second->numel,
           dtype_name(it->second->dtype), id.numel, dtype_name(id.dtype));
    }
    return {it->second, created};
  }
  std::shared_ptr<Storage> find(const std::string& key) const {
    auto it = storages_.find(key);
    return it == storages_.end() ? nullptr : it->second;
  }

 private:
  std::string source_;
  std::unordered_map<std::string, std::shared_ptr<Storage>> storages_;
};

std::size_t storage_byte_size(const Storage& storage, const std::string& source) {
  const std::optional<std::size_t> size = checked_byte_size(storage.numel, storage.dtype);
  if (!size) fail("{}: storage '{}' claims an impossible {} elements", source, storage.key, storage.numel);
  return *size;
}

bool is_contiguous(const TensorView& view) {
  std::int64_t expected = 1;
  for (std::size_t d = view.size.size(); d-- > 0;) {
    if (view.size[d] != 1 && view.stride[d] != expected) return false;
    expected *= view.size[d];
  }
  return true;
}

// Copies a strided view into row-major order (an odometer over the dimensions). Dimensions of
// size 1 are skipped: their stride is never applied and may be anything.
std::shared_ptr<std::vector<std::byte>> gather(const TensorView& view, std::int64_t numel, std::size_t element) {
  std::vector<std::int64_t> sizes;
  std::vector<std::int64_t> strides;
  for (std::size_t d = 0; d < view.size.size(); ++d)
    if (view.size[d] != 1) {
      sizes.push_back(view.size[d]);
      strides.push_back(view.stride[d]);
    }
  auto out = std::make_shared<std::vector<std::byte>>(static_cast<std::size_t>(numel) * element);
  std::vector<std::int64_t> index(sizes.size(), 0);
  std::int64_t source_element = view.offset;
  for (std::int64_t i = 0; i < numel; ++i) {
    std::memcpy(out->data() + static_cast<std::size_t>(i) * element,
                view.storage->bytes.data() + static_cast<std::size_t>(source_element) * element, element);
    for (std::size_t d = sizes.size(); d-- > 0;) {
      source_element += strides[d];
      if (++index[d] < sizes[d]) break;
      source_element -= strides[d] * sizes[d];
      index[d] = 0;
    }
  }
  return out;
}

// Turns a strided tensor into a contiguous HostTensor: a span into the storage when possible.
HostTensor materialize(const TensorView& view, std::string name, const std::string& source) {
  const Storage& storage = *view.storage;
  const std::size_t element = dtype_size(storage.dtype);
  if (storage.bytes.size() != storage_byte_size(storage, source))
    fail("{}: tensor '{}': storage '{}' has no data (missing from the file)", source, name, storage.key);
  const std::optional<std::int64_t> numel = checked_numel(view.size);
  if (!numel || view.offset < 0)
    fail("{}: tensor '{}' has an invalid size {} or offset {}", source, name, shape_to_string(view.size), view.offset);
  if (*numel == 0) return make_host_tensor(std::move(name), storage.dtype, view.size, {}, {});
  // The last element the view touches must lie inside the storage.
  std::int64_t last = view.offset;
  for (std::size_t d = 0; d < view.size.size(); ++d) {
    std::int64_t reach = 0;
    if (view.stride[d] < 0 || __builtin_mul_overflow(view.size[d] - 1, view.stride[d], &reach) ||
        __builtin_add_overflow(last, reach, &last))
      fail("{}: tensor '{}' has invalid strides {}", source, name, shape_to_string(view.stride));
  }
  if (last >= storage.numel)
    fail("{}: tensor '{}' (size {}, stride {}, offset {}) reaches element {} of storage '{}', which has {} elements",
         source, name, shape_to_string(view.size), shape_to_string(view.stride), view.offset, last, storage.key,
         storage.numel);
  if (is_contiguous(view))
    return make_host_tensor(std::move(name), storage.dtype, view.size,
                            storage.bytes.subspan(static_cast<std::size_t>(view.offset) * element,
                                                  static_cast<std::size_t>(*numel) * element),
                            storage.keepalive);
  auto copy = gather(view, *numel, element);
  return make_host_tensor(std::move(name), storage.dtype, view.size, *copy, copy);
}

bool holds_tensors(const Value& dict) {
  return std::any_of(dict.entries.begin(), dict.entries.end(),
                     [](const auto& entry) { return entry.second->kind == Kind::Tensor; });
}

// The state dict inside a checkpoint: the top-level dict, or the dict of tensors nested under
// "state_dict" or "model" (training checkpoints keep epoch, optimizer, ... beside it).
const Value& select_state_dict(const Value& root, const std::string& source) {
  const Value* current = &root;
  for (int depth = 0; depth < kMaxNesting; ++depth) {
    if (current->kind != Kind::Dict)
      fail("{}: expected a dict of tensors (a state_dict), found a {}", source, kind_name(current->kind));
    if (holds_tensors(*current)) return *current;
    const Value* inner = current->find("state_dict");
    if (inner == nullptr || inner->kind != Kind::Dict) inner = current->find("model");
    if (inner == nullptr || inner->kind != Kind::Dict) return *current;
    current = inner;
  }
  fail("{}: state_dict nested more than {} levels deep", source, kMaxNesting);
}

std::string describe_keys(const Value& dict) {
  std::vector<std::string> keys;
  for (const auto& entry : dict.entries)
    keys.push_back(entry.first->kind == Kind::String ? entry.first->text : std::string(kind_name(entry.first->kind)));
  return fmt::format("{}", fmt::join(keys, ", "));
}

WeightMap collect_state_dict(const Value& root, const std::string& source, std::string format) {
  const Value& state_dict = select_state_dict(root, source);
  WeightMap weights(source, std::move(format));
  for (const auto& [key, value] : state_dict.entries) {
    if (value->kind != Kind::Tensor) continue;
    if (key->kind != Kind::String) fail("{}: a tensor is stored under a {} key", source, kind_name(key->kind));
    weights.add(materialize(value->tensor, key->text, source));
  }
  if (weights.size() == 0) fail("{}: no tensors found (keys: {})", source, describe_keys(state_dict));
  return weights;
}

// TorchScript: parameters and buffers are attributes of `__torch__.*` objects; names join like state_dict().
void collect_module(const Value& module, const std::string& prefix, int depth, const std::string& source,
                    WeightMap& weights) {
  if (depth > kMaxNesting) fail("{}: TorchScript modules nested more than {} levels deep", source, kMaxNesting);
  if (module.state == nullptr || module.state->kind != Kind::Dict) return;
  for (const auto& [key, value] : module.state->entries) {
    if (key->kind != Kind::String) continue;
    if (value->kind == Kind::Tensor)
      weights.add(materialize(value->tensor, prefix + key->text, source));
    else if (value->kind == Kind::Object)
      collect_module(*value, prefix + key->text + ".", depth + 1, source, weights);
  }
}

WeightMap collect_torchscript(const Value& root, const std::string& source) {
  if (root.kind != Kind::Object)
    fail("{}: TorchScript data.pkl holds a {}, expected a module object", source, kind_name(root.kind));
  WeightMap weights(source, "torchscript");
  weights.metadata["torchscript.class"] = root.text;
  collect_module(root, "", 0, source, weights);
  return weights;
}

std::string archive_folder(const ZipArchive& zip) {
  if (zip.entries().empty()) fail("{}: empty zip archive", zip.source());
  const std::string& first = zip.entries().front().name;
  const std::size_t slash = first.find('/');
  if (slash == std::string::npos)
    fail("{}: not a torch archive: first entry '{}' is not inside a folder", zip.source(), first);
  return first.substr(0, slash);
}

void check_byte_order(const ZipArchive& zip, const std::string& folder) {
  const ZipEntry* entry = zip.find(folder + "/byteorder");
  if (entry == nullptr) return;  // torch < 2.1 wrote no byteorder record: little-endian
  const EntryData data = zip.read(*entry);
  const std::string_view order(reinterpret_cast<const char*>(data.bytes.data()), data.bytes.size());
  if (order != "little") fail("{}: byte order '{}' is not supported (only little-endian)", zip.source(), order);
}

bool is_torchscript(const ZipArchive& zip, const std::string& folder) {
  const std::string code = folder + "/code/";
  return zip.find(folder + "/constants.pkl") != nullptr ||
         std::any_of(zip.entries().begin(), zip.entries().end(),
                     [&](const ZipEntry& entry) { return entry.name.starts_with(code); });
}

// Legacy magic pickle: PROTO n, optional FRAME, LONG1 of 10 bytes = 0x1950a86a20f9469cfc6c, STOP.
std::optional<std::size_t> legacy_magic_size(std::span<const std::byte> bytes) {
  constexpr std::array<std::uint8_t, 13> kMagic = {0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9,
                                                   0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e};
  auto byte = [&](std::size_t i) { return i < bytes.size() ? std::to_integer<std::uint8_t>(bytes[i]) : -1; };
  if (byte(0) != 0x80 || byte(1) < 2 || byte(1) > 5) return std::nullopt;
  std::size_t position = 2;
  if (byte(position) == 0x95) position += 9;  // FRAME + u64 length
  for (std::uint8_t expected : kMagic)
    if (byte(position++) != expected) return std::nullopt;
  return position;
}

}  // namespace

bool has_legacy_torch_magic(std::span<const std::byte> bytes) { return legacy_magic_size(bytes).has_value(); }

WeightMap load_torch_archive(const std::shared_ptr<const MappedFile>& file) {
  const ZipArchive zip(file);
  const std::string folder = archive_folder(zip);
  check_byte_order(zip, folder);
  const ZipEntry* pickle_entry = zip.find(folder + "/data.pkl");
  if (pickle_entry == nullptr)
    fail("{}: not a torch checkpoint: no '{}/data.pkl' in the archive", file->name(), folder);
  const EntryData pickle = zip.read(*pickle_entry);
  const std::string pickle_source = fmt::format("{} ({})", file->name(), pickle_entry->name);

  StorageTable storages(pickle_source);
  auto load_storage = [&](const Value& pid) {
    auto [storage, created] = storages.get(parse_storage_id(pid, pickle_source));
    if (!created) return storage;
    const std::string entry_name = folder + "/data/" + storage->key;
    const ZipEntry* entry = zip.find(entry_name);
    if (entry == nullptr) fail("{}: storage '{}' is missing: no entry '{}'", file->name(), storage->key, entry_name);
    const EntryData data = zip.read(*entry);
    const std::size_t needed = storage_byte_size(*storage, file->name());
    if (data.bytes.size() < needed)
      fail("{}: storage '{}' holds {} bytes but {} elements of {} need {}", file->name(), storage->key,
           data.bytes.size(), storage->numel, dtype_name(storage->dtype), needed);
    storage->bytes = data.bytes.first(needed);
    storage->keepalive = data.keepalive;
    return storage;
  };
  Unpickler unpickler(pickle.bytes, pickle_source, load_storage);
  const Value& root = unpickler.load();
  if (is_torchscript(zip, folder)) return collect_torchscript(root, file->name());
  return collect_state_dict(root, file->name(), "torch-zip");
}

WeightMap load_torch_legacy(const std::shared_ptr<const MappedFile>& file) {
  const std::span<const std::byte> bytes = file->bytes();
  const std::optional<std::size_t> magic = legacy_magic_size(bytes);
  if (!magic) fail("{}: not a legacy torch file: magic number missing", file->name());
  std::size_t position = *magic;
  auto next_pickle = [&](std::string_view what, Unpickler::PersistentLoad load = {}) {
    auto unpickler = std::make_unique<Unpickler>(
        bytes.subspan(position), fmt::format("{} ({} at byte {})", file->name(), what, position), std::move(load));
    unpickler->load();
    position += unpickler->bytes_consumed();
    return unpickler;
  };

  const auto protocol = next_pickle("protocol version");
  if (protocol->load().kind != Kind::Int || protocol->load().integer != kLegacyProtocolVersion)
    fail("{}: unsupported legacy protocol version (expected {})", file->name(), kLegacyProtocolVersion);
  const auto sys_info = next_pickle("sys info");
  const Value* little_endian = sys_info->load().find("little_endian");
  if (little_endian == nullptr || little_endian->kind != Kind::Bool || !little_endian->boolean)
    fail("{}: written on a big-endian machine (or sys info missing): not supported", file->name());

  StorageTable storages(file->name());
  const auto main = next_pickle(
      "main pickle", [&](const Value& pid) { return storages.get(parse_storage_id(pid, file->name())).first; });
  const auto keys = next_pickle("storage keys");
  if (keys->load().kind != Kind::List) fail("{}: storage key list missing after the main pickle", file->name());

  // Each storage follows as a little-endian u64 element count and its raw bytes, in key order.
  ByteReader data(bytes, file->name());
  data.seek(position, "storage data");
  for (const Value* key : keys->load().items) {
    if (key->kind != Kind::String) fail("{}: storage key list holds a {}", file->name(), kind_name(key->kind));
    const std::shared_ptr<Storage> storage = storages.find(key->text);
    if (storage == nullptr) fail("{}: storage '{}' has data but no tensor uses it", file->name(), key->text);
    const std::string what = "storage '" + key->text + "'";
    const std::uint64_t numel = data.u64(what + " element count");
    if (numel != static_cast<std::uint64_t>(storage->numel))
      fail("{}: {} has {} elements in the data but {} in the pickle", file->name(), what, numel, storage->numel);
    storage->bytes = data.take(storage_byte_size(*storage, file->name()), what);
    storage->keepalive = file;
  }
  return collect_state_dict(main->load(), file->name(), "torch-legacy");
}

}  // namespace clipdissect::io
