#include "clipdissect/paths.h"

#include <cstdlib>
#include <optional>

#include "clipdissect/error.h"

namespace clipdissect {
namespace {

// An environment variable's value, treating an empty one as unset.
std::optional<std::filesystem::path> environment_path(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::filesystem::path(value);
}

}  // namespace

std::filesystem::path default_cache_dir() {
  if (auto cache = environment_path("CLIPDISSECT_CACHE")) return *cache;
  // The XDG base directory specification says to ignore a relative XDG_CACHE_HOME.
  if (auto xdg = environment_path("XDG_CACHE_HOME"); xdg && xdg->is_absolute()) return *xdg / "clipdissect";
  if (auto home = environment_path("HOME")) return *home / ".cache" / "clipdissect";
  fail("cannot choose a cache folder: none of CLIPDISSECT_CACHE, XDG_CACHE_HOME (absolute) and HOME is set");
}

}  // namespace clipdissect
