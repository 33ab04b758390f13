// CLIP's pre-tokeniser: SimpleTokenizer.pat applied with regex.findall(..., IGNORECASE) to cleaned,
// lower-cased text:
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
#pragma once

#include <string_view>
#include <vector>

namespace clipdissect::text {

// The matched pieces, in order, as views into `text`. Characters no alternative matches (whitespace, and
// U+0345, see clip_pretokenize.cpp) are skipped, as findall does.
std::vector<std::u32string_view> clip_pre_tokenize(std::u32string_view text);

}  // namespace clipdissect::text
