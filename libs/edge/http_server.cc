#include "libs/edge/http_server.h"

#include <spdlog/spdlog.h>

#include "libs/common/logging.h"
#include "libs/net/connection.h"
#include "libs/protocol/http/http1.h"
#include "libs/protocol/ws/websocket.h"

namespace herald::edge {

namespace {

// MQTT bytes out as WebSocket binary frames (RFC 6455 §5.6).
class WsTransport final : public MqttServer::Transport {
 public:
  explicit WsTransport(net::Connection& c) : conn_(c) {}
  bool Send(std::string bytes) override {
    if (closed_) return false;
    return conn_.Send(ws::EncodeFrame(ws::Opcode::kBinary, bytes));
  }
  void Close() override {
    if (closed_) return;
    closed_ = true;
    conn_.Send(ws::EncodeClose(ws::kCloseNormal));
    conn_.Close();
  }
  bool closed() const { return closed_; }
  void mark_closed() { closed_ = true; }

 private:
  net::Connection& conn_;
  bool closed_ = false;
};

template <typename Shared>
class HttpHandler final : public net::ConnectionHandler {
 public:
  explicit HttpHandler(std::shared_ptr<Shared> shared)
      : shared_(std::move(shared)),
        options_(shared_->options),
        reader_(ws::ReaderOptions{.role = ws::Role::kServer,
                                  .max_message_bytes = options_.max_message_bytes}) {}

  void OnData(net::Connection& conn, std::string_view data) override {
    if (session_) return OnWebSocket(conn, data);
    std::vector<http::Request> requests;
    size_t consumed = 0;
    absl::Status s = parser_.Feed(data, &requests, &consumed);
    if (!s.ok()) {
      http::Response r;
      r.status = parser_.error_status();
      r.body = std::string(s.message());
      conn.Send(http::SerializeResponse(r, false));
      conn.Close();
      return;
    }
    for (size_t i = 0; i < requests.size(); ++i) {
      const http::Request& req = requests[i];
      if (req.path != options_.mqtt_path) {
        http::Response r;
        r.status = 404;
        r.body = "not found\n";
        conn.Send(http::SerializeResponse(r, req.keep_alive && !req.upgrade));
        if (!req.keep_alive || req.upgrade) return conn.Close();
        continue;
      }
      ws::HandshakeResult hs = ws::AcceptHandshake(req, {"mqtt", "mqttv3.1"});
      if (!hs.ok()) {
        spdlog::debug("http {}: websocket handshake refused: {}", conn.peer().ToString(),
                      hs.status);
        conn.Send(hs.response);
        return conn.Close();
      }
      if (hs.subprotocol_offered && !hs.subprotocol) {
        conn.Send(ws::RejectHandshake(400, "MQTT over WebSocket needs subprotocol \"mqtt\"\n"));
        return conn.Close();
      }
      auto transport = std::make_unique<WsTransport>(conn);
      transport_ = transport.get();
      {
        std::lock_guard<std::mutex> l(shared_->mu);
        if (shared_->mqtt != nullptr) session_ = shared_->mqtt->Attach(conn, std::move(transport));
      }
      if (!session_) {
        conn.Send(ws::RejectHandshake(503, "server stopping\n"));
        return conn.Close();
      }
      conn.Send(hs.response);
      // Bytes after the upgrade request are WebSocket frames.
      if (consumed < data.size()) OnWebSocket(conn, data.substr(consumed));
      return;
    }
  }

  void OnClose(net::Connection&, const absl::Status& reason) override {
    if (session_) {
      transport_->mark_closed();
      session_->OnClosed(reason);
      session_.reset();
    }
  }

 private:
  void OnWebSocket(net::Connection& conn, std::string_view data) {
    events_.clear();
    std::optional<ws::Error> error = reader_.Feed(data, &events_);
    for (auto& e : events_) {
      if (transport_->closed()) return;
      switch (e.type) {
        case ws::Event::Type::kBinary:
          session_->OnBytes(e.payload);
          break;
        case ws::Event::Type::kText:
          // MQTT over WebSocket is binary only (MQTT 5.0 §6.0).
          conn.Send(ws::EncodeClose(ws::kCloseUnsupportedData, "MQTT needs binary frames"));
          transport_->mark_closed();
          conn.Close();
          return;
        case ws::Event::Type::kPing:
          conn.Send(ws::EncodeFrame(ws::Opcode::kPong, e.payload));
          break;
        case ws::Event::Type::kPong:
          break;
        case ws::Event::Type::kClose:
          // §5.5.1: answer with a Close, then close the TCP connection.
          if (!transport_->closed()) {
            conn.Send(ws::EncodeClose(ws::kCloseNormal));
            transport_->mark_closed();
          }
          conn.Close();
          return;
      }
    }
    if (error && !transport_->closed()) {
      spdlog::debug("ws {}: {}", conn.peer().ToString(), error->message);
      conn.Send(ws::EncodeClose(error->close_code, ""));
      transport_->mark_closed();
      conn.Close();
    }
  }

  std::shared_ptr<Shared> shared_;
  const HttpServerOptions& options_;  // shared_'s
  http::RequestParser parser_;
  ws::MessageReader reader_;
  std::vector<ws::Event> events_;
  std::unique_ptr<MqttServer::Endpoint> session_;
  WsTransport* transport_ = nullptr;
};

}  // namespace

HttpServer::HttpServer(HttpServerOptions options, MqttServer* mqtt)
    : shared_(std::make_shared<Shared>()) {
  shared_->options = std::move(options);
  shared_->mqtt = mqtt;
}

HttpServer::~HttpServer() { Stop(); }

absl::Status HttpServer::Start(net::LoopGroup& loops) {
  const HttpServerOptions& options = shared_->options;
  auto address = net::SocketAddress::Parse(options.listen);
  if (!address.ok()) return address.status();
  net::ListenerOptions lo;
  lo.max_connections = options.max_connections;
  lo.tls = options.tls;
  auto listener = net::ListenerGroup::Listen(
      loops, *address,
      [shared = shared_](net::Connection&) -> std::unique_ptr<net::ConnectionHandler> {
        return std::make_unique<HttpHandler<Shared>>(shared);
      },
      lo);
  if (!listener.ok()) return listener.status();
  listener_ = std::move(*listener);
  spdlog::info("http listening on {} (MQTT over WebSocket at {})",
               listener_->address().ToString(), options.mqtt_path);
  return absl::OkStatus();
}

void HttpServer::Stop() {
  if (listener_) listener_->Close();
  std::lock_guard<std::mutex> l(shared_->mu);
  shared_->mqtt = nullptr;
}

const net::SocketAddress& HttpServer::address() const { return listener_->address(); }

}  // namespace herald::edge
