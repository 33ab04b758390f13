// Locating the reference fixtures: $CLIPDISSECT_FIXTURES, else ../shared/fixtures from the repo root.
#pragma once

#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "fixtures_dir.h"

namespace clipdissect::testing {

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
