// A benchmark program's main: an error (a missing file, no GPU) is printed as one line and the program exits
// with 1, instead of an uncaught exception aborting it.
#pragma once

#include <cstdio>
#include <exception>

inline int main_reporting_errors(int (*run)(int, char**), int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
