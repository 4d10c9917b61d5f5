#include "libs/admin/admin_server.h"

#include <prometheus/text_serializer.h>

#include "libs/common/strings.h"

namespace herald::admin {

// One admin HTTP connection: parses requests, answers each in order.
class AdminServer::Session : public net::ConnectionHandler {
 public:
  Session(const AdminServer& server, net::Connection& conn)
      : server_(server), parser_(server.options_.limits) {
    idle_ = std::make_unique<net::Timer>(conn.loop(), [&conn] { conn.Close(); });
    idle_->Start(server.options_.idle_timeout);
  }

  void OnData(net::Connection& conn, std::string_view data) override {
    requests_.clear();
    absl::Status s = parser_.Feed(data, &requests_);
    for (const http::Request& req : requests_) {
      http::Response resp = server_.Handle(req);
      bool keep = req.keep_alive && !req.upgrade;
      conn.Send(http::SerializeResponse(resp, keep, req.method == "HEAD"));
      if (!keep) {
        conn.Close();
        return;
      }
    }
    if (!s.ok()) {
      http::Response resp{parser_.error_status(),
                          {{"Content-Type", "text/plain; charset=utf-8"}},
                          StrCat(s.message(), "\n")};
      conn.Send(http::SerializeResponse(resp, false));
      conn.Close();
      return;
    }
    if (!requests_.empty()) idle_->Start(server_.options_.idle_timeout);
  }

  void OnClose(net::Connection&, const absl::Status&) override { idle_.reset(); }

 private:
  const AdminServer& server_;
  http::RequestParser parser_;
  std::vector<http::Request> requests_;
  std::unique_ptr<net::Timer> idle_;
};

AdminServer::AdminServer(std::shared_ptr<MetricsRegistry> registry)
    : registry_(std::move(registry)) {}

AdminServer::~AdminServer() { Stop(); }

void AdminServer::Route(const std::string& path, Handler handler) {
  routes_[path] = std::move(handler);
}

void AdminServer::AddStandardRoutes(std::function<bool()> ready) {
  auto text = [](int status, std::string body) {
    return http::Response{status, {{"Content-Type", "text/plain; charset=utf-8"}}, std::move(body)};
  };
  Route("/healthz", [text](const http::Request&) { return text(200, "ok\n"); });
  Route("/readyz", [text, ready](const http::Request&) {
    return ready() ? text(200, "ready\n") : text(503, "not ready\n");
  });
  auto registry = registry_;
  Route("/metrics", [registry](const http::Request&) {
    prometheus::TextSerializer serializer;
    return http::Response{200,
                          {{"Content-Type", "text/plain; version=0.0.4; charset=utf-8"}},
                          serializer.Serialize(registry->Collect())};
  });
}

http::Response AdminServer::Handle(const http::Request& req) const {
  auto it = routes_.find(req.path);
  if (it == routes_.end()) {
    return http::Response{404, {{"Content-Type", "text/plain; charset=utf-8"}}, "not found\n"};
  }
  if (req.method != "GET" && req.method != "HEAD") {
    return http::Response{405,
                          {{"Allow", "GET, HEAD"}, {"Content-Type", "text/plain; charset=utf-8"}},
                          "method not allowed\n"};
  }
  return it->second(req);
}

absl::Status AdminServer::Start(net::LoopGroup& loops, const AdminServerOptions& options) {
  options_ = options;
  net::ListenerOptions lo;
  lo.max_connections = options.max_connections;
  lo.connection.write_queue_limit = 16 << 20;  // a large /metrics answer fits
  auto l = net::ListenerGroup::Listen(
      loops, options.address,
      [this](net::Connection& c) { return std::make_unique<Session>(*this, c); }, lo);
  if (!l.ok()) return l.status();
  listener_ = std::move(*l);
  return absl::OkStatus();
}

void AdminServer::Stop() {
  if (listener_) listener_->Close();
}

}  // namespace herald::admin
