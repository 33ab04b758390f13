#include "clipdissect/progress.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include <fmt/format.h>
#include <unistd.h>

namespace clipdissect {
namespace {

constexpr int kBarWidth = 30;
constexpr auto kRedrawInterval = std::chrono::milliseconds(100);
// Rates measured over less time than this are noise.
constexpr double kMinimumRateSeconds = 0.2;

std::string format_bytes(double bytes) {
  constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  return unit == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.1f} {}", bytes, kUnits[unit]);
}

std::string format_amount(std::uint64_t amount, ProgressUnit unit) {
  return unit == ProgressUnit::bytes ? format_bytes(static_cast<double>(amount)) : fmt::format("{}", amount);
}

std::string format_rate(double rate, ProgressUnit unit) {
  return unit == ProgressUnit::bytes ? format_bytes(rate) + "/s" : fmt::format("{:.1f} items/s", rate);
}

std::string format_duration(double seconds) {
  const auto total = static_cast<std::uint64_t>(seconds + 0.5);
  const std::uint64_t hours = total / 3600, minutes = total / 60 % 60, rest = total % 60;
  return hours > 0 ? fmt::format("{}:{:02}:{:02}", hours, minutes, rest) : fmt::format("{}:{:02}", minutes, rest);
}

}  // namespace

ProgressBar::ProgressBar(std::string label, std::uint64_t total, ProgressUnit unit, bool quiet)
    : label_(std::move(label)), total_(total), unit_(unit), enabled_(!quiet && ::isatty(STDERR_FILENO) == 1) {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::set_total(std::uint64_t total) { total_ = total; }

void ProgressBar::update(std::uint64_t done) {
  done_ = done;
  const Clock::time_point now = Clock::now();
  if (!first_update_) first_update_.emplace(now, done);
  if (enabled_ && !finished_ && (!drawn_ || now - last_draw_ >= kRedrawInterval)) draw(now);
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  if (!drawn_) return;
  draw(Clock::now());
  std::fputc('\n', stderr);
}

std::string ProgressBar::render(std::uint64_t done, double rate) const {
  std::string line = label_;
  if (total_ > 0) {
    const double fraction = std::min(1.0, static_cast<double>(done) / static_cast<double>(total_));
    const auto filled = static_cast<std::size_t>(fraction * kBarWidth);
    line += fmt::format(" {:3.0f}% [{}{}] {}/{}", fraction * 100, std::string(filled, '#'),
                        std::string(kBarWidth - filled, '.'), format_amount(done, unit_), format_amount(total_, unit_));
  } else {
    line += fmt::format(" {}", format_amount(done, unit_));
  }
  if (rate > 0) {
    line += fmt::format(" {}", format_rate(rate, unit_));
    if (total_ > done) line += fmt::format(" ETA {}", format_duration(static_cast<double>(total_ - done) / rate));
  }
  return line;
}

double ProgressBar::rate(Clock::time_point now) const {
  if (!first_update_) return 0;
  const double seconds = std::chrono::duration<double>(now - first_update_->first).count();
  if (seconds < kMinimumRateSeconds || done_ < first_update_->second) return 0;
  return static_cast<double>(done_ - first_update_->second) / seconds;
}

void ProgressBar::draw(Clock::time_point now) {
  // \r returns to the line start; ESC[K erases what a longer previous line left.
  fmt::print(stderr, "\r{}\x1b[K", render(done_, rate(now)));
  std::fflush(stderr);
  drawn_ = true;
  last_draw_ = now;
}

}  // namespace clipdissect
