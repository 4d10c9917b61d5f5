#include "libs/edge/edge.h"

#include <spdlog/spdlog.h>

#include <random>

#include "libs/common/strings.h"

namespace herald::edge {

void EdgeConfig::AddOptions(ConfigSchema& schema, bool standalone) {
  schema.Add("mqtt.listen", &mqtt_listen, "Address of the MQTT 3.1.1/5.0 listener (TCP).");
  if (standalone) {
    schema.Add("edge.core", &core_addresses,
               "Core node Broker API addresses (host:port, comma-separated).");
    schema.Add("edge.partitions", &partitions,
               "The cluster's partition count; must equal the core's cluster.partitions.");
  }
}

Edge::Edge(EdgeConfig config) : config_(std::move(config)) {}

Edge::~Edge() { Stop(); }

absl::Status Edge::Start(net::LoopGroup& loops) {
  if (config_.partitions <= 0) return absl::InvalidArgumentError("edge.partitions must be > 0");
  CoreClientOptions co;
  co.addresses = config_.core_addresses;
  co.partitions = static_cast<uint32_t>(config_.partitions);
  std::random_device rd;
  co.edge_id = StrCat("edge-", static_cast<uint64_t>(rd()));
  core_ = std::make_unique<CoreClient>(co, [this](const std::vector<const v1::Message*>& m) {
    if (MqttServer* s = deliver_to_.load()) s->Deliver(m);
  });
  MqttServerOptions so;
  so.listen = config_.mqtt_listen;
  server_ = std::make_unique<MqttServer>(so, core_.get());
  deliver_to_.store(server_.get());
  if (absl::Status s = core_->Start(); !s.ok()) return s;
  if (!core_->WaitUntilAttached(std::chrono::seconds(10))) {
    spdlog::warn("edge: not every partition has a serving core node yet; starting anyway");
  }
  return server_->Start(loops);
}

void Edge::Stop() {
  if (server_) server_->Stop();
  if (core_) core_->Shutdown();
  deliver_to_.store(nullptr);
  server_.reset();
  core_.reset();
}

}  // namespace herald::edge
