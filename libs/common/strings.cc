#include "libs/common/strings.h"

#include <cstdio>

namespace herald::strings_internal {

void AppendDouble(std::string& out, double v) {
  char buf[32];
  int n = std::snprintf(buf, sizeof(buf), "%g", v);
  out.append(buf, n > 0 ? static_cast<size_t>(n) : 0);
}

}  // namespace herald::strings_internal
