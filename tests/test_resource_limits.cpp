// Hostile files that claim huge sizes or nest without end must be rejected with a clear Error before the
// claimed memory is allocated. Each check runs in a forked child whose address space may grow by only
// kHeadroom beyond what the process already maps, so an allocation of the claimed size (or a runaway
// recursion or tree) kills the check instead of passing it.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <fstream>
#include <random>

#include <gtest/gtest.h>

#include "clipdissect/image.h"
#include "fixtures.h"
#include "io/json_file.h"
#include "io/loaders.h"
#include "io/unpickler.h"
#include "io/zip_archive.h"
#include "weights_test_util.h"

#if defined(__SANITIZE_ADDRESS__)
#define CLIPDISSECT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CLIPDISSECT_ASAN 1
#endif
#endif

namespace clipdissect {
namespace {

using namespace clipdissect::testing;

constexpr std::size_t kHeadroom = std::size_t{512} << 20;

// Exit codes of the child, explained in the parent's failure message.
enum ChildOutcome { kRejected = 0, kAccepted = 1, kWrongMessage = 2, kOutOfMemory = 3, kOtherException = 4 };

std::size_t mapped_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t pages = 0;
  statm >> pages;
  return pages * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

ChildOutcome outcome_of(const std::function<void()>& load, std::string_view expected) {
  try {
    load();
    return kAccepted;
  } catch (const Error& error) {
    if (std::string_view(error.what()).find(expected) != std::string_view::npos) return kRejected;
    std::fprintf(stderr, "rejected with another message: %s\n", error.what());
    return kWrongMessage;
  } catch (const std::bad_alloc&) {
    return kOutOfMemory;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "not a clipdissect::Error: %s\n", error.what());
    return kOtherException;
  }
}

// Expects `load` to throw an Error containing `expected` while using at most kHeadroom more address space.
void expect_rejected_in_fixed_memory(const std::function<void()>& load, std::string_view expected) {
#ifdef CLIPDISSECT_ASAN
  // AddressSanitizer reserves terabytes of shadow memory up front, so RLIMIT_AS cannot be applied under it:
  // there only the clean rejection is checked (the Release build checks the memory bound).
  EXPECT_EQ(outcome_of(load, expected), kRejected);
#else
  const pid_t child = ::fork();
  ASSERT_GE(child, 0) << "fork failed";
  if (child == 0) {
    const rlim_t limit = mapped_bytes() + kHeadroom;
    const rlimit address_space{limit, limit};
    if (::setrlimit(RLIMIT_AS, &address_space) != 0) ::_exit(100);
    ::_exit(outcome_of(load, expected));
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "the check died (signal " << WTERMSIG(status) << "): expected a clean rejection";
  constexpr std::array<const char*, 5> meanings = {"rejected", "accepted the hostile input",
                                                   "rejected with another message (see stderr)",
                                                   "ran out of memory: it allocated before rejecting",
                                                   "threw something other than clipdissect::Error"};
  const int code = WEXITSTATUS(status);
  EXPECT_EQ(code, kRejected) << "expected an Error containing '" << expected << "', but the check "
                             << (code < static_cast<int>(meanings.size()) ? meanings[code] : "could not limit memory");
#endif
}

std::shared_ptr<const io::MappedFile> in_memory(const char* name, Bytes bytes) {
  return io::MappedFile::from_bytes(name, std::move(bytes));
}

Bytes safetensors_with_header(const std::string& header) {
  Bytes file;
  append_le<std::uint64_t>(file, header.size());
  for (char c : header) file.push_back(std::byte(c));
  file.resize(file.size() + 8);  // a few data bytes, far fewer than claimed
  return file;
}

TEST(ResourceLimits, SafetensorsHeaderClaimingHugeSizes) {
  Bytes huge_header = safetensors_with_header("{}");
  patch<std::uint64_t>(huge_header, 0, std::uint64_t{1} << 62);
  expect_rejected_in_fixed_memory([&] { io::load_weights(in_memory("h.safetensors", huge_header)); },
                                  "header claims 4611686018427387904 bytes");

  const Bytes huge_tensor = safetensors_with_header(
      R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,9223372036854775807]}})");
  expect_rejected_in_fixed_memory([&] { io::load_weights(in_memory("t.safetensors", huge_tensor)); },
                                  "data_offsets [0, 9223372036854775807] lie outside the 8 data bytes");

  const Bytes huge_shape =
      safetensors_with_header(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}})");
  expect_rejected_in_fixed_memory([&] { io::load_weights(in_memory("s.safetensors", huge_shape)); },
                                  "needs too many bytes");
}

