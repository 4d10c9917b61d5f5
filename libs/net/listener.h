// Listening sockets. A ListenerGroup binds one socket per event loop on the same address with
// SO_REUSEPORT, so the kernel spreads new connections across loops without a shared accept lock.
#pragma once

#include <uv.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "libs/net/connection.h"
#include "libs/net/event_loop.h"
#include "libs/net/socket_address.h"

namespace herald::net {

struct ListenerOptions {
  int backlog = 1024;
  // Connections beyond this many open at once are closed right after accept. 0: no limit.
  int64_t max_connections = 0;
  ConnectionOptions connection;
  std::shared_ptr<TlsContext> tls;  // null: plain TCP
};

class ListenerGroup {
 public:
  // Binds on every loop of `loops` (which must be running). Port 0 picks a free port, shared by
  // all loops' sockets. `factory` is called on the accepting loop's thread for each connection;
  // it may return nullptr to refuse one.
  static absl::StatusOr<std::unique_ptr<ListenerGroup>> Listen(LoopGroup& loops,
                                                               const SocketAddress& address,
                                                               Connection::HandlerFactory factory,
                                                               ListenerOptions options);

  // Stops accepting (open connections stay). Blocks until every loop closed its socket.
  ~ListenerGroup();
  void Close();

  const SocketAddress& address() const { return address_; }
  const ConnectionStats& stats() const { return *stats_; }
  std::shared_ptr<const ConnectionStats> shared_stats() const { return stats_; }

 private:
  class Listener;
  ListenerGroup() = default;

  SocketAddress address_;
  std::shared_ptr<ConnectionStats> stats_;
  std::vector<Listener*> listeners_;  // each owned by (and closed on) its loop
  std::vector<EventLoop*> loops_;
  bool closed_ = false;
};

}  // namespace herald::net
