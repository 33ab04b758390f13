// A one-line progress bar on stderr for long stages (downloads, image batches, ...).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

namespace clipdissect {

enum class ProgressUnit { items, bytes };

// Draws "label  42% [#####.....] 4.2/10.0 MiB 1.3 MiB/s ETA 0:05" on stderr, only when stderr is a terminal and
// quiet is false, at most ten times a second. Not thread-safe: update it from one thread.
class ProgressBar {
 public:
  // total 0: unknown (no percentage nor ETA).
  ProgressBar(std::string label, std::uint64_t total, ProgressUnit unit = ProgressUnit::items, bool quiet = false);
  ~ProgressBar();  // finish()
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void set_total(std::uint64_t total);
  void update(std::uint64_t done);  // absolute position
  void advance(std::uint64_t count = 1) { update(done_ + count); }
  // Draws the final state and ends the line; later calls do nothing.
  void finish();

  // The line update() draws, for `done` at `rate` units per second (0: unknown). Public for tests.
  std::string render(std::uint64_t done, double rate) const;

 private:
  using Clock = std::chrono::steady_clock;

  double rate(Clock::time_point now) const;
  void draw(Clock::time_point now);

  std::string label_;
  std::uint64_t total_;
  ProgressUnit unit_;
  bool enabled_;
  std::uint64_t done_ = 0;
  // The rate counts from the first update, so that resumed downloads or a first slow batch do not skew it.
  std::optional<std::pair<Clock::time_point, std::uint64_t>> first_update_;
  Clock::time_point last_draw_{};
  bool drawn_ = false;
  bool finished_ = false;
};

}  // namespace clipdissect
