// Reading the line-oriented text files of libs/auth (password file, ACL file). Internal to
// libs/auth and heraldctl; pure functions apart from ReadTextFile.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace herald::auth {

// The whole content of the file at `path`. Errors: NotFound, PermissionDenied, ... with the
// path and strerror() in the message.
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

// The lines of `text`, without their "\n" or "\r\n" terminators; a final line without a
// terminator is included, a trailing empty one is not. Views into `text`.
std::vector<std::string_view> SplitLines(std::string_view text);

// `s` without leading and trailing spaces and tabs.
std::string_view TrimBlanks(std::string_view s);

}  // namespace herald::auth
