#include "text/text_normalize.h"

#include <cstdint>

#include <unicode/locid.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utf8.h>

#include "clipdissect/error.h"
#include "text/html_entities.h"

namespace clipdissect::text {

std::u32string utf8_to_utf32(std::string_view utf8) {
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(utf8.data());
  std::u32string out;
  out.reserve(utf8.size());
  std::size_t pos = 0;
  while (pos < utf8.size()) {
    const std::size_t start = pos;
    UChar32 c = 0;
    U8_NEXT(bytes, pos, utf8.size(), c);
    if (c < 0) fail("text is not valid UTF-8: ill-formed sequence at byte {}", start);
    out.push_back(static_cast<char32_t>(c));
  }
  return out;
}

std::string utf32_to_utf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    char buffer[U8_MAX_LENGTH];
    std::size_t length = 0;
    U8_APPEND_UNSAFE(buffer, length, c);
    out.append(buffer, length);
  }
  return out;
}

bool is_python_space(char32_t c) {
  const auto code_point = static_cast<UChar32>(c);
  if (u_charType(code_point) == U_SPACE_SEPARATOR) return true;
  const UCharDirection direction = u_charDirection(code_point);
  return direction == U_WHITE_SPACE_NEUTRAL || direction == U_BLOCK_SEPARATOR || direction == U_SEGMENT_SEPARATOR;
}

bool is_regex_space(char32_t c) { return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE); }

std::u32string_view python_strip(std::u32string_view text) {
  while (!text.empty() && is_python_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_python_space(text.back())) text.remove_suffix(1);
  return text;
}

std::u32string python_lower(std::u32string_view text) {
  if (text.size() > static_cast<std::size_t>(INT32_MAX / 2)) {
    fail("text of {} code points is too long to lower-case (at most {})", text.size(), INT32_MAX / 2);
  }
  // The root locale gives the language-independent full mappings Python uses (no Turkish/Lithuanian rules).
  icu::UnicodeString unicode =
      icu::UnicodeString::fromUTF32(reinterpret_cast<const UChar32*>(text.data()), static_cast<int32_t>(text.size()));
  unicode.toLower(icu::Locale::getRoot());
  std::u32string out;
  for (int32_t index = 0; index < unicode.length(); index = unicode.moveIndex32(index, 1)) {
    out.push_back(static_cast<char32_t>(unicode.char32At(index)));
  }
  return out;
}

namespace {

// regex.sub(r'\s+', ' ', text): every run of White_Space becomes one space.
std::u32string collapse_whitespace_runs(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  bool in_run = false;
  for (char32_t c : text) {
    const bool space = is_regex_space(c);
    if (!space) {
      out.push_back(c);
    } else if (!in_run) {
      out.push_back(U' ');
    }
    in_run = space;
  }
  return out;
}

}  // namespace

std::u32string clip_clean_text(std::string_view utf8) {
  const std::u32string unescaped = html_unescape(html_unescape(utf8_to_utf32(utf8)));
  const std::u32string collapsed = collapse_whitespace_runs(python_strip(unescaped));
  return python_lower(python_strip(collapsed));
}

}  // namespace clipdissect::text
