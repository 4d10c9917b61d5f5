// Process-wide logging through spdlog. Libraries log with spdlog's free functions
// (spdlog::info("listening on {}", addr)); mains call InitLogging once at startup.
#pragma once

#include <fmt/format.h>

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace herald {

// Configures the default logger: stderr, "2026-11-27T08:00:00.123Z info [herald] message".
// `level` is one of trace, debug, info, warn, error, critical, off.
absl::Status InitLogging(std::string_view level, std::string_view name = "herald");

}  // namespace herald

// spdlog formats through fmt; these let absl::string_view and absl::Status be logged directly.
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<std::string_view> {
  template <typename FormatContext>
  auto format(absl::string_view s, FormatContext& ctx) const {
    return fmt::formatter<std::string_view>::format(std::string_view(s.data(), s.size()), ctx);
  }
};

template <>
struct fmt::formatter<absl::Status> : fmt::formatter<std::string_view> {
  template <typename FormatContext>
  auto format(const absl::Status& s, FormatContext& ctx) const {
    std::string text = s.ToString();
    return fmt::formatter<std::string_view>::format(text, ctx);
  }
};
