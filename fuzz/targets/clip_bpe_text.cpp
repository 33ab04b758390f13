#include "clipdissect/tokenizer.h"
#include "fuzz_targets.h"

namespace clipdissect::fuzz {

void clip_bpe_text(Bytes data) {
  static const ClipTokenizer tokenizer = ClipTokenizer::from_file(fixture_path("clip/bpe_simple_vocab_16e6.txt.gz"));
  const std::string_view text(reinterpret_cast<const char*>(data.data()), data.size());
  const std::vector<std::int32_t> truncated = tokenizer.tokenize(text, /*truncate=*/true);
  if (truncated.size() > static_cast<std::size_t>(kClipContextLength) || truncated.back() != kClipEndToken)
    throw std::logic_error("truncated tokens exceed the context or do not end with the end token");
  tokenizer.tokenize(text);  // may reject an over-long text, cleanly
}

}  // namespace clipdissect::fuzz
