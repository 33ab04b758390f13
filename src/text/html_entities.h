// Python's html.unescape: named (HTML5 table, with longest-prefix matching) and numeric character references,
// with the replacements the HTML5 standard prescribes for invalid numeric references.
#pragma once

#include <string>
#include <string_view>

namespace clipdissect::text {

std::u32string html_unescape(std::u32string_view text);

}  // namespace clipdissect::text
