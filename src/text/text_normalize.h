// Text clean-up of CLIP's simple_tokenizer, with Python's exact semantics: basic_clean (ftfy is the identity in
// the reference, then html.unescape twice and str.strip), whitespace_clean (regex `\s+` -> ' ', str.strip) and
// str.lower. Text is handled as UTF-32 so that lengths and positions count code points as Python does.
#pragma once

#include <string>
#include <string_view>

namespace clipdissect::text {

// Throws Error (naming the byte offset) when `utf8` is not well-formed UTF-8, as Python's strict decoding would.
std::u32string utf8_to_utf32(std::string_view utf8);
std::string utf32_to_utf8(std::u32string_view text);

// Python's str.isspace(): category Zs or bidirectional class WS, B or S (includes U+001C..U+001F).
bool is_python_space(char32_t c);
// `\s` of the `regex` module on str patterns: the Unicode White_Space property (excludes U+001C..U+001F).
bool is_regex_space(char32_t c);

// str.strip() without arguments.
std::u32string_view python_strip(std::u32string_view text);
// Python's full Unicode str.lower(), including final sigma and multi-code-point mappings such as U+0130.
std::u32string python_lower(std::u32string_view text);

// basic_clean then whitespace_clean then lower, as SimpleTokenizer.encode does before pre-tokenising.
std::u32string clip_clean_text(std::string_view utf8);

}  // namespace clipdissect::text
