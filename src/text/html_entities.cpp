#include "text/html_entities.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>

#include "clipdissect/error.h"

namespace clipdissect::text {
namespace {

struct NamedEntity {
  std::string_view name;
  char32_t first;
  char32_t second;  // 0 when the entity is a single code point
};

constexpr NamedEntity kNamedEntities[] = {
#include "text/html_entities_table.inc"
};
static_assert(std::ranges::is_sorted(kNamedEntities, {}, &NamedEntity::name));

// Python's html._invalid_charrefs for 0x80..0x9F: the windows-1252 reading of those bytes (five stay as they are).
constexpr std::array<char32_t, 32> kWindows1252Controls = {
    0x20AC, 0x81,   0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
    0x2039, 0x0152, 0x8D,   0x017D, 0x8F,   0x90,   0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D,   0x017E, 0x0178};

constexpr char32_t kReplacementCharacter = 0xFFFD;
// Numeric references are saturated here: every value above U+10FFFF is treated alike.
constexpr std::uint32_t kBeyondUnicode = 0x110000;
// CPython 3.11's int() refuses decimal strings longer than this (sys.get_int_max_str_digits()).
constexpr std::size_t kPythonMaxDecimalDigits = 4300;
// html._charref allows 1 to 32 characters in a named reference, before an optional ';'.
constexpr std::size_t kMaxNameLength = 32;

bool is_ascii_digit(char32_t c) { return c >= U'0' && c <= U'9'; }
bool is_ascii_hex_digit(char32_t c) {
  return is_ascii_digit(c) || (c >= U'a' && c <= U'f') || (c >= U'A' && c <= U'F');
}
int hex_digit_value(char32_t c) {
  if (is_ascii_digit(c)) return static_cast<int>(c - U'0');
  return static_cast<int>((c | 0x20) - U'a') + 10;
}

// Python's html._invalid_codepoints: references to these are dropped.
bool is_invalid_codepoint(std::uint32_t c) {
  return (c >= 0x1 && c <= 0x8) || c == 0xB || (c >= 0xE && c <= 0x1F) || (c >= 0x7F && c <= 0x9F) ||
         (c >= 0xFDD0 && c <= 0xFDEF) || (c & 0xFFFE) == 0xFFFE;
}

// _replace_charref for a numeric reference with value `num` (saturated at kBeyondUnicode).
void append_numeric_reference(std::uint32_t num, std::u32string& out) {
  if (num == 0) {
    out.push_back(kReplacementCharacter);
  } else if (num == 0x0D) {
    out.push_back(U'\r');
  } else if (num >= 0x80 && num <= 0x9F) {
    out.push_back(kWindows1252Controls[num - 0x80]);
  } else if ((num >= 0xD800 && num <= 0xDFFF) || num >= kBeyondUnicode) {
    out.push_back(kReplacementCharacter);
  } else if (!is_invalid_codepoint(num)) {
    out.push_back(static_cast<char32_t>(num));
  }
}

const NamedEntity* find_named_entity(std::u32string_view name) {
  std::string ascii;
  for (char32_t c : name) {
    if (c > 0x7F) return nullptr;  // every HTML5 entity name is ASCII
    ascii.push_back(static_cast<char>(c));
  }
  const auto* it = std::ranges::lower_bound(kNamedEntities, std::string_view(ascii), {}, &NamedEntity::name);
  if (it == std::end(kNamedEntities) || it->name != ascii) return nullptr;
  return it;
}

void append_entity(const NamedEntity& entity, std::u32string& out) {
  out.push_back(entity.first);
  if (entity.second != 0) out.push_back(entity.second);
}

// _replace_charref for a named reference `ref` (the name with its ';' if present): the whole of it, else its
// longest prefix of at least two characters that is an entity (the rest kept as text), else unchanged.
void append_named_reference(std::u32string_view ref, std::u32string& out) {
  if (const NamedEntity* entity = find_named_entity(ref)) {
    append_entity(*entity, out);
    return;
  }
  for (std::size_t length = ref.size() - 1; length >= 2; --length) {
    if (const NamedEntity* entity = find_named_entity(ref.substr(0, length))) {
      append_entity(*entity, out);
      out.append(ref.substr(length));
      return;
    }
  }
  out.push_back(U'&');
  out.append(ref);
}

std::size_t skip_optional_semicolon(std::u32string_view text, std::size_t pos) {
  return pos < text.size() && text[pos] == U';' ? pos + 1 : pos;
}

// Matches `#[0-9]+;?` or `#[xX][0-9a-fA-F]+;?` at text[pos] ('#'); appends the replacement and returns the end,
// or nullopt when neither matches.
std::optional<std::size_t> replace_numeric_reference(std::u32string_view text, std::size_t pos, std::u32string& out) {
  std::size_t digits_begin = pos + 1;
  const bool hex = digits_begin < text.size() && (text[digits_begin] == U'x' || text[digits_begin] == U'X');
  if (hex) ++digits_begin;
  std::size_t end = digits_begin;
  std::uint32_t value = 0;
  while (end < text.size() && (hex ? is_ascii_hex_digit(text[end]) : is_ascii_digit(text[end]))) {
    const std::uint32_t digit = hex ? static_cast<std::uint32_t>(hex_digit_value(text[end])) : text[end] - U'0';
    value = std::min<std::uint32_t>(value * (hex ? 16 : 10) + digit, kBeyondUnicode);
    ++end;
  }
  if (end == digits_begin) return std::nullopt;
  if (!hex && end - digits_begin > kPythonMaxDecimalDigits) {
    fail("HTML character reference '&#' with {} decimal digits: the reference (Python's int()) fails on more "
         "than {} digits",
         end - digits_begin, kPythonMaxDecimalDigits);
  }
  append_numeric_reference(value, out);
  return skip_optional_semicolon(text, end);
}

bool ends_named_reference(char32_t c) {
  return c == U'\t' || c == U'\n' || c == U'\f' || c == U' ' || c == U'<' || c == U'&' || c == U'#' || c == U';';
}

// Matches `[^\t\n\f <&#;]{1,32};?` at text[pos]; appends the replacement and returns the end, or nullopt.
std::optional<std::size_t> replace_named_reference(std::u32string_view text, std::size_t pos, std::u32string& out) {
  std::size_t end = pos;
  while (end < text.size() && end - pos < kMaxNameLength && !ends_named_reference(text[end])) ++end;
  if (end == pos) return std::nullopt;
  end = skip_optional_semicolon(text, end);
  append_named_reference(text.substr(pos, end - pos), out);
  return end;
}

}  // namespace

std::u32string html_unescape(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  std::size_t pos = 0;
  while (pos < text.size()) {
    if (text[pos] != U'&' || pos + 1 == text.size()) {
      out.push_back(text[pos++]);
      continue;
    }
    const std::optional<std::size_t> end = text[pos + 1] == U'#' ? replace_numeric_reference(text, pos + 1, out)
                                                                 : replace_named_reference(text, pos + 1, out);
    if (end) {
      pos = *end;
    } else {
      out.push_back(text[pos++]);
    }
  }
  return out;
}

}  // namespace clipdissect::text
