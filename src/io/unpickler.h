// A restricted unpickler for the pickles inside torch checkpoints. It executes nothing: GLOBAL may
// only name an allow-listed torch helper, a torch storage type, collections.OrderedDict or a
// TorchScript class (`__torch__.*`, kept as a plain object); everything else is an error naming the
// global. Values live in an arena owned by the Unpickler (containers hold non-owning pointers), so
// shared and even cyclic references are safe to build and to destroy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "clipdissect/dtype.h"
#include "clipdissect/weights.h"

namespace clipdissect::io {

// One torch storage: `numel` elements of `dtype`. The loader fills `bytes` (for legacy files only
// after the whole pickle has been read, because the data follows it).
struct Storage {
  DType dtype = DType::F32;
  std::string key;
  std::int64_t numel = 0;
  std::span<const std::byte> bytes;
  std::shared_ptr<const void> keepalive;
};

// A tensor as torch._utils._rebuild_tensor_v2 describes it: a strided window into a storage.
struct TensorView {
  std::shared_ptr<Storage> storage;
  std::int64_t offset = 0;  // in elements
  Shape size;
  Shape stride;
};

// Allow-listed globals.
enum class Global : std::uint8_t {
  RebuildTensor,     // torch._utils._rebuild_tensor(storage, offset, size, stride)
  RebuildTensorV2,   // torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, ...)
  RebuildParameter,  // torch._utils._rebuild_parameter(tensor, requires_grad, hooks)
  StorageType,       // torch.FloatStorage etc., only used inside persistent ids
  OrderedDict,       // collections.OrderedDict
  TorchScriptClass,  // __torch__.* and the caller's plain classes: instances become plain objects
  FirstArgument,     // torch.jit._pickle.restore_type_tag / build_*list: return their first argument
};

enum class Kind : std::uint8_t {
  None,
  Bool,
  Int,
  Float,
  String,
  Bytes,
  Tuple,
  List,
  Dict,
  Global,
  Object,
  Storage,
  Tensor
};
std::string_view kind_name(Kind kind);

struct Value {
  Kind kind = Kind::None;
  bool boolean = false;
  std::int64_t integer = 0;
  double real = 0;
  std::string text;                                // String, Bytes; Global, Object: "module.name"
  std::vector<Value*> items;                       // Tuple, List; Object: constructor arguments
  std::vector<std::pair<Value*, Value*>> entries;  // Dict, in insertion order
  Value* state = nullptr;                          // Object: the state given by BUILD
  Global global = Global::OrderedDict;             // Global
  DType storage_dtype = DType::F32;                // Global::StorageType
  std::shared_ptr<Storage> storage;                // Storage
  TensorView tensor;                               // Tensor

  // Dict entry under a string key, or nullptr.
  const Value* find(std::string_view key) const;
};

class Unpickler {
 public:
  // Limits, checked before anything is allocated.
  static constexpr std::size_t kMaxValues = std::size_t{1} << 20;
  static constexpr std::size_t kMaxMemo = std::size_t{1} << 20;
  static constexpr std::size_t kMaxMarkDepth = 1000;

  // Turns a persistent id (the tuple torch writes for each storage) into a storage.
  using PersistentLoad = std::function<std::shared_ptr<Storage>(const Value& persistent_id)>;

  // `source` names the file (and entry) in error messages. `plain_classes` are further globals (fully
  // qualified) that load as plain objects, never called: e.g. numpy's array reconstructors for CIFAR-100.
  Unpickler(std::span<const std::byte> data, std::string source, PersistentLoad persistent_load = {},
            std::vector<std::string> plain_classes = {});

  // Runs the pickle up to STOP; the result lives as long as this Unpickler.
  const Value& load();
  // Bytes read up to and including STOP (legacy files hold several pickles back to back).
  std::size_t bytes_consumed() const { return position_; }

 private:
  bool step();
  Value* make(Kind kind);
  Value* make_int(std::int64_t value);
  Value* make_text(Kind kind, std::string_view text);
  void push(Value* value);
  Value* pop();
  Value* top();
  std::vector<Value*> pop_to_mark();
  void memo_put(std::size_t index);
  void memo_get(std::size_t index);

  void push_global(std::string_view module, std::string_view name);
  void push_long(std::size_t size);
  void set_items(Value& dict, const std::vector<Value*>& pairs);
  void append_items(Value& list, const std::vector<Value*>& items);
  void reduce(Value& callable, Value& arguments);
  void new_object(Value& callable, Value& arguments);
  void build(Value& target, Value* state);
  void persistent_id(Value& pid);
  Value* rebuild_tensor(const std::vector<Value*>& arguments, std::string_view function);

  std::span<const std::byte> take(std::size_t count, std::string_view what);
  std::uint8_t u8(std::string_view what);
  template <typename T>
  T read_le(std::string_view what);
  std::string_view read_line(std::string_view what);
  [[noreturn]] void error(std::string_view message) const;

  std::span<const std::byte> data_;
  std::string source_;
  PersistentLoad persistent_load_;
  std::vector<std::string> plain_classes_;
  std::size_t position_ = 0;
  std::size_t opcode_position_ = 0;
  std::deque<Value> arena_;
  std::vector<Value*> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::size_t, Value*> memo_;
  Value* result_ = nullptr;
};

}  // namespace clipdissect::io
