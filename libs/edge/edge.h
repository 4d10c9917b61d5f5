// The edge component of herald and herald-edge: the MQTT server (mqtt_server.h) in front of a
// CoreClient (core_client.h) talking to the core's Broker API.
//
// Threading: Start and Stop are called from the main thread; Stop before the loops stop.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "libs/common/config.h"
#include "libs/edge/core_client.h"
#include "libs/edge/mqtt_server.h"
#include "libs/net/event_loop.h"

namespace herald::edge {

struct EdgeConfig {
  // MQTT listener (mqtt.listen).
  std::string mqtt_listen = "0.0.0.0:1883";
  // Core node addresses (edge.core); the all-in-one herald sets its own core's address.
  std::vector<std::string> core_addresses = {"127.0.0.1:7070"};
  // The cluster's partition count (edge.partitions; the all-in-one herald uses its core's).
  // The default is herald-core's default cluster.partitions.
  int partitions = 64;

  // Registers "mqtt.listen", and with `standalone` also "edge.core" and "edge.partitions".
  void AddOptions(ConfigSchema& schema, bool standalone);
};

class Edge {
 public:
  explicit Edge(EdgeConfig config);
  ~Edge();  // Stop()

  // Connects to the core and starts listening on `loops` (running; they outlive the edge).
  absl::Status Start(net::LoopGroup& loops);
  // Closes the MQTT connections, then the core streams. Idempotent.
  void Stop();

  // Valid after a successful Start.
  const net::SocketAddress& mqtt_address() const { return server_->address(); }
  std::shared_ptr<const net::ConnectionStats> mqtt_stats() const { return server_->stats(); }

 private:
  EdgeConfig config_;
  std::unique_ptr<CoreClient> core_;
  std::unique_ptr<MqttServer> server_;
  std::atomic<MqttServer*> deliver_to_{nullptr};
};

}  // namespace herald::edge
