#include "libs/auth/text_file.h"

#include <cerrno>
#include <fstream>
#include <sstream>

#include "libs/common/status.h"
#include "libs/common/strings.h"

namespace herald::auth {

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoToStatus(errno, StrCat("open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return ErrnoToStatus(errno, StrCat("read ", path));
  return std::move(ss).str();
}

std::vector<std::string_view> SplitLines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(start, nl - start);
    if (line.ends_with('\r')) line.remove_suffix(1);
    lines.push_back(line);
    start = nl + 1;
  }
  return lines;
}

std::string_view TrimBlanks(std::string_view s) {
  size_t b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) return {};
  size_t e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

}  // namespace herald::auth
