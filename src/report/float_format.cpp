#include "report/float_format.h"

#include <charconv>
#include <cmath>

#include <fmt/format.h>

namespace clipdissect {

std::string format_float32_like_numpy(float value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  // Shortest round-trip digits in scientific form: "-1.2345e+02".
  char buffer[64];
  const auto end = std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::scientific).ptr;
  const std::string scientific(buffer, end);
  const std::size_t e = scientific.find('e');
  const bool negative = scientific[0] == '-';
  std::string digits;
  for (std::size_t i = negative ? 1 : 0; i < e; ++i)
    if (scientific[i] != '.') digits += scientific[i];
  const int exponent = std::stoi(scientific.substr(e + 1));
  const double magnitude = std::abs(static_cast<double>(value));  // numpy compares the exact value
  const char* sign = negative ? "-" : "";
  if (magnitude != 0 && (magnitude < 1e-4 || magnitude >= 1e16)) {
    const std::string fraction = digits.size() > 1 ? fmt::format(".{}", digits.substr(1)) : "";
    return fmt::format("{}{}{}e{}{:02d}", sign, digits[0], fraction, exponent < 0 ? '-' : '+', std::abs(exponent));
  }
  if (exponent < 0) return fmt::format("{}0.{}{}", sign, std::string(-exponent - 1, '0'), digits);
  const std::size_t integer_digits = static_cast<std::size_t>(exponent) + 1;
  if (digits.size() <= integer_digits)
    return fmt::format("{}{}{}.0", sign, digits, std::string(integer_digits - digits.size(), '0'));
  return fmt::format("{}{}.{}", sign, digits.substr(0, integer_digits), digits.substr(integer_digits));
}

}  // namespace clipdissect
