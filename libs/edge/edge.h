// The edge component of herald and herald-edge: the MQTT server (mqtt_server.h) and the HTTP
// listener carrying MQTT over WebSocket (http_server.h) in front of a CoreClient
// (core_client.h) talking to the core's Broker API.
//
// Threading: Start and Stop are called from the main thread; Stop before the loops stop.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "libs/common/config.h"
#include "libs/common/grpc_tls.h"
#include "libs/edge/core_client.h"
#include "libs/edge/http_server.h"
#include "libs/edge/mqtt_server.h"
#include "libs/net/event_loop.h"

namespace herald::edge {

struct EdgeConfig {
  // MQTT listeners (mqtt.listen, mqtt.tls_listen) and the HTTP one (http.listen).
  std::string mqtt_listen = "0.0.0.0:1883";
  std::string mqtt_tls_listen = "0.0.0.0:8883";
  std::string http_listen = "0.0.0.0:8080";
  // Server certificate (tls.cert_file, tls.key_file): when set, MQTT over TLS listens on
  // mqtt.tls_listen.
  std::string tls_cert_file;
  std::string tls_key_file;
  // Authentication and authorization files (formats in docs/configuration.md).
  std::string password_file;
  std::string acl_file;
  bool allow_anonymous = true;
  // Limits.
  uint32_t max_session_expiry_s = 7 * 24 * 3600;
  uint32_t max_keep_alive_s = 0;
  uint32_t max_inflight = 64;
  uint32_t max_queued_messages = 1000;
  ByteSize max_packet_size{1 << 20};
  uint32_t topic_alias_maximum = 64;
  absl::Duration sys_interval = absl::Seconds(10);
  // Core node addresses (edge.core); the all-in-one herald sets its own core's address.
  std::vector<std::string> core_addresses = {"127.0.0.1:7070"};
  // The cluster's partition count (edge.partitions; the all-in-one herald uses its core's).
  // The default is herald-core's default cluster.partitions.
  int partitions = 64;
  // Mutual TLS towards the core nodes (grpc.tls.*; the all-in-one herald copies its core's).
  GrpcTlsConfig grpc_tls;

  // Registers the mqtt.*, http.* and tls.* options, and with `standalone` also "edge.core",
  // "edge.partitions" and grpc.tls.*.
  void AddOptions(ConfigSchema& schema, bool standalone);
};

class Edge {
 public:
  explicit Edge(EdgeConfig config);
  ~Edge();  // Stop()

  // Loads the auth files, connects to the core and starts listening on `loops` (running; they
  // outlive the edge).
  absl::Status Start(net::LoopGroup& loops);
  // Closes the client connections, then the core streams. Idempotent.
  void Stop();

  // Valid after a successful Start.
  const net::SocketAddress& mqtt_address() const { return server_->address(); }
  std::shared_ptr<const net::ConnectionStats> mqtt_stats() const { return server_->stats(); }

 private:
  EdgeConfig config_;
  std::unique_ptr<CoreClient> core_;
  std::unique_ptr<MqttServer> server_;
  std::unique_ptr<HttpServer> http_;
  std::atomic<MqttServer*> deliver_to_{nullptr};
};

}  // namespace herald::edge
