// The admin HTTP endpoint of every Herald process: /healthz, /readyz, /metrics (Prometheus text
// format) and whatever other GET routes a service adds. Small, read-only and separate from
// client-facing listeners, so scraping and probes keep working when client traffic is heavy.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "libs/admin/metrics_registry.h"
#include "libs/net/event_loop.h"
#include "libs/net/listener.h"
#include "libs/protocol/http/http1.h"

namespace herald::admin {

struct AdminServerOptions {
  net::SocketAddress address;
  int64_t max_connections = 256;
  http::Limits limits{.max_header_bytes = 16 * 1024, .max_body_bytes = 0};
  // A connection that sends no complete request for this long is closed.
  std::chrono::milliseconds idle_timeout{60'000};
};

class AdminServer {
 public:
  // Called on a loop thread; must be thread-safe and quick.
  using Handler = std::function<http::Response(const http::Request&)>;

  explicit AdminServer(std::shared_ptr<MetricsRegistry> registry);
  ~AdminServer();

  // Adds a GET (and HEAD) route for an exact path. Call before Start().
  void Route(const std::string& path, Handler handler);
  // Serves /healthz (200 while the process serves), /readyz (200 when `ready()` is true, else
  // 503) and /metrics. Call before Start().
  void AddStandardRoutes(std::function<bool()> ready);

  absl::Status Start(net::LoopGroup& loops, const AdminServerOptions& options);
  // Stops accepting; open admin connections close with the loops.
  void Stop();
  const net::SocketAddress& address() const { return listener_->address(); }
  std::shared_ptr<const net::ConnectionStats> stats() const { return listener_->shared_stats(); }

  // Answers one request (exposed for tests and fuzzing of the routing).
  http::Response Handle(const http::Request& request) const;

 private:
  class Session;
  std::shared_ptr<MetricsRegistry> registry_;
  std::map<std::string, Handler> routes_;
  AdminServerOptions options_;
  std::unique_ptr<net::ListenerGroup> listener_;
};

}  // namespace herald::admin
