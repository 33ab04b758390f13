#include "clipdissect/interrupt.h"

#include <atomic>

namespace clipdissect {

namespace {
std::atomic<bool> stop_flag{false};
static_assert(std::atomic<bool>::is_always_lock_free, "request_stop must be async-signal-safe");
}  // namespace

void request_stop() noexcept { stop_flag.store(true, std::memory_order_relaxed); }
bool stop_requested() noexcept { return stop_flag.load(std::memory_order_relaxed); }
void clear_stop_request() noexcept { stop_flag.store(false, std::memory_order_relaxed); }

void stop_here_if_requested(const std::string& saved) {
  if (stop_requested()) throw Interrupted("interrupted; " + saved);
}

}  // namespace clipdissect
