#include "libs/edge/edge.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <random>

#include "libs/auth/acl_file.h"
#include "libs/auth/password_file.h"
#include "libs/common/strings.h"

namespace herald::edge {

void EdgeConfig::AddOptions(ConfigSchema& schema, bool standalone) {
  schema.Add("mqtt.listen", &mqtt_listen,
             "Address of the MQTT 3.1.1/5.0 listener (TCP); empty: none.");
  schema.Add("mqtt.tls_listen", &mqtt_tls_listen,
             "Address of the MQTT over TLS listener, used when tls.cert_file is set.");
  schema.Add("http.listen", &http_listen,
             "Address of the HTTP listener (MQTT over WebSocket at /mqtt); empty: none.");
  schema.Add("tls.cert_file", &tls_cert_file,
             "PEM certificate chain of the MQTT TLS listener; empty: no TLS listener.");
  schema.Add("tls.key_file", &tls_key_file, "PEM private key for tls.cert_file.");
  schema.Add("mqtt.password_file", &password_file,
             "Password file (heraldctl passwd); empty: no password check.");
  schema.Add("mqtt.acl_file", &acl_file, "ACL file; empty: every client may do everything.");
  schema.Add("mqtt.allow_anonymous", &allow_anonymous,
             "With a password file: whether clients without a username may connect.");
  schema.Add("mqtt.max_session_expiry", &max_session_expiry_s,
             "Upper bound of a session's expiry interval in seconds (3.1.1 persistent sessions "
             "get it).");
  schema.Add("mqtt.max_keep_alive", &max_keep_alive_s,
             "Upper bound of a client's keep-alive in seconds (announced as Server Keep Alive); "
             "0: none.");
  schema.Add("mqtt.max_inflight", &max_inflight,
             "Outbound QoS 1/2 messages in flight per client without a Receive Maximum.");
  schema.Add("mqtt.max_queued_messages", &max_queued_messages,
             "Messages queued for a client behind its in-flight window; beyond it the client is "
             "disconnected.");
  schema.Add("mqtt.max_packet_size", &max_packet_size, "Largest MQTT packet accepted.");
  schema.Add("mqtt.topic_alias_maximum", &topic_alias_maximum,
             "Topic aliases a 5.0 client may use towards the server.");
  schema.Add("mqtt.sys_interval", &sys_interval,
             "How often $SYS/broker/... topics are refreshed; 0: no $SYS topics.");
  if (standalone) {
    schema.Add("edge.core", &core_addresses,
               "Core node Broker API addresses (host:port, comma-separated).");
    schema.Add("edge.partitions", &partitions,
               "The cluster's partition count; must equal the core's cluster.partitions.");
    grpc_tls.AddOptions(schema);
  }
}

Edge::Edge(EdgeConfig config) : config_(std::move(config)) {}

Edge::~Edge() { Stop(); }

absl::Status Edge::Start(net::LoopGroup& loops) {
  if (config_.partitions <= 0) return absl::InvalidArgumentError("edge.partitions must be > 0");
  auto core_credentials = config_.grpc_tls.ChannelCredentials();
  if (!core_credentials.ok()) return core_credentials.status();
  MqttServerOptions so;
  so.listen = config_.mqtt_listen;
  if (!config_.tls_cert_file.empty()) {
    net::TlsServerOptions to;
    to.cert_file = config_.tls_cert_file;
    to.key_file = config_.tls_key_file;
    auto tls = net::TlsContext::NewServer(to);
    if (!tls.ok()) return tls.status();
    so.tls = *tls;
    so.tls_listen = config_.mqtt_tls_listen;
  }
  if (!config_.password_file.empty()) {
    auto passwords = auth::PasswordFile::Load(config_.password_file);
    if (!passwords.ok()) return passwords.status();
    auto shared = std::make_shared<const auth::PasswordFile>(std::move(*passwords));
    so.authenticate = [shared](const std::string& user, const std::string& password) {
      return shared->Verify(user, password);
    };
    so.allow_anonymous = config_.allow_anonymous;
  }
  if (!config_.acl_file.empty()) {
    auto acl = auth::AclFile::Load(config_.acl_file);
    if (!acl.ok()) return acl.status();
    auto shared = std::make_shared<const auth::AclFile>(std::move(*acl));
    auto info = [](std::string_view client_id, const std::optional<std::string>& user) {
      auth::ClientInfo ci;
      ci.client_id = client_id;
      if (user) ci.username = std::string_view(*user);
      return ci;
    };
    so.may_publish = [shared, info](std::string_view c, const std::optional<std::string>& u,
                                    std::string_view topic) {
      return shared->CanPublish(info(c, u), topic);
    };
    so.may_subscribe = [shared, info](std::string_view c, const std::optional<std::string>& u,
                                      std::string_view filter) {
      return shared->CanSubscribe(info(c, u), filter);
    };
    so.may_receive = [shared, info](std::string_view c, const std::optional<std::string>& u,
                                    std::string_view topic) {
      return shared->CanReceive(info(c, u), topic);
    };
  }
  so.max_session_expiry_s = config_.max_session_expiry_s;
  so.max_keep_alive_s = static_cast<uint16_t>(std::min<uint32_t>(config_.max_keep_alive_s, 65535));
  so.default_inflight = static_cast<uint16_t>(std::clamp<uint32_t>(config_.max_inflight, 1, 65535));
  so.max_queued_messages = config_.max_queued_messages;
  so.maximum_packet_size = static_cast<uint32_t>(
      std::clamp<uint64_t>(config_.max_packet_size.bytes, 64, 268435455));
  so.topic_alias_maximum =
      static_cast<uint16_t>(std::min<uint32_t>(config_.topic_alias_maximum, 65535));
  so.sys_interval = absl::ToChronoMilliseconds(config_.sys_interval);

  CoreClientOptions co;
  co.addresses = config_.core_addresses;
  co.partitions = static_cast<uint32_t>(config_.partitions);
  co.credentials = *core_credentials;
  std::random_device rd;
  co.edge_id = StrCat("edge-", static_cast<uint64_t>(rd()));
  so.edge_id = co.edge_id;
  core_ = std::make_unique<CoreClient>(co, [this](const std::vector<v1::Message*>& m) {
    if (MqttServer* s = deliver_to_.load()) s->Deliver(m);
  });
  server_ = std::make_unique<MqttServer>(so, core_.get());
  deliver_to_.store(server_.get());
  if (absl::Status s = core_->Start(); !s.ok()) return s;
  if (!core_->WaitUntilAttached(std::chrono::seconds(10))) {
    spdlog::warn("edge: not every partition has a serving core node yet; starting anyway");
  }
  if (absl::Status s = server_->Start(loops); !s.ok()) return s;
  if (!config_.http_listen.empty()) {
    HttpServerOptions ho;
    ho.listen = config_.http_listen;
    ho.max_message_bytes = so.maximum_packet_size;
    http_ = std::make_unique<HttpServer>(ho, server_.get());
    if (absl::Status s = http_->Start(loops); !s.ok()) return s;
  }
  return absl::OkStatus();
}

void Edge::Stop() {
  if (http_) http_->Stop();
  if (server_) server_->Stop();
  if (core_) core_->Shutdown();
  deliver_to_.store(nullptr);
  http_.reset();
  server_.reset();
  core_.reset();
}

}  // namespace herald::edge
