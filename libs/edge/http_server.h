// The edge's HTTP listener (http.listen): today it serves MQTT over WebSocket on `/mqtt`
// (subprotocol "mqtt", MQTT 5.0/3.1.1 §6: one or more MQTT packets per binary message, a packet
// may span messages). Every other request gets 404.
//
// Threading: connections live on the edge's loops; see MqttServer for the session side.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "libs/edge/mqtt_server.h"
#include "libs/net/event_loop.h"
#include "libs/net/listener.h"

namespace herald::edge {

struct HttpServerOptions {
  std::string listen = "0.0.0.0:8080";
  std::shared_ptr<net::TlsContext> tls;  // null: plain HTTP
  // Path of MQTT over WebSocket.
  std::string mqtt_path = "/mqtt";
  // Largest WebSocket message accepted (an MQTT packet may not need more).
  size_t max_message_bytes = 1 << 20;
  int64_t max_connections = 0;
};

class HttpServer {
 public:
  // `mqtt` must outlive the server.
  HttpServer(HttpServerOptions options, MqttServer* mqtt);
  ~HttpServer();

  absl::Status Start(net::LoopGroup& loops);
  void Stop();
  const net::SocketAddress& address() const;

 private:
  // Shared with the connections, which may outlive the server until the loops stop.
  struct Shared {
    HttpServerOptions options;
    std::mutex mu;
    MqttServer* mqtt = nullptr;  // null once stopped
  };
  std::shared_ptr<Shared> shared_;
  std::unique_ptr<net::ListenerGroup> listener_;
};

}  // namespace herald::edge
