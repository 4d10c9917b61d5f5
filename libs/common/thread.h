// Thread names, as `top -H`, `ps -L`, perf and debuggers show them.
#pragma once

#include <string_view>

namespace herald {

// Names the calling thread (Linux keeps the first 15 bytes).
void SetThreadName(std::string_view name);

}  // namespace herald
