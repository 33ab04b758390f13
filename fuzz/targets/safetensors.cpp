#include "fuzz_targets.h"
#include "io/loaders.h"

namespace clipdissect::fuzz {

// Through the format sniffing of load_weights, which sends any file with '{' at byte 8 to the safetensors reader.
void safetensors(Bytes data) { read_every_byte(io::load_weights(as_file("fuzz.safetensors", data))); }

}  // namespace clipdissect::fuzz
