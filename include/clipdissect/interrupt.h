// Cooperative stopping of long runs. A stop request (from a signal handler, or another thread of a program
// that embeds the library) is honoured at the next safe point: between batches and stages, after what is
// done has been saved, so the next run continues from there instead of starting over.
#pragma once

#include <string>

#include "clipdissect/error.h"

namespace clipdissect {

// Thrown at a safe point after a stop request; the message says what was saved.
class Interrupted : public Error {
 public:
  using Error::Error;
};

// Async-signal-safe.
void request_stop() noexcept;
bool stop_requested() noexcept;
// Clears a request, for a program that goes on after handling Interrupted.
void clear_stop_request() noexcept;

// Throws Interrupted with `saved` (what the next run will reuse) when a stop was requested.
void stop_here_if_requested(const std::string& saved);

}  // namespace clipdissect