TEST(ResourceLimits, DeeplyNestedJsonIsRejectedAtTheDepthLimit) {
  // 20 million levels: built as a tree, this would take gigabytes.
  constexpr std::size_t kDepth = 20'000'000;
  const std::string nested = std::string(kDepth, '[') + std::string(kDepth, ']');
  expect_rejected_in_fixed_memory(
      [&] { io::load_weights(in_memory("deep.safetensors", safetensors_with_header("{\"a\":" + nested + "}"))); },
      "deep.safetensors (safetensors header): JSON nested deeper than 64 levels");

  TempDir dir;
  const auto config = dir.path() / "config.json";
  std::ofstream(config) << nested;
  expect_rejected_in_fixed_memory([&] { read_json_object(config); },
                                  config.string() + ": JSON nested deeper than 64 levels");

  const std::string at_limit = std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']');
  EXPECT_TRUE(parse_json_text(at_limit, "at the limit").is_array());
}

TEST(ResourceLimits, PickleClaimingHugeStorages) {
  PickleWriter state;
  state.empty_dict().str("w").tensor("FloatStorage", "0", std::int64_t{1} << 60, 0, {1}, {1}).setitem().stop();
  const Bytes zip = make_torch_zip(state.bytes(), {{"0", Bytes(8)}});
  expect_rejected_in_fixed_memory([&] { io::load_weights(in_memory("huge.pt", zip)); },
                                  "storage '0' holds 8 bytes but 1152921504606846976 elements of F32 need");

  PickleWriter legacy;
  legacy.empty_dict().str("w").tensor("FloatStorage", "1", std::int64_t{1} << 61, 0, {1}, {1}, true).setitem().stop();
  Bytes file = make_legacy(legacy.bytes(), {{"1", Bytes(8)}}, {4});
  patch<std::uint64_t>(file, file.size() - 16, std::uint64_t{1} << 61);  // the element count before the data
  expect_rejected_in_fixed_memory([&] { io::load_weights(in_memory("huge.pth", file)); },
                                  "storage '1' needs 9223372036854775808 bytes");
}

// Runs the pickle alone, as the loaders do before any storage is read.
void unpickle(const Bytes& pickle) {
  io::Unpickler unpickler(pickle, "hostile.pkl", [](const io::Value&) { return std::make_shared<io::Storage>(); });
  unpickler.load();
}

TEST(ResourceLimits, HostilePicklesStopAtTheirLimits) {
  PickleWriter text;  // BINUNICODE8 claiming 2^62 bytes
  text.op(0x8d);
  for (int i = 0; i < 7; ++i) text.op(0);
  text.op(0x40);
  expect_rejected_in_fixed_memory([&] { unpickle(text.bytes()); }, "needs 4611686018427387904 bytes");

  PickleWriter deep;  // a million lists nested in each other: built without recursion, within the value limit
  constexpr int kDeep = 1'000'000;
  for (int i = 0; i < kDeep; ++i) deep.empty_list();
  for (int i = 1; i < kDeep; ++i) deep.append();
  deep.stop();
  expect_rejected_in_fixed_memory([&] { io::load_weights(in_memory("deep.pt", make_torch_zip(deep.bytes(), {}))); },
                                  "found a list");

  PickleWriter many;  // one value per byte: the arena stops at its limit
  for (std::size_t i = 0; i <= io::Unpickler::kMaxValues; ++i) many.none();
  expect_rejected_in_fixed_memory([&] { unpickle(many.bytes()); }, "more than 1048576 values");

  PickleWriter memo;  // one value stored under ever new memo keys (LONG_BINPUT)
  memo.none();
  for (std::uint32_t i = 0; i <= io::Unpickler::kMaxMemo; ++i) {
    memo.op('r');
    for (int shift = 0; shift < 32; shift += 8) memo.op(static_cast<std::uint8_t>(i >> shift));
  }
  expect_rejected_in_fixed_memory([&] { unpickle(memo.bytes()); }, "memo grows beyond 1048576 entries");
}

