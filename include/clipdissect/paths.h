// Where clipdissect keeps files it does not ship (the BPE vocabulary, downloaded or converted weights).
#pragma once

#include <filesystem>

namespace clipdissect {

// $CLIPDISSECT_CACHE if set, else $XDG_CACHE_HOME/clipdissect (when absolute), else $HOME/.cache/clipdissect.
// Throws Error when none of these variables is usable. The folder may not exist.
std::filesystem::path default_cache_dir();

}  // namespace clipdissect
