#include "clipdissect/tokenizer.h"
#include "fuzz_targets.h"

namespace clipdissect::fuzz {

// The input is the whole .txt.gz file.
void clip_bpe_vocab(Bytes data) {
  const ClipTokenizer tokenizer = ClipTokenizer::from_file(write_scratch("bpe_vocab.txt.gz", data));
  tokenizer.tokenize("a photo of a cat, &amp; <|endoftext|> 1234 naïve", /*truncate=*/true);
}

}  // namespace clipdissect::fuzz
