// The edge's MQTT 3.1.1 / 5.0 server: listeners on the edge's event loops, one MqttSession per
// connection, and the local fan-out of messages the core delivers to the sessions subscribed.
//
// Sessions: a client that asks for a session that outlives its connection (5.0 Session Expiry
// Interval > 0, 3.1.1 Clean Session 0) or that has a will message gets a session in the core
// (CoreApi::OpenSession); its subscriptions, delivery cursor and in-flight state are written
// there, and on reconnect (through any edge) the messages it missed are read from the partition
// logs after its cursor. Other clients' sessions live only on their connection. See
// docs/mqtt.md for every feature and its status.
//
// Threading: a session lives on its connection's loop and is used only there. The subscription
// index (TopicTries) and the client-id registry are shared by the loops under a mutex; a
// delivery is matched on the calling thread and posted to each matching session's loop.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "herald/v1/common.pb.h"
#include "libs/edge/core_api.h"
#include "libs/net/connection.h"
#include "libs/net/event_loop.h"
#include "libs/net/listener.h"

namespace herald::edge {

struct MqttServerOptions {
  // TCP listener; empty = none.
  std::string listen = "0.0.0.0:1883";
  // TLS listener (used when `tls` is set); empty = none.
  std::string tls_listen;
  std::shared_ptr<net::TlsContext> tls;
  // Identifies this edge as the owner of the sessions it serves.
  std::string edge_id = "edge";
  // Outbound QoS 1/2 messages in flight per client when it sets no Receive Maximum (3.1.1).
  uint16_t default_inflight = 64;
  // Messages queued behind a full in-flight window; beyond this the client is disconnected.
  size_t max_queued_messages = 1000;
  // Largest packet accepted from a client (also announced as Maximum Packet Size in 5.0).
  uint32_t maximum_packet_size = 1 << 20;
  // A client that sends no CONNECT within this time is closed.
  std::chrono::milliseconds connect_timeout{10000};
  int64_t max_connections = 0;
  // Topic aliases a 5.0 client may use towards the server (Topic Alias Maximum in CONNACK).
  uint16_t topic_alias_maximum = 64;
  // Upper bound of a session's expiry interval, seconds (a 3.1.1 persistent session gets this).
  uint32_t max_session_expiry_s = 7 * 24 * 3600;
  // Upper bound of the keep-alive a client may ask for (5.0: Server Keep Alive when exceeded;
  // a client asking for 0 gets this too); 0 = no bound.
  uint16_t max_keep_alive_s = 0;
  // How often a connected persistent session commits its delivery cursor to the core.
  std::chrono::milliseconds cursor_commit_interval{1000};
  // Messages read per Fetch when a resumed session catches up.
  uint32_t catchup_page = 200;
  // How often $SYS/broker/... topics are refreshed; 0 = no $SYS topics.
  std::chrono::milliseconds sys_interval{10000};
  // Authentication: whether (username, password) may connect; called on a worker thread (it may
  // be slow). Unset: everyone may connect. A client without a username is checked against
  // `allow_anonymous` instead.
  std::function<bool(const std::string& username, const std::string& password)> authenticate;
  bool allow_anonymous = true;
  // Authorization of PUBLISH topics and SUBSCRIBE filters (without a `$share/g/` prefix), on the
  // loop thread; unset: everything is allowed.
  using AccessCheck = std::function<bool(std::string_view client_id,
                                         const std::optional<std::string>& username,
                                         std::string_view topic_or_filter)>;
  AccessCheck may_publish;
  AccessCheck may_subscribe;
  // Whether a message on this topic may be sent to the client (deny rules inside a filter that
  // was allowed); unset: yes.
  AccessCheck may_receive;
};

class MqttServer {
 public:
  // `core` must outlive the server.
  MqttServer(MqttServerOptions options, CoreApi* core);
  ~MqttServer();

  // Binds the listeners on every loop of `loops` (running, and outliving the server).
  absl::Status Start(net::LoopGroup& loops);
  // Stops accepting, closes every client connection and waits (bounded) for them to go.
  void Stop();

  // Hands messages the core delivered to the local subscribers (moving them out). Thread-safe.
  void Deliver(const std::vector<v1::Message*>& messages);

  // The MQTT session for a connection that another protocol's handler accepted (MQTT over
  // WebSocket): bytes in through `OnBytes`, bytes out through `send`, closing through `close`.
  // Loop thread of `conn` only.
  class Transport {
   public:
    virtual ~Transport() = default;
    virtual bool Send(std::string bytes) = 0;
    virtual void Close() = 0;
  };
  class Endpoint {
   public:
    virtual ~Endpoint() = default;
    virtual void OnBytes(std::string_view data) = 0;
    virtual void OnClosed(const absl::Status& reason) = 0;
  };
  // nullptr when the server is stopping.
  std::unique_ptr<Endpoint> Attach(net::Connection& conn, std::unique_ptr<Transport> transport);

  // Valid after Start: the TCP (and TLS) listener addresses.
  const net::SocketAddress& address() const;
  const net::SocketAddress& tls_address() const;
  std::shared_ptr<const net::ConnectionStats> stats() const;
  int64_t connected_clients() const;

  struct Hub;  // shared with the sessions

 private:
  void PublishSys();

  MqttServerOptions options_;
  std::shared_ptr<Hub> hub_;
  std::shared_ptr<std::unique_ptr<net::Timer>> sys_timer_;  // loop 0
  std::unique_ptr<net::ListenerGroup> listener_;
  std::unique_ptr<net::ListenerGroup> tls_listener_;
  net::LoopGroup* loops_ = nullptr;
};

}  // namespace herald::edge
