#include "fuzz_targets.h"
#include "io/unpickler.h"

namespace clipdissect::fuzz {

// Every persistent id loads as an empty float storage: the unpickler itself is under test, not the loaders.
void unpickler(Bytes data) {
  io::Unpickler unpickler(std::as_bytes(data), "fuzz.pkl",
                          [](const io::Value&) { return std::make_shared<io::Storage>(); });
  const io::Value& root = unpickler.load();
  root.find("state_dict");
}

}  // namespace clipdissect::fuzz
