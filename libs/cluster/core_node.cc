#include "libs/cluster/core_node.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>

#include "libs/common/strings.h"

namespace herald::cluster {

void CoreNodeConfig::AddOptions(ConfigSchema& schema) {
  schema.Add("core.node_id", &node_id, "This core node's id (> 0), unique in the cluster.");
  schema.Add("core.listen", &listen,
             "gRPC address of this core node (Broker API for edges, Raft transport for peers).");
  schema.Add("cluster.id", &cluster_id,
             "Cluster name; nodes refuse Raft traffic from another cluster.");
  schema.Add("cluster.peers", &peers,
             "Every core node as id=host:port (this one included), comma-separated. Empty: a "
             "single-node cluster.");
  schema.Add("cluster.partitions", &partitions,
             "Topic partitions; fixed when the cluster is created.");
  schema.Add("cluster.replication_factor", &replication_factor,
             "Replicas per partition (capped at the number of nodes).");
  schema.Add("raft.tick", &raft_tick, "Raft tick interval.");
  schema.Add("raft.election_ticks", &raft_election_ticks,
             "Ticks without a leader before an election (randomized up to twice this).");
  schema.Add("session.lease", &session_lease,
             "MQTT session owner lease: an edge that does not renew a connected session within "
             "it is treated as disconnected (will delay and session expiry start).");
  schema.Add("session.timer_interval", &session_timer_interval,
             "How often a partition leader checks session leases, will delays and expiry.");
  schema.Add("storage.sync", &storage_sync,
             "fsync every Raft write batch. Turning it off risks acknowledged messages on power "
             "loss.");
  schema.Add("storage.block_cache", &storage_block_cache, "RocksDB block cache size.");
  grpc_tls.AddOptions(schema);
}

std::vector<raft::NodeId> PlaceReplicas(uint32_t partition, const std::vector<raft::NodeId>& nodes,
                                        int replication_factor) {
  std::vector<raft::NodeId> sorted = nodes;
  std::sort(sorted.begin(), sorted.end());
  size_t n = sorted.size();
  size_t rf = std::min<size_t>(n, static_cast<size_t>(std::max(1, replication_factor)));
  std::vector<raft::NodeId> out;
  for (size_t i = 0; i < rf; ++i) out.push_back(sorted[(partition + i) % n]);
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

absl::StatusOr<std::map<raft::NodeId, std::string>> ParsePeers(const CoreNodeConfig& c) {
  std::map<raft::NodeId, std::string> peers;
  for (const std::string& p : c.peers) {
    size_t eq = p.find('=');
    uint64_t id = 0;
    size_t colon = p.rfind(':');
    uint32_t port = 0;
    if (eq == std::string::npos || std::from_chars(p.data(), p.data() + eq, id).ec != std::errc() ||
        id == 0 || colon == std::string::npos || colon < eq + 2 ||
        std::from_chars(p.data() + colon + 1, p.data() + p.size(), port).ec != std::errc() ||
        port == 0 || port > 65535) {
      return absl::InvalidArgumentError(StrCat("cluster.peers: '", p, "' is not id=host:port"));
    }
    if (!peers.emplace(id, p.substr(eq + 1)).second) {
      return absl::InvalidArgumentError(StrCat("cluster.peers: node ", id, " listed twice"));
    }
  }
  if (peers.empty()) peers[c.node_id] = c.listen;
  if (peers.count(c.node_id) == 0) {
    return absl::InvalidArgumentError(
        StrCat("cluster.peers does not list this node (core.node_id ", c.node_id, ")"));
  }
  return peers;
}

}  // namespace

CoreNode::~CoreNode() { Stop(); }

absl::Status CoreNode::Start(const std::string& data_dir) {
  if (config_.node_id == 0) return absl::InvalidArgumentError("core.node_id must be > 0");
  if (config_.partitions <= 0 || config_.partitions > 65536) {
    return absl::InvalidArgumentError("cluster.partitions must be in 1..65536");
  }
  auto peers = ParsePeers(config_);
  if (!peers.ok()) return peers.status();
  std::vector<raft::NodeId> nodes;
  for (const auto& [id, addr] : *peers) nodes.push_back(id);
  peers_single_node_ = nodes.size() == 1;
  auto server_credentials = config_.grpc_tls.ServerCredentials();
  if (!server_credentials.ok()) return server_credentials.status();
  auto channel_credentials = config_.grpc_tls.ChannelCredentials();
  if (!channel_credentials.ok()) return channel_credentials.status();

  storage::EngineOptions eo;
  eo.path = data_dir + "/db";
  eo.sync = config_.storage_sync;
  eo.block_cache_bytes = config_.storage_block_cache.bytes;
  auto engine = storage::Engine::Open(eo);
  if (!engine.ok()) return engine.status();
  engine_ = std::move(*engine);

  transport_ = std::make_unique<GrpcRaftTransport>(config_.node_id, config_.cluster_id, *peers,
                                                   *channel_credentials);
  RaftHostOptions ho;
  ho.node_id = config_.node_id;
  ho.tick = std::chrono::milliseconds(absl::ToInt64Milliseconds(config_.raft_tick));
  ho.election_ticks = config_.raft_election_ticks;
  host_ = std::make_unique<RaftHost>(*engine_, *transport_, ho);
  int replicas = 0;
  for (uint32_t p = 0; p < static_cast<uint32_t>(config_.partitions); ++p) {
    std::vector<raft::NodeId> voters = PlaceReplicas(p, nodes, config_.replication_factor);
    if (std::find(voters.begin(), voters.end(), config_.node_id) == voters.end()) continue;
    absl::Status s = host_->AddPartitionGroup(GroupForPartition(p), p, voters);
    if (!s.ok()) return s;
    ++replicas;
  }

  raft_service_ = std::make_unique<RaftTransportService>(
      config_.cluster_id, config_.node_id,
      [this](GroupId g, raft::Message m) { host_->Deliver(g, std::move(m)); });
  BrokerServiceOptions bo;
  bo.partition_count = static_cast<uint32_t>(config_.partitions);
  bo.broker_addresses = *peers;
  SessionManagerOptions so;
  so.node_id = config_.node_id;
  so.partition_count = bo.partition_count;
  so.broker_addresses = *peers;
  so.channel_credentials = *channel_credentials;
  so.lease = std::chrono::milliseconds(absl::ToInt64Milliseconds(config_.session_lease));
  so.timer_interval =
      std::chrono::milliseconds(absl::ToInt64Milliseconds(config_.session_timer_interval));
  sessions_ = std::make_unique<SessionManager>(*host_, so);
  broker_service_ = std::make_unique<BrokerService>(*host_, bo, Clock::Real(), sessions_.get());
  AdminServiceOptions ao;
  ao.node_id = config_.node_id;
  ao.cluster_id = config_.cluster_id;
  ao.partition_count = static_cast<uint32_t>(config_.partitions);
  ao.replication_factor = config_.replication_factor;
  ao.node_addresses = *peers;
  admin_service_ = std::make_unique<AdminService>(*host_, ao);

  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config_.listen, *server_credentials, &port);
  builder.RegisterService(raft_service_.get());
  builder.RegisterService(broker_service_.get());
  builder.RegisterService(admin_service_.get());
  builder.SetMaxReceiveMessageSize(64 << 20);
  server_ = builder.BuildAndStart();
  if (!server_ || port == 0) {
    return absl::UnavailableError(StrCat("core.listen ", config_.listen, ": cannot listen"));
  }
  address_ = config_.listen.substr(0, config_.listen.rfind(':')) + ":" + std::to_string(port);
  absl::Status s = host_->Start();
  if (!s.ok()) return s;
  sessions_->Start();
  {
    std::lock_guard<std::mutex> l(metrics_source_->mu);
    metrics_source_->host = host_.get();
    metrics_source_->engine = engine_.get();
  }
  spdlog::info("core node {} listening on {} ({} of {} partitions, {} node(s), gRPC {})",
               config_.node_id, address_, replicas, config_.partitions, nodes.size(),
               config_.grpc_tls.enabled() ? "mutual TLS" : "plaintext");
  return absl::OkStatus();
}

void CoreNode::Stop() {
  metrics_source_->Detach();
  if (host_ && !peers_single_node_) {
    // Hand leaderships to other replicas first: their partitions keep a leader instead of
    // waiting an election timeout for this node to be missed.
    int still = host_->HandOffLeadership(std::chrono::milliseconds(1500));
    if (still > 0) spdlog::warn("stopping while still leading {} partition(s)", still);
  }
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
    server_.reset();
  }
  // The session timers use the host: stop them first; their proposals' callbacks still run
  // when the host stops, so the manager is destroyed after it.
  if (sessions_) sessions_->Stop();
  if (host_) host_->Stop();
  transport_.reset();
  host_.reset();
  broker_service_.reset();
  sessions_.reset();
  admin_service_.reset();
  raft_service_.reset();
  engine_.reset();
}

}  // namespace herald::cluster
