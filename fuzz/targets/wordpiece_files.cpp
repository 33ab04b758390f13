#include "fuzz_targets.h"
#include "text/wordpiece_tokenizer.h"

namespace clipdissect::fuzz {

// The input as tokenizer.json, then as vocab.txt (a folder without tokenizer.json), each used on a fixed text.
void wordpiece_files(Bytes data) {
  constexpr std::string_view kText = "Hello, [MASK] wörld! 日本語 <s> ##ing";
  for (const char* file : {"json/tokenizer.json", "txt/vocab.txt"})
    try_reader([&] { WordPieceTokenizer::from_folder(write_scratch(file, data).parent_path()).tokenize(kText, 32); });
}

}  // namespace clipdissect::fuzz
