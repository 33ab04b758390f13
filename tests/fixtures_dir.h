// Where the reference fixtures live: $CLIPDISSECT_FIXTURES, else ../shared/fixtures from the repo root.
// Shared by the tests and the fuzz targets (which need no GoogleTest).
#pragma once

#include <cstdlib>
#include <filesystem>

namespace clipdissect::testing {

inline std::filesystem::path fixtures_dir() {
  if (const char* env = std::getenv("CLIPDISSECT_FIXTURES"); env && *env) return env;
  return std::filesystem::path(CLIPDISSECT_SOURCE_DIR) / ".." / "shared" / "fixtures";
}

}  // namespace clipdissect::testing