TEST(ResourceLimits, ZipBombsAreRefusedBeforeInflating) {
  Bytes bomb = make_zip({{"archive/data.pkl", Bytes(1000), true}});
  patch<std::uint32_t>(bomb, find_signature(bomb, 0x02014b50) + 24, 0xf0000000);  // claims 4 GB from a few bytes
  expect_rejected_in_fixed_memory([&] { io::ZipArchive zip(in_memory("bomb.zip", bomb)); }, "zip bomb");

  // A claim within deflate's ratio and the size limit, by an entry that holds far less: memory must follow
  // what actually inflates, not the claim.
  std::mt19937 rng(1);
  Bytes noise(1 << 20);
  for (std::byte& b : noise) b = std::byte(rng() & 0xff);
  Bytes liar = make_zip({{"archive/data.pkl", noise, true}});
  patch<std::uint32_t>(liar, find_signature(liar, 0x02014b50) + 24, 1'000'000'000);
  expect_rejected_in_fixed_memory(
      [&] {
        io::ZipArchive zip(in_memory("liar.zip", liar));
        zip.read(zip.entries().at(0));
      },
      "does not inflate to its declared 1000000000 bytes");
}

void write_be32(std::vector<std::uint8_t>& bytes, std::size_t at, std::uint32_t value) {
  for (int i = 0; i < 4; ++i) bytes[at + i] = static_cast<std::uint8_t>(value >> (24 - 8 * i));
}

TEST(ResourceLimits, HugeImageDimensionsAreRejectedFromTheHeader) {
  // A PNG signature, IHDR (100000 x 100000 RGB, 8 bit) and an empty IDAT: no image data at all.
  std::vector<std::uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R',
                                   0,    0,   0,   0,   0,    0,    0,    0,    8, 2, 0, 0,  0,   0,   0,   0,   0,
                                   0,    0,   0,   0,   'I',  'D',  'A',  'T',  0, 0, 0, 0};
  write_be32(png, 16, 100000);
  write_be32(png, 20, 100000);
  write_be32(png, 29, static_cast<std::uint32_t>(crc32(0, png.data() + 12, 17)));
  write_be32(png, 41, static_cast<std::uint32_t>(crc32(0, png.data() + 37, 4)));
  expect_rejected_in_fixed_memory([&] { decode_image_bytes(png, "huge.png"); },
                                  "100000x100000 pixels exceed the limit");

  // JPEG stores 16-bit dimensions; libjpeg accepts up to 65500.
  const Bytes fixture_jpeg = read_bytes(fixture("images/Zebra_stripes/00_jpg_500x375.jpg"));
  std::vector<std::uint8_t> jpeg(reinterpret_cast<const std::uint8_t*>(fixture_jpeg.data()),
                                 reinterpret_cast<const std::uint8_t*>(fixture_jpeg.data()) + fixture_jpeg.size());
  const std::array<std::uint8_t, 2> start_of_frame{0xFF, 0xC0};
  const auto sof = std::search(jpeg.begin(), jpeg.end(), start_of_frame.begin(), start_of_frame.end());
  ASSERT_NE(sof, jpeg.end());
  for (int field : {5, 7}) {  // height, width = 65500
    sof[field] = 0xFF;
    sof[field + 1] = 0xDC;
  }
  expect_rejected_in_fixed_memory([&] { decode_image_bytes(jpeg, "huge.jpg"); },
                                  "65500x65500 pixels exceed the limit");
}

}  // namespace
}  // namespace clipdissect
