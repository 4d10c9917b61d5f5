// The edge's MQTT 3.1.1 / 5.0 server: a listener on the edge's event loops, one MqttSession per
// connection, and the local fan-out of messages the core delivers to the sessions subscribed.
//
// Scope of this slice (see docs/mqtt.md): clean sessions only (Session Present 0, session expiry
// treated as 0), QoS 0 and 1 both ways (inbound QoS 2 refused), no retained messages, wills,
// topic aliases, No Local, subscription identifiers or shared subscriptions.
//
// Threading: a session lives on its connection's loop and is used only there. The subscription
// index (a TopicTrie) and the client-id registry are shared by the loops under a mutex; a
// delivery is matched on the calling thread and posted to each matching session's loop.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "herald/v1/common.pb.h"
#include "libs/edge/core_api.h"
#include "libs/net/event_loop.h"
#include "libs/net/listener.h"

namespace herald::edge {

struct MqttServerOptions {
  std::string listen = "0.0.0.0:1883";
  // Outbound QoS 1 messages in flight per client when it sets no Receive Maximum (3.1.1).
  uint16_t default_inflight = 64;
  // Messages queued behind a full in-flight window; beyond this the client is disconnected.
  size_t max_queued_messages = 1000;
  // Largest packet accepted from a client (also announced as Maximum Packet Size in 5.0).
  uint32_t maximum_packet_size = 1 << 20;
  // A client that sends no CONNECT within this time is closed.
  std::chrono::milliseconds connect_timeout{10000};
  int64_t max_connections = 0;
};

class MqttServer {
 public:
  // `core` must outlive the server.
  MqttServer(MqttServerOptions options, CoreApi* core);
  ~MqttServer();

  // Binds the listener on every loop of `loops` (running, and outliving the server).
  absl::Status Start(net::LoopGroup& loops);
  // Stops accepting, closes every client connection and waits (bounded) for them to go.
  void Stop();

  // Hands messages the core delivered to the local subscribers. Thread-safe.
  void Deliver(const std::vector<const v1::Message*>& messages);

  const net::SocketAddress& address() const;
  std::shared_ptr<const net::ConnectionStats> stats() const;

  struct Hub;  // shared with the sessions

 private:
  MqttServerOptions options_;
  std::shared_ptr<Hub> hub_;
  std::unique_ptr<net::ListenerGroup> listener_;
  net::LoopGroup* loops_ = nullptr;
};

}  // namespace herald::edge
