// Process-wide logging through spdlog. Libraries log with spdlog's free functions
// (spdlog::info("listening on {}", addr)); mains call InitLogging once at startup.
#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace herald {

// Configures the default logger: stderr, "2026-11-27T08:00:00.123Z info [herald] message".
// `level` is one of trace, debug, info, warn, error, critical, off.
absl::Status InitLogging(std::string_view level, std::string_view name = "herald");

}  // namespace herald
