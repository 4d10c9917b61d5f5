// libFuzzer target: arbitrary bytes, fed in arbitrary splits, must never crash the parser, and
// requests it returns must respect the configured limits.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "libs/protocol/http/http1.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  herald::http::Limits limits{.max_header_bytes = 512, .max_body_bytes = 1024};
  herald::http::RequestParser parser(limits);
  std::vector<herald::http::Request> out;
  // The first byte chooses the split size, so the corpus explores partial feeds.
  size_t step = 1 + data[0] % 64;
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  while (!rest.empty()) {
    size_t n = std::min(step, rest.size());
    if (!parser.Feed(rest.substr(0, n), &out).ok()) break;
    rest.remove_prefix(n);
  }
  for (const auto& r : out) {
    if (r.body.size() > limits.max_body_bytes) std::abort();
  }
  return 0;
}
