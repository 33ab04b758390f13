// libFuzzer's entry point for one target, chosen at build time (CLIPDISSECT_FUZZ_TARGET, see fuzz/CMakeLists.txt).
#include <cstddef>
#include <cstdint>

#include "fuzz_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    clipdissect::fuzz::CLIPDISSECT_FUZZ_TARGET({data, size});
  } catch (const clipdissect::Error&) {
    // A clean rejection. Any other exception escapes, terminates the program and is reported as a crash.
  }
  return 0;
}
