#include "text/clip_pretokenize.h"

#include <array>

#include <unicode/uchar.h>

#include "text/text_normalize.h"

namespace clipdissect::text {
namespace {

// The literal alternatives, in the order the pattern tries them.
constexpr std::array<std::u32string_view, 9> kLiteralPieces = {
    U"<|startoftext|>", U"<|endoftext|>", U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};

char32_t simple_case_fold(char32_t c) {
  return static_cast<char32_t>(u_foldCase(static_cast<UChar32>(c), U_FOLD_CASE_DEFAULT));
}

bool is_letter(char32_t c) { return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_L_MASK) != 0; }
bool is_number(char32_t c) { return (U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_N_MASK) != 0; }

bool is_space_letter_or_number(char32_t c) { return is_regex_space(c) || is_letter(c) || is_number(c); }

// [^\s\p{L}\p{N}] under IGNORECASE: the regex module rejects a character when its case folding is in the set
// too. This only matters for U+0345 COMBINING GREEK YPOGEGRAMMENI (folds to the letter U+03B9), which then
// matches no alternative at all and is dropped.
bool is_other(char32_t c) { return !is_space_letter_or_number(c) && !is_space_letter_or_number(simple_case_fold(c)); }

// Case-insensitive literal match by simple case folding, as the regex module's IGNORECASE does: after
// lower-casing this still lets U+017F LATIN SMALL LETTER LONG S match 's' (e.g. "'ſ" is the piece "'s" matches).
bool matches_literal_at(std::u32string_view text, std::size_t pos, std::u32string_view literal) {
  if (text.size() - pos < literal.size()) return false;
  for (std::size_t i = 0; i < literal.size(); ++i) {
    if (simple_case_fold(text[pos + i]) != simple_case_fold(literal[i])) return false;
  }
  return true;
}

template <typename Predicate>
std::size_t run_length(std::u32string_view text, std::size_t pos, Predicate in_run) {
  std::size_t end = pos;
  while (end < text.size() && in_run(text[end])) ++end;
  return end - pos;
}

// Length of the piece the pattern matches at text[pos], 0 when none does.
std::size_t piece_length_at(std::u32string_view text, std::size_t pos) {
  for (std::u32string_view literal : kLiteralPieces) {
    if (matches_literal_at(text, pos, literal)) return literal.size();
  }
  if (is_letter(text[pos])) return run_length(text, pos, is_letter);
  if (is_number(text[pos])) return 1;
  return run_length(text, pos, is_other);
}

}  // namespace

std::vector<std::u32string_view> clip_pre_tokenize(std::u32string_view text) {
  std::vector<std::u32string_view> pieces;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t length = piece_length_at(text, pos);
    if (length == 0) {
      ++pos;
      continue;
    }
    pieces.push_back(text.substr(pos, length));
    pos += length;
  }
  return pieces;
}

}  // namespace clipdissect::text
