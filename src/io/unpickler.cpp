#include "io/unpickler.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <optional>

#include "clipdissect/error.h"

namespace clipdissect::io {

namespace {

// Pickle opcodes (Lib/pickletools.py) that torch.save, legacy torch and TorchScript archives use.
enum Opcode : std::uint8_t {
  kMark = '(',
  kStop = '.',
  kPop = '0',
  kPopMark = '1',
  kDup = '2',
  kBinInt = 'J',
  kBinInt1 = 'K',
  kBinInt2 = 'M',
  kNone = 'N',
  kBinPersId = 'Q',
  kReduce = 'R',
  kBinString = 'T',
  kShortBinString = 'U',
  kBinUnicode = 'X',
  kAppend = 'a',
  kBuild = 'b',
  kGlobal = 'c',
  kDict = 'd',
  kEmptyDict = '}',
  kAppends = 'e',
  kBinGet = 'h',
  kLongBinGet = 'j',
  kList = 'l',
  kEmptyList = ']',
  kBinPut = 'q',
  kLongBinPut = 'r',
  kSetItem = 's',
  kTuple = 't',
  kEmptyTuple = ')',
  kSetItems = 'u',
  kBinFloat = 'G',
  kBinBytes = 'B',
  kShortBinBytes = 'C',
  kProto = 0x80,
  kNewObj = 0x81,
  kTuple1 = 0x85,
  kTuple2 = 0x86,
  kTuple3 = 0x87,
  kNewTrue = 0x88,
  kNewFalse = 0x89,
  kLong1 = 0x8a,
  kLong4 = 0x8b,
  kShortBinUnicode = 0x8c,
  kBinUnicode8 = 0x8d,
  kBinBytes8 = 0x8e,
  kStackGlobal = 0x93,
  kMemoize = 0x94,
  kFrame = 0x95,
};

constexpr std::size_t kMaxGlobalLine = 1024;

struct StorageTypeName {
  std::string_view name;
  DType dtype;
};
constexpr std::array kStorageTypes = {
    StorageTypeName{"FloatStorage", DType::F32},     StorageTypeName{"HalfStorage", DType::F16},
    StorageTypeName{"BFloat16Storage", DType::BF16}, StorageTypeName{"DoubleStorage", DType::F64},
    StorageTypeName{"LongStorage", DType::I64},      StorageTypeName{"IntStorage", DType::I32},
    StorageTypeName{"ShortStorage", DType::I16},     StorageTypeName{"CharStorage", DType::I8},
    StorageTypeName{"ByteStorage", DType::U8},       StorageTypeName{"BoolStorage", DType::Bool},
};

struct AllowedGlobal {
  std::string_view qualified_name;
  Global global;
};
constexpr std::array kAllowedGlobals = {
    AllowedGlobal{"torch._utils._rebuild_tensor", Global::RebuildTensor},
    AllowedGlobal{"torch._utils._rebuild_tensor_v2", Global::RebuildTensorV2},
    AllowedGlobal{"torch._utils._rebuild_parameter", Global::RebuildParameter},
    AllowedGlobal{"collections.OrderedDict", Global::OrderedDict},
    // TorchScript archives tag typed containers with these; the value itself is the first argument.
    AllowedGlobal{"torch.jit._pickle.restore_type_tag", Global::FirstArgument},
    AllowedGlobal{"torch.jit._pickle.build_intlist", Global::FirstArgument},
    AllowedGlobal{"torch.jit._pickle.build_doublelist", Global::FirstArgument},
    AllowedGlobal{"torch.jit._pickle.build_boollist", Global::FirstArgument},
    AllowedGlobal{"torch.jit._pickle.build_tensorlist", Global::FirstArgument},
};

std::optional<DType> storage_type_dtype(std::string_view name) {
  for (const auto& entry : kStorageTypes)
    if (entry.name == name) return entry.dtype;
  return std::nullopt;
}

bool is_torchscript_module(std::string_view module) {
  return module == "__torch__" || module.starts_with("__torch__.");
}

}  // namespace

std::string_view kind_name(Kind kind) {
  constexpr std::array<std::string_view, 13> names = {"None", "bool", "int",    "float",  "str",     "bytes", "tuple",
                                                      "list", "dict", "global", "object", "storage", "tensor"};
  return names[static_cast<std::size_t>(kind)];
}

const Value* Value::find(std::string_view key) const {
  for (auto it = entries.rbegin(); it != entries.rend(); ++it)
    if (it->first->kind == Kind::String && it->first->text == key) return it->second;
  return nullptr;
}

Unpickler::Unpickler(std::span<const std::byte> data, std::string source, PersistentLoad persistent_load,
                     std::vector<std::string> plain_classes)
    : data_(data),
      source_(std::move(source)),
      persistent_load_(std::move(persistent_load)),
      plain_classes_(std::move(plain_classes)) {}

const Value& Unpickler::load() {
  if (result_ == nullptr)
    while (step()) {
    }
  return *result_;
}

void Unpickler::error(std::string_view message) const {
  fail("{}: pickle opcode at byte {}: {}", source_, opcode_position_, message);
}

std::span<const std::byte> Unpickler::take(std::size_t count, std::string_view what) {
  if (count > data_.size() - position_)
    fail("{}: truncated pickle: {} needs {} bytes at byte {} but only {} remain", source_, what, count, position_,
         data_.size() - position_);
  std::span<const std::byte> out = data_.subspan(position_, count);
  position_ += count;
  return out;
}

std::uint8_t Unpickler::u8(std::string_view what) { return std::to_integer<std::uint8_t>(take(1, what)[0]); }

template <typename T>
T Unpickler::read_le(std::string_view what) {
  T value;
  std::memcpy(&value, take(sizeof(T), what).data(), sizeof(T));
  return value;
}

std::string_view Unpickler::read_line(std::string_view what) {
  const std::size_t limit = std::min(data_.size() - position_, kMaxGlobalLine);
  const auto* begin = reinterpret_cast<const char*>(data_.data() + position_);
  const auto* newline = static_cast<const char*>(std::memchr(begin, '\n', limit));
  if (newline == nullptr) error(fmt::format("{} is not terminated by a newline within {} bytes", what, limit));
  const auto length = static_cast<std::size_t>(newline - begin);
  position_ += length + 1;
  return {begin, length};
}

Value* Unpickler::make(Kind kind) {
  if (arena_.size() >= kMaxValues) error(fmt::format("more than {} values: refusing to continue", kMaxValues));
  Value& value = arena_.emplace_back();
  value.kind = kind;
  return &value;
}

Value* Unpickler::make_int(std::int64_t value) {
  Value* out = make(Kind::Int);
  out->integer = value;
  return out;
}

Value* Unpickler::make_text(Kind kind, std::string_view text) {
  Value* out = make(kind);
  out->text = text;
  return out;
}

void Unpickler::push(Value* value) { stack_.push_back(value); }

Value* Unpickler::pop() {
  const std::size_t floor = marks_.empty() ? 0 : marks_.back();
  if (stack_.size() <= floor) error("stack underflow");
  Value* value = stack_.back();
  stack_.pop_back();
  return value;
}

Value* Unpickler::top() {
  const std::size_t floor = marks_.empty() ? 0 : marks_.back();
  if (stack_.size() <= floor) error("stack underflow");
  return stack_.back();
}

std::vector<Value*> Unpickler::pop_to_mark() {
  if (marks_.empty()) error("no MARK on the stack");
  const std::size_t mark = marks_.back();
  marks_.pop_back();
  std::vector<Value*> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
  stack_.resize(mark);
  return items;
}

void Unpickler::memo_put(std::size_t index) {
  if (memo_.size() >= kMaxMemo && !memo_.contains(index)) error(fmt::format("memo grows beyond {} entries", kMaxMemo));
  memo_[index] = top();
}

void Unpickler::memo_get(std::size_t index) {
  auto it = memo_.find(index);
  if (it == memo_.end()) error(fmt::format("memo key {} was never stored", index));
  push(it->second);
}

void Unpickler::push_global(std::string_view module, std::string_view name) {
  const std::string qualified = fmt::format("{}.{}", module, name);
  Value* global = make_text(Kind::Global, qualified);
  if (module == "torch" && name.ends_with("Storage")) {
    const std::optional<DType> dtype = storage_type_dtype(name);
    if (!dtype) error(fmt::format("unsupported tensor dtype: storage type {}", qualified));
    global->global = Global::StorageType;
    global->storage_dtype = *dtype;
  } else if (is_torchscript_module(module) ||
             std::find(plain_classes_.begin(), plain_classes_.end(), qualified) != plain_classes_.end()) {
    global->global = Global::TorchScriptClass;
  } else {
    auto allowed = std::find_if(kAllowedGlobals.begin(), kAllowedGlobals.end(),
                                [&](const AllowedGlobal& entry) { return entry.qualified_name == qualified; });
    if (allowed == kAllowedGlobals.end())
      error(
          fmt::format("forbidden global '{}': only torch tensor and storage rebuilders, "
                      "collections.OrderedDict and TorchScript classes may be loaded",
                      qualified));
    global->global = allowed->global;
  }
  push(global);
}

// LONG1/LONG4: little-endian two's complement of `size` bytes.
void Unpickler::push_long(std::size_t size) {
  if (size > sizeof(std::int64_t)) error(fmt::format("integer of {} bytes does not fit in 64 bits", size));
  std::span<const std::byte> bytes = take(size, "LONG bytes");
  std::uint64_t value = 0;
  for (std::size_t i = 0; i < size; ++i) value |= std::to_integer<std::uint64_t>(bytes[i]) << (8 * i);
  if (size > 0 && size < sizeof(value) && (std::to_integer<std::uint8_t>(bytes[size - 1]) & 0x80))
    value |= ~std::uint64_t{0} << (8 * size);  // sign-extend
  push(make_int(static_cast<std::int64_t>(value)));
}

void Unpickler::set_items(Value& dict, const std::vector<Value*>& pairs) {
  if (dict.kind != Kind::Dict) error(fmt::format("SETITEM(S) on a {}, expected a dict", kind_name(dict.kind)));
  if (pairs.size() % 2 != 0) error("SETITEMS with an odd number of stack items");
  // Repeated keys are kept (torch never writes them); find() returns the last, as a Python dict would.
  for (std::size_t i = 0; i < pairs.size(); i += 2) dict.entries.emplace_back(pairs[i], pairs[i + 1]);
}

void Unpickler::append_items(Value& list, const std::vector<Value*>& items) {
  if (list.kind != Kind::List) error(fmt::format("APPEND(S) on a {}, expected a list", kind_name(list.kind)));
  list.items.insert(list.items.end(), items.begin(), items.end());
}

Value* Unpickler::rebuild_tensor(const std::vector<Value*>& arguments, std::string_view function) {
  if (arguments.size() < 4) error(fmt::format("{} needs at least 4 arguments, got {}", function, arguments.size()));
  const Value& storage = *arguments[0];
  const Value& offset = *arguments[1];
  if (storage.kind != Kind::Storage)
    error(fmt::format("{}: argument 1 is a {}, expected a storage", function, kind_name(storage.kind)));
  if (offset.kind != Kind::Int) error(fmt::format("{}: storage offset is a {}", function, kind_name(offset.kind)));
  auto to_shape = [&](const Value& value, std::string_view what) {
    if (value.kind != Kind::Tuple && value.kind != Kind::List)
      error(fmt::format("{}: {} is a {}, expected a tuple of ints", function, what, kind_name(value.kind)));
    Shape shape;
    for (const Value* dim : value.items) {
      if (dim->kind != Kind::Int) error(fmt::format("{}: {} holds a {}", function, what, kind_name(dim->kind)));
      shape.push_back(dim->integer);
    }
    return shape;
  };
  Value* tensor = make(Kind::Tensor);
  tensor->tensor =
      TensorView{storage.storage, offset.integer, to_shape(*arguments[2], "size"), to_shape(*arguments[3], "stride")};
  if (tensor->tensor.size.size() != tensor->tensor.stride.size())
    error(fmt::format("{}: size has {} dimensions but stride has {}", function, tensor->tensor.size.size(),
                      tensor->tensor.stride.size()));
  return tensor;
}

void Unpickler::reduce(Value& callable, Value& arguments) {
  if (callable.kind != Kind::Global) error(fmt::format("REDUCE on a {}, expected a global", kind_name(callable.kind)));
  if (arguments.kind != Kind::Tuple) error(fmt::format("REDUCE arguments are a {}", kind_name(arguments.kind)));
  const std::vector<Value*>& args = arguments.items;
  switch (callable.global) {
    case Global::RebuildTensor:
    case Global::RebuildTensorV2:
      push(rebuild_tensor(args, callable.text));
      return;
    case Global::RebuildParameter:
      if (args.empty() || args[0]->kind != Kind::Tensor) error("_rebuild_parameter without a tensor argument");
      push(args[0]);
      return;
    case Global::FirstArgument:
      if (args.empty()) error(fmt::format("{} called without arguments", callable.text));
      push(args[0]);
      return;
    case Global::OrderedDict:
    case Global::TorchScriptClass:
      new_object(callable, arguments);
      return;
    case Global::StorageType:
      break;
  }
  error(fmt::format("{} cannot be called", callable.text));
}

void Unpickler::new_object(Value& callable, Value& arguments) {
  if (callable.kind != Kind::Global) error(fmt::format("NEWOBJ on a {}, expected a class", kind_name(callable.kind)));
  if (arguments.kind != Kind::Tuple) error(fmt::format("NEWOBJ arguments are a {}", kind_name(arguments.kind)));
  if (callable.global == Global::OrderedDict) {
    if (!arguments.items.empty()) error("collections.OrderedDict called with arguments");
    push(make(Kind::Dict));
  } else if (callable.global == Global::TorchScriptClass) {
    Value* object = make_text(Kind::Object, callable.text);
    object->items = arguments.items;
    push(object);
  } else {
    error(fmt::format("{} is not a class", callable.text));
  }
}

void Unpickler::build(Value& target, Value* state) {
  if (target.kind == Kind::Object) {
    target.state = state;
    return;
  }
  // A dict's BUILD state holds an OrderedDict's instance attributes (state_dict()._metadata): not weights.
  if (target.kind == Kind::Dict) return;
  error(fmt::format("BUILD on a {}, expected an object", kind_name(target.kind)));
}

void Unpickler::persistent_id(Value& pid) {
  if (!persistent_load_) error("persistent id in a pickle that may not reference storages");
  Value* storage = make(Kind::Storage);
  storage->storage = persistent_load_(pid);
  push(storage);
}

// Executes one opcode; returns false after STOP.
bool Unpickler::step() {
  opcode_position_ = position_;
  const std::uint8_t opcode = u8("opcode");
  switch (opcode) {
    case kProto: {
      const std::uint8_t protocol = u8("protocol");
      if (protocol < 2 || protocol > 5) error(fmt::format("unsupported pickle protocol {}", protocol));
      break;
    }
    case kFrame: {
      const auto frame = read_le<std::uint64_t>("frame size");
      if (frame > data_.size() - position_) error(fmt::format("frame of {} bytes runs past the end", frame));
      break;
    }
    case kStop:
      result_ = pop();
      return false;
    case kMark:
      if (marks_.size() >= kMaxMarkDepth) error(fmt::format("MARKs nested deeper than {}", kMaxMarkDepth));
      marks_.push_back(stack_.size());
      break;
    case kPop:
      pop();
      break;
    case kPopMark:
      pop_to_mark();
      break;
    case kDup:
      push(top());
      break;
    case kNone:
      push(make(Kind::None));
      break;
    case kNewTrue:
    case kNewFalse:
      push(make(Kind::Bool));
      stack_.back()->boolean = opcode == kNewTrue;
      break;
    case kBinInt:
      push(make_int(read_le<std::int32_t>("BININT")));
      break;
    case kBinInt1:
      push(make_int(u8("BININT1")));
      break;
    case kBinInt2:
      push(make_int(read_le<std::uint16_t>("BININT2")));
      break;
    case kLong1:
      push_long(u8("LONG1 size"));
      break;
    case kLong4: {
      const auto size = read_le<std::int32_t>("LONG4 size");
      if (size < 0) error("negative LONG4 size");
      push_long(static_cast<std::size_t>(size));
      break;
    }
    case kBinFloat: {
      const auto bits = __builtin_bswap64(read_le<std::uint64_t>("BINFLOAT"));  // stored big-endian
      push(make(Kind::Float));
      stack_.back()->real = std::bit_cast<double>(bits);
      break;
    }
    case kShortBinUnicode:
    case kShortBinString:
    case kShortBinBytes: {
      const Kind kind = opcode == kShortBinBytes ? Kind::Bytes : Kind::String;
      const std::size_t size = u8("string size");
      push(make_text(kind, {reinterpret_cast<const char*>(take(size, "string").data()), size}));
      break;
    }
    case kBinUnicode:
    case kBinString:
    case kBinBytes: {
      const Kind kind = opcode == kBinBytes ? Kind::Bytes : Kind::String;
      const auto size = read_le<std::uint32_t>("string size");
      if (opcode == kBinString && size > 0x7fffffffu) error("negative BINSTRING size");
      push(make_text(kind, {reinterpret_cast<const char*>(take(size, "string").data()), size}));
      break;
    }
    case kBinUnicode8:
    case kBinBytes8: {
      const Kind kind = opcode == kBinBytes8 ? Kind::Bytes : Kind::String;
      const auto size = read_le<std::uint64_t>("string size");
      push(make_text(kind, {reinterpret_cast<const char*>(take(size, "string").data()), size}));
      break;
    }
    case kEmptyDict:
      push(make(Kind::Dict));
      break;
    case kEmptyList:
      push(make(Kind::List));
      break;
    case kEmptyTuple:
      push(make(Kind::Tuple));
      break;
    case kDict: {
      std::vector<Value*> pairs = pop_to_mark();
      Value* dict = make(Kind::Dict);
      set_items(*dict, pairs);
      push(dict);
      break;
    }
    case kList:
    case kTuple: {
      std::vector<Value*> items = pop_to_mark();
      push(make(opcode == kList ? Kind::List : Kind::Tuple));
      stack_.back()->items = std::move(items);
      break;
    }
    case kTuple1:
    case kTuple2:
    case kTuple3: {
      std::vector<Value*> items(static_cast<std::size_t>(opcode - kTuple1 + 1));
      for (auto it = items.rbegin(); it != items.rend(); ++it) *it = pop();
      push(make(Kind::Tuple));
      stack_.back()->items = std::move(items);
      break;
    }
    case kSetItem: {
      Value* value = pop();
      Value* key = pop();
      set_items(*top(), {key, value});
      break;
    }
    case kSetItems: {
      std::vector<Value*> pairs = pop_to_mark();
      set_items(*top(), pairs);
      break;
    }
    case kAppend: {
      Value* item = pop();
      append_items(*top(), {item});
      break;
    }
    case kAppends: {
      std::vector<Value*> items = pop_to_mark();
      append_items(*top(), items);
      break;
    }
    case kBinPut:
      memo_put(u8("BINPUT index"));
      break;
    case kLongBinPut:
      memo_put(read_le<std::uint32_t>("LONG_BINPUT index"));
      break;
    case kMemoize:
      memo_put(memo_.size());
      break;
    case kBinGet:
      memo_get(u8("BINGET index"));
      break;
    case kLongBinGet:
      memo_get(read_le<std::uint32_t>("LONG_BINGET index"));
      break;
    case kGlobal: {
      const std::string module(read_line("GLOBAL module"));
      push_global(module, read_line("GLOBAL name"));
      break;
    }
    case kStackGlobal: {
      Value* name = pop();
      Value* module = pop();
      if (module->kind != Kind::String || name->kind != Kind::String) error("STACK_GLOBAL operands are not strings");
      push_global(module->text, name->text);
      break;
    }
    case kReduce: {
      Value* arguments = pop();
      reduce(*pop(), *arguments);
      break;
    }
    case kNewObj: {
      Value* arguments = pop();
      new_object(*pop(), *arguments);
      break;
    }
    case kBuild: {
      Value* state = pop();
      build(*top(), state);
      break;
    }
    case kBinPersId:
      persistent_id(*pop());
      break;
    default:
      error(fmt::format("unknown or unsupported pickle opcode 0x{:02x}", opcode));
  }
  return true;
}

}  // namespace clipdissect::io
