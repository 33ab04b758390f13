#include "fuzz_targets.h"
#include "text/wordpiece_tokenizer.h"

namespace clipdissect::fuzz {

void wordpiece_text(Bytes data) {
  static const WordPieceTokenizer tokenizer = WordPieceTokenizer::from_folder(fixture_path("hf/mpnet"));
  constexpr std::size_t kMaxLength = 384;
  const std::string_view text(reinterpret_cast<const char*>(data.data()), data.size());
  if (tokenizer.tokenize(text, kMaxLength).size() > kMaxLength)
    throw std::logic_error("WordPiece output longer than its maximum length");
}

}  // namespace clipdissect::fuzz
