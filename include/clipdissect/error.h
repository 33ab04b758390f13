// Errors raised by clipdissect. Every message names the file, the field and what was expected.
#pragma once

#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace clipdissect {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws Error with a fmt-formatted message.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace clipdissect
