// The common life of a Herald process (herald, herald-core, herald-edge): configuration from
// file/environment/flags, logging, the data directory and its lock, event loops, the admin
// endpoint, and an orderly stop on SIGINT/SIGTERM. Each main describes itself in a ServiceSpec.
#pragma once

#include <atomic>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "libs/admin/admin_server.h"
#include "libs/admin/metrics_registry.h"
#include "libs/common/config.h"
#include "libs/net/event_loop.h"

namespace herald::service {

// Options every Herald process has.
struct CommonConfig {
  std::string data_dir;
  std::string log_level = "info";
  std::string admin_listen;
  int64_t admin_max_connections = 256;
  int net_loops = 0;
  absl::Duration shutdown_timeout = absl::Seconds(4);
};

// What a running service's components get to wire themselves up.
struct ServiceContext {
  const CommonConfig& config;
  net::LoopGroup& loops;
  admin::MetricsRegistry& metrics;
  admin::AdminServer& admin;
};

struct ServiceSpec {
  std::string component;  // "herald", "herald-core", "herald-edge": logs and herald_build_info
  std::string usage;      // first lines of --help
  std::string default_admin_listen;
  // Empty: the service keeps no data and has no data_dir option.
  std::string default_data_dir;
  // Registers the service's own options (optional).
  std::function<void(ConfigSchema&)> add_options;
  // Starts the service's own components after the loops and before the admin endpoint
  // (optional). An error stops the process with exit status 1.
  std::function<absl::Status(ServiceContext&)> start;
  // Stops them, before the loops stop (optional).
  std::function<void()> stop;
};

// Runs the process until SIGINT or SIGTERM. Returns the exit status: 0 after an orderly stop,
// 1 when the service failed to start, 2 for bad command-line or configuration.
int ServiceMain(int argc, char** argv, char** envp, const ServiceSpec& spec);

}  // namespace herald::service
