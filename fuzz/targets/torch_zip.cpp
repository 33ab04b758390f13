#include "fuzz_targets.h"
#include "io/loaders.h"

namespace clipdissect::fuzz {

void torch_zip(Bytes data) { read_every_byte(io::load_torch_archive(as_file("fuzz.pt", data))); }

}  // namespace clipdissect::fuzz
