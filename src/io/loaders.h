// Format-specific loaders behind load_weights and the helpers they share. Private to src/io (and
// the tests, which feed in-memory files through load_weights(MappedFile)).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "clipdissect/weights.h"
#include "io/mapped_file.h"

namespace clipdissect::io {

// Sniffs the format and loads; load_weights(path) is this plus opening the file.
WeightMap load_weights(const std::shared_ptr<const MappedFile>& file);

WeightMap load_safetensors(const std::shared_ptr<const MappedFile>& file);
// A zip written by torch.save ("torch-zip") or torch.jit.save ("torchscript").
WeightMap load_torch_archive(const std::shared_ptr<const MappedFile>& file);
// The pre-1.6 torch.save format: magic number, protocol, sys info, pickle, storage keys, raw storages.
WeightMap load_torch_legacy(const std::shared_ptr<const MappedFile>& file);
bool has_legacy_torch_magic(std::span<const std::byte> bytes);

// Number of elements of `shape`, or nullopt when a dimension is negative or the product overflows.
std::optional<std::int64_t> checked_numel(const Shape& shape);
// Byte size of `numel` elements of `dtype`, or nullopt on overflow.
std::optional<std::size_t> checked_byte_size(std::int64_t numel, DType dtype);

// A HostTensor over `bytes`; copies them into an owned buffer when they are not aligned to the
// element size, so consumers may read them as typed arrays.
HostTensor make_host_tensor(std::string name, DType dtype, Shape shape, std::span<const std::byte> bytes,
                            std::shared_ptr<const void> keepalive);

}  // namespace clipdissect::io
