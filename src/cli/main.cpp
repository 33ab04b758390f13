#include <cstdio>

int main() {
  std::puts("clipdissect " CLIPDISSECT_VERSION);
  return 0;
}
