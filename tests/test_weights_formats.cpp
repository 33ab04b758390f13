// Synthetic checkpoints built at run time: torch zips, legacy files, TorchScript-like archives,
// safetensors round trips, and the restricted unpickler's refusals.
#include <cmath>
#include <numeric>

#include <gtest/gtest.h>

#include "clipdissect/weights.h"
#include "io/loaders.h"
#include "io/unpickler.h"
#include "weights_test_util.h"

namespace clipdissect {
namespace {

using namespace clipdissect::testing;

WeightMap load_bytes(const Bytes& bytes, const std::string& name = "mem.pt") {
  return io::load_weights(io::MappedFile::from_bytes(name, bytes));
}

std::vector<float> iota_floats(std::size_t count) {
  std::vector<float> values(count);
  std::iota(values.begin(), values.end(), 0.0f);
  return values;
}

// OrderedDict([(name, tensor), ...]) as torch.save(state_dict) writes it; `tensors` writes the values.
PickleWriter state_dict_pickle(const std::function<void(PickleWriter&)>& tensors) {
  PickleWriter pickle;
  pickle.global("collections", "OrderedDict").empty_tuple().reduce().mark();
  tensors(pickle);
  pickle.setitems();
  return pickle;
}

TEST(WeightsTorchZip, SharedStorageOffsetsAndTranspose) {
  // Storage "0" holds 0..11: "a" = elements 0..5 as [2, 3], "b" = elements 6..11 as [3, 2] read
  // transposed (stride [1, 3] over a [2, 3] block), "scalar" = element 11.
  const Bytes pickle = state_dict_pickle([](PickleWriter& p) {
                         p.str("a").tensor("FloatStorage", "0", 12, 0, {2, 3}, {3, 1});
                         p.str("b").tensor("FloatStorage", "0", 12, 6, {3, 2}, {1, 3});
                         p.str("scalar").tensor("FloatStorage", "0", 12, 11, {}, {});
                         p.str("step").integer(7);  // not a tensor: skipped
                         // A size-1 dimension's stride is never applied, whatever its value.
                         p.str("c").tensor("FloatStorage", "0", 12, 6, {3, 1, 2}, {1, INT64_MAX, 3});
                       })
                           .stop()
                           .bytes();
  const WeightMap weights = load_bytes(make_torch_zip(pickle, {{"0", as_bytes_of(iota_floats(12))}}));
  EXPECT_EQ(weights.format(), "torch-zip");
  ASSERT_EQ(weights.size(), 4u);
  EXPECT_EQ(to_f32(weights.at("a")), (std::vector<float>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(to_f32(weights.at("c")), (std::vector<float>{6, 9, 7, 10, 8, 11}));
  EXPECT_EQ(weights.at("b").shape, (Shape{3, 2}));
  EXPECT_EQ(to_f32(weights.at("b")), (std::vector<float>{6, 9, 7, 10, 8, 11}));
  EXPECT_EQ(to_f32(weights.at("scalar")), std::vector<float>{11});
  EXPECT_EQ(weights.tensors()[0].name, "a");
}

// What torch 2.x writes when a model trained on a GPU is saved: storages located on 'cuda:0', a byteorder record,
// and records this reader has no use for (.format_version, .storage_alignment, .data/serialization_id). The
// tensors load onto the host all the same; a big-endian archive is refused by name.
TEST(WeightsTorchZip, SavedFromAGpuByNewerTorch) {
  const Bytes pickle = state_dict_pickle([](PickleWriter& p) {
                         p.storage_location("cuda:0");
                         p.str("w").tensor("FloatStorage", "0", 6, 0, {2, 3}, {3, 1});
                         p.storage_location("cuda:1");
                         p.str("b").tensor("FloatStorage", "1", 2, 0, {2}, {1});
                       })
                           .stop()
                           .bytes();
  const auto text = [](std::string_view t) { return Bytes(reinterpret_cast<const std::byte*>(t.data()),
                                                          reinterpret_cast<const std::byte*>(t.data()) + t.size()); };
  const auto archive = [&](std::string_view byte_order) {
    return make_torch_zip(pickle, {{"0", as_bytes_of(iota_floats(6))}, {"1", as_bytes_of(std::vector<float>{7, 8})}},
                          {{"archive/byteorder", text(byte_order)},
                           {"archive/.format_version", text("1")},
                           {"archive/.storage_alignment", text("64")},
                           {"archive/.data/serialization_id", text("0123456789012345678901234567890123456789")}});
  };
  const WeightMap weights = load_bytes(archive("little"));
  ASSERT_EQ(weights.size(), 2u);
  EXPECT_EQ(to_f32(weights.at("w")), iota_floats(6));
  EXPECT_EQ(to_f32(weights.at("b")), (std::vector<float>{7, 8}));
  expect_error([&] { load_bytes(archive("big"), "gpu-trained.pt"); }, {"gpu-trained.pt", "byte order 'big'"});
}

TEST(WeightsTorchZip, DeflatedEntriesAndZip64Records) {
  const Bytes pickle =
      state_dict_pickle([](PickleWriter& p) { p.str("w").tensor("DoubleStorage", "7", 4, 0, {4}, {1}); })
          .stop()
          .bytes();
  const std::vector<double> values = {1.5, -2.0, 1e300, 0.25};
  for (bool deflate : {false, true})
    for (bool zip64 : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "deflate " << deflate << " zip64 " << zip64);
      const WeightMap weights = load_bytes(make_torch_zip(pickle, {{"7", as_bytes_of(values)}}, {}, deflate, zip64));
      EXPECT_EQ(weights.at("w").dtype, DType::F64);
      EXPECT_EQ(to_f32(weights.at("w")), (std::vector<float>{1.5f, -2.0f, INFINITY, 0.25f}));
    }
}

TEST(WeightsTorchZip, UnwrapsModelAndStripsModulePrefix) {
  PickleWriter pickle;
  pickle.empty_dict().mark().str("epoch").integer(3).str("model");
  pickle.empty_dict().mark();
  pickle.str("module.x").tensor("LongStorage", "0", 2, 0, {2}, {1});
  pickle.str("module.y").tensor("LongStorage", "0", 2, 1, {1}, {1});
  pickle.setitems().setitems().stop();
  const WeightMap weights =
      load_bytes(make_torch_zip(pickle.bytes(), {{"0", as_bytes_of(std::vector<std::int64_t>{5, -6})}}));
  ASSERT_EQ(weights.size(), 2u);
  EXPECT_EQ(to_f32(weights.at("x")), (std::vector<float>{5, -6}));
  EXPECT_EQ(to_f32(weights.at("y")), std::vector<float>{-6});
}

TEST(WeightsTorchZip, KeepsModulePrefixUnlessEveryNameHasIt) {
  const Bytes pickle = state_dict_pickle([](PickleWriter& p) {
                         p.str("module.x").tensor("ByteStorage", "0", 3, 0, {1}, {1});
                         p.str("y").tensor("ByteStorage", "0", 3, 1, {2}, {1});
                       })
                           .stop()
                           .bytes();
  const WeightMap weights = load_bytes(make_torch_zip(pickle, {{"0", {std::byte{1}, std::byte{2}, std::byte{3}}}}));
  EXPECT_TRUE(weights.contains("module.x"));
  EXPECT_EQ(to_f32(weights.at("y")), (std::vector<float>{2, 3}));
}

TEST(WeightsTorchZip, StateDictMetadataAttributeIsIgnored) {
  // torch.save(model.state_dict()) pickles the OrderedDict's _metadata attribute with BUILD.
  PickleWriter pickle =
      state_dict_pickle([](PickleWriter& p) { p.str("w").tensor("HalfStorage", "0", 1, 0, {1}, {1}); });
  pickle.empty_dict().str("_metadata").empty_dict().setitem().build().stop();
  const WeightMap weights =
      load_bytes(make_torch_zip(pickle.bytes(), {{"0", as_bytes_of(std::vector<std::uint16_t>{0x3c00})}}));
  EXPECT_EQ(to_f32(weights.at("w")), std::vector<float>{1.0f});
}

TEST(WeightsTorchZip, OtherAllowedRebuilders) {
  PickleWriter p;
  // restore_type_tag(dict, type) as TorchScript tags typed containers; the dict itself is used.
  p.global("torch.jit._pickle", "restore_type_tag").mark().empty_dict().mark();
  // _rebuild_parameter(_rebuild_tensor_v2(...), requires_grad, hooks)
  p.str("param").global("torch._utils", "_rebuild_parameter").mark();
  p.tensor("IntStorage", "0", 3, 1, {2}, {1}).boolean(true).global("collections", "OrderedDict");
  p.empty_tuple().reduce().tuple().reduce();
  // _rebuild_tensor(storage, offset, size, stride) of torch < 0.4
  p.str("old").global("torch._utils", "_rebuild_tensor").mark();
  p.storage("IntStorage", "0", 3).integer(0).ints({1}).ints({1}).tuple().reduce();
  p.setitems().str("Dict[str, Tensor]").tuple().reduce().stop();
  const WeightMap weights =
      load_bytes(make_torch_zip(p.bytes(), {{"0", as_bytes_of(std::vector<std::int32_t>{7, 8, 9})}}));
  EXPECT_EQ(to_f32(weights.at("param")), (std::vector<float>{8, 9}));
  EXPECT_EQ(to_f32(weights.at("old")), std::vector<float>{7});
}

TEST(WeightsTorchZip, StorageErrorsNameFileAndTensor) {
  auto zip_with = [](std::int64_t offset, std::vector<std::int64_t> size, std::int64_t numel, std::size_t bytes) {
    const Bytes pickle =
        state_dict_pickle([&](PickleWriter& p) { p.str("w").tensor("FloatStorage", "0", numel, offset, size, {1}); })
            .stop()
            .bytes();
    return make_torch_zip(pickle, {{"0", Bytes(bytes)}});
  };
  expect_error([&] { load_bytes(zip_with(2, {3}, 4, 16), "off.pt"); }, {"off.pt", "'w'", "reaches element 4"});
  expect_error([&] { load_bytes(zip_with(-1, {3}, 4, 16), "neg.pt"); }, {"neg.pt", "'w'", "offset"});
  expect_error([&] { load_bytes(zip_with(0, {4}, 4, 8), "short.pt"); }, {"short.pt", "storage '0'", "holds 8 bytes"});
  const Bytes pickle =
      state_dict_pickle([](PickleWriter& p) { p.str("w").tensor("FloatStorage", "9", 1, 0, {1}, {1}); }).stop().bytes();
  expect_error([&] { load_bytes(make_torch_zip(pickle, {}), "missing.pt"); }, {"missing.pt", "archive/data/9"});
}

TEST(WeightsTorchZip, UnsupportedDtypeIsNamed) {
  const Bytes pickle =
      state_dict_pickle([](PickleWriter& p) { p.str("w").tensor("ComplexFloatStorage", "0", 1, 0, {1}, {1}); })
          .stop()
          .bytes();
  expect_error(
      [&] {
        load_bytes(make_torch_zip(pickle, {{"0", Bytes(8)}}), "c.pt");
      },
      {"c.pt", "unsupported tensor dtype", "torch.ComplexFloatStorage"});
}

TEST(WeightsTorchZip, FolderFallsBackToPytorchModelBin) {
  TempDir dir;
  const Bytes pickle =
      state_dict_pickle([](PickleWriter& p) { p.str("w").tensor("FloatStorage", "0", 1, 0, {1}, {1}); }).stop().bytes();
  write_bytes(dir.path() / "pytorch_model.bin", make_torch_zip(pickle, {{"0", as_bytes_of(std::vector<float>{4})}}));
  EXPECT_EQ(load_weights_folder(dir.path()).format(), "torch-zip");
  save_safetensors(dir.path() / "model.safetensors", {make_f32_tensor("v", {1}, std::vector<float>{5})});
  EXPECT_TRUE(load_weights_folder(dir.path()).contains("v"));  // safetensors first
}

TEST(WeightsTorchZip, NoTensorsOrWrongRoot) {
  expect_error([] { load_bytes(make_torch_zip(PickleWriter().empty_dict().stop().bytes(), {}), "e.pt"); },
               {"e.pt", "no tensors"});
  expect_error([] { load_bytes(make_torch_zip(PickleWriter().empty_list().stop().bytes(), {}), "l.pt"); },
               {"l.pt", "found a list"});
}

// A TorchScript-like archive: module objects with BUILD states, tensors and non-tensor attributes.
Bytes torchscript_archive(const Bytes& pickle, const std::vector<StorageBytes>& storages) {
  return make_torch_zip(pickle, storages, {{"archive/constants.pkl", PickleWriter().empty_tuple().stop().bytes()}});
}

TEST(WeightsTorchScript, FlattensModuleTreeLikeStateDict) {
  PickleWriter p;
  p.global("__torch__.m", "Top").empty_tuple().newobj().empty_dict().mark();
  p.str("training").boolean(false).str("scale").tensor("FloatStorage", "0", 3, 0, {}, {});
  p.str("child").global("__torch__.m", "Child").empty_tuple().newobj().empty_dict().mark();
  p.str("weight").tensor("FloatStorage", "0", 3, 1, {2}, {1}).str("bias").none();
  p.setitems().build();
  p.setitems().build().stop();
  const WeightMap weights = load_bytes(torchscript_archive(p.bytes(), {{"0", as_bytes_of(iota_floats(3))}}));
  EXPECT_EQ(weights.format(), "torchscript");
  ASSERT_EQ(weights.size(), 2u);
  EXPECT_EQ(to_f32(weights.at("scale")), std::vector<float>{0});
  EXPECT_EQ(to_f32(weights.at("child.weight")), (std::vector<float>{1, 2}));
}

TEST(WeightsTorchScript, CyclicModuleIsAnError) {
  PickleWriter p;
  p.global("__torch__.m", "Loop").empty_tuple().newobj().op('q').op(0);  // BINPUT 0
  p.empty_dict().str("self").op('h').op(0).setitem().build().stop();     // state {'self': itself}
  expect_error([&] { load_bytes(torchscript_archive(p.bytes(), {}), "cycle.pt"); }, {"cycle.pt", "nested"});
}

TEST(WeightsLegacy, LoadsStorageDataAfterThePickles) {
  PickleWriter main;
  main.empty_dict().mark().str("state_dict").empty_dict().mark();
  main.str("module.a").tensor("FloatStorage", "140", 4, 1, {2}, {2}, /*legacy=*/true);
  main.str("module.b").tensor("ShortStorage", "141", 2, 0, {2}, {1}, true);
  main.setitems().str("best_prec1").op('G');
  for (std::uint8_t byte : {0x40, 0x4b, 0x5e, 0xb8, 0x51, 0xeb, 0x85, 0x1f}) main.op(byte);  // BINFLOAT 54.74
  main.setitems().stop();
  const Bytes file = make_legacy(
      main.bytes(),
      {{"140", as_bytes_of(std::vector<float>{0, 1, 2, 3})}, {"141", as_bytes_of(std::vector<std::int16_t>{-3, 300})}},
      {4, 2});
  const WeightMap weights = load_bytes(file);
  EXPECT_EQ(weights.format(), "torch-legacy");
  EXPECT_EQ(to_f32(weights.at("a")), (std::vector<float>{1, 3}));
  EXPECT_EQ(weights.at("b").dtype, DType::I16);
  EXPECT_EQ(to_f32(weights.at("b")), (std::vector<float>{-3, 300}));
}

TEST(WeightsLegacy, StorageViewsAndCountMismatchesAreErrors) {
  PickleWriter view;
  view.empty_dict().str("w").global("torch._utils", "_rebuild_tensor_v2").mark();
  view.mark().str("storage").global("torch", "FloatStorage").str("1").str("cpu").integer(2);
  view.mark().str("2").integer(0).integer(2).tuple().tuple().op('Q');
  view.integer(0).ints({2}).ints({1}).boolean(false).global("collections", "OrderedDict").empty_tuple().reduce();
  view.tuple().reduce().setitem().stop();
  expect_error(
      [&] {
        load_bytes(make_legacy(view.bytes(), {{"1", Bytes(8)}}, {4}), "view.pth");
      },
      {"view.pth", "view"});

  PickleWriter main;
  main.empty_dict().str("w").tensor("FloatStorage", "1", 3, 0, {3}, {1}, true).setitem().stop();
  expect_error(
      [&] {
        load_bytes(make_legacy(main.bytes(), {{"1", Bytes(8)}}, {4}), "count.pth");
      },
      {"count.pth", "storage '1'", "2 elements in the data but 3"});
  expect_error(
      [&] {
        load_bytes(make_legacy(main.bytes(), {{"2", Bytes(12)}}, {4}), "key.pth");
      },
      {"key.pth", "storage '2'"});
}

// Writes `bytes` to `dir`/`name` and expects load_weights to fail naming that file and `parts`.
void expect_file_error(const TempDir& dir, const std::string& name, const Bytes& bytes,
                       std::initializer_list<std::string_view> parts) {
  const auto path = dir.path() / name;
  write_bytes(path, bytes);
  expect_error([&] { load_weights(path); }, {path.string()});
  expect_error([&] { load_weights(path); }, parts);
}

TEST(WeightsUnpickler, RefusesForbiddenGlobals) {
  TempDir dir;
  for (const auto& [module, name] : std::vector<std::pair<std::string, std::string>>{
           {"os", "system"}, {"builtins", "eval"}, {"torch.storage", "_load_from_bytes"}, {"torch.nn", "Module"}}) {
    PickleWriter p;
    p.global(module, name).mark().str("echo pwned").tuple().reduce().stop();
    expect_file_error(dir, "evil_" + name + ".pt", make_torch_zip(p.bytes(), {}),
                      {"forbidden global", module + "." + name});
  }
  PickleWriter stack_global;  // STACK_GLOBAL is checked the same way
  stack_global.str("posix").str("system").op(0x93).stop();
  expect_file_error(dir, "evil_stack.pt", make_torch_zip(stack_global.bytes(), {}), {"posix.system"});
  PickleWriter legacy;  // and so is the legacy format
  legacy.global("os", "system").mark().str("x").tuple().reduce().stop();
  expect_file_error(dir, "evil.pth.tar", make_legacy(legacy.bytes(), {}, {}), {"main pickle", "os.system"});
}

TEST(WeightsUnpickler, UnknownOpcodeIsNamed) {
  TempDir dir;
  PickleWriter p;
  p.empty_dict().op(0xb5).stop();
  expect_file_error(dir, "op.pt", make_torch_zip(p.bytes(), {}), {"archive/data.pkl", "opcode 0xb5", "byte 3"});
}

TEST(WeightsUnpickler, LimitsStopHostilePickles) {
  PickleWriter marks;
  for (int i = 0; i < 2000; ++i) marks.mark();
  expect_error([&] { load_bytes(make_torch_zip(marks.stop().bytes(), {}), "m.pt"); }, {"m.pt", "MARKs nested"});

  PickleWriter many;
  for (std::size_t i = 0; i <= io::Unpickler::kMaxValues; ++i) many.none();
  expect_error([&] { load_bytes(make_torch_zip(many.stop().bytes(), {}), "n.pt"); }, {"n.pt", "more than"});

  PickleWriter get;
  get.op('h').op(9).stop();
  expect_error([&] { load_bytes(make_torch_zip(get.bytes(), {}), "g.pt"); }, {"g.pt", "memo key 9"});

  // 200000 nested lists: built iteratively, freed without recursion, rejected as a root.
  PickleWriter deep;
  for (int i = 0; i < 200000; ++i) deep.empty_list();
  for (int i = 1; i < 200000; ++i) deep.append();
  expect_error([&] { load_bytes(make_torch_zip(deep.stop().bytes(), {}), "d.pt"); }, {"d.pt", "found a list"});

  PickleWriter huge;  // BINUNICODE8 claiming 2^62 bytes
  huge.op(0x8d);
  for (int i = 0; i < 7; ++i) huge.op(0);
  huge.op(0x40);
  expect_error([&] { load_bytes(make_torch_zip(huge.bytes(), {}), "h.pt"); }, {"h.pt", "truncated pickle"});
}

}  // namespace
}  // namespace clipdissect
