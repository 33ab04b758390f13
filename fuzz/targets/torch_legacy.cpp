#include "fuzz_targets.h"
#include "io/loaders.h"

namespace clipdissect::fuzz {

void torch_legacy(Bytes data) { read_every_byte(io::load_torch_legacy(as_file("fuzz.pth.tar", data))); }

}  // namespace clipdissect::fuzz
