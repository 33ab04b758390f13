// Locating the reference fixtures: $CLIPDISSECT_FIXTURES, else ../shared/fixtures from the repo root.
#pragma once

#include <filesystem>
#include <string>

#include <gtest/gtest.h>

namespace clipdissect::testing {

inline std::filesystem::path fixtures_dir() {
  if (const char* env = std::getenv("CLIPDISSECT_FIXTURES"); env && *env) return env;
  return std::filesystem::path(CLIPDISSECT_SOURCE_DIR) / ".." / "shared" / "fixtures";
}

// Path of a fixture file; the calling test fails (fatally) when it is absent.
inline std::filesystem::path fixture(const std::string& relative) {
  std::filesystem::path path = fixtures_dir() / relative;
  if (!std::filesystem::exists(path)) {
    ADD_FAILURE() << "fixture missing: " << path.string()
                  << " (set CLIPDISSECT_FIXTURES to the reference fixtures folder; looked in "
                  << fixtures_dir().string() << ")";
    throw std::runtime_error("fixture missing: " + path.string());
  }
  return path;
}

inline std::filesystem::path cli_path() { return CLIPDISSECT_CLI_PATH; }

}  // namespace clipdissect::testing
