#include "libs/cluster/core_node.h"

#include <spdlog/fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <set>

#include "libs/common/logging.h"
#include "libs/common/strings.h"
#include "libs/common/thread.h"
#include "libs/storage/keys.h"

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
  schema.Add("cluster.join", &join,
             "Joins an existing cluster through this node (host:port) instead of founding one "
             "with cluster.peers; the controller then places replicas on this node.");
  schema.Add("cluster.balance_leaders", &balance_leaders,
             "The controller moves partition leaderships so that nodes lead about as many "
             "partitions each (it undoes manual transfers that unbalance them).");
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
  schema.Add("retention.max_age", &retention_max_age,
             "Messages older than this are removed from their partition (0: kept whatever their "
             "age). Readers resuming before what was removed are told of the gap.");
  schema.Add("retention.max_bytes", &retention_max_bytes,
             "Per partition: the oldest messages are removed while the rest still takes at least "
             "this much (0: no size limit). Removal is by whole stored records (a publish command's "
             "messages, up to 64 KiB of them per record).");
  schema.Add("retention.check_interval", &retention_check_interval,
             "How often partition leaders check retention.");
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
  if (!config_.join.empty() && !config_.peers.empty()) {
    return absl::InvalidArgumentError("cluster.join and cluster.peers exclude each other");
  }
  if (config_.retention_check_interval < absl::Milliseconds(1) ||
      config_.retention_check_interval > absl::Hours(24)) {
    return absl::InvalidArgumentError("retention.check_interval must be between 1ms and 24h");
  }
  if (config_.retention_max_age != absl::ZeroDuration() &&
      config_.retention_max_age < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError("retention.max_age must be 0 (no limit) or at least 1ms");
  }
  auto peers = ParsePeers(config_);
  if (!peers.ok()) return peers.status();
  std::vector<raft::NodeId> nodes;
  for (const auto& [id, addr] : *peers) nodes.push_back(id);
  founding_ = config_.join.empty() ? nodes : std::vector<raft::NodeId>{};
  peers_single_node_ = nodes.size() == 1 && config_.join.empty();
  directory_ = std::make_shared<NodeDirectory>(*peers);
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
  ho.retention_max_age =
      std::chrono::milliseconds(absl::ToInt64Milliseconds(config_.retention_max_age));
  ho.retention_max_bytes = config_.retention_max_bytes.bytes;
  ho.retention_check_interval =
      std::chrono::milliseconds(absl::ToInt64Milliseconds(config_.retention_check_interval));
  host_ = std::make_unique<RaftHost>(*engine_, *transport_, ho);
  // The metadata group: founded by the first (up to) five founding nodes.
  std::vector<raft::NodeId> meta_voters = founding_;
  if (meta_voters.size() > kMetadataVoters) meta_voters.resize(kMetadataVoters);
  if (absl::Status s = host_->AddMetadataGroup(meta_voters); !s.ok()) return s;
  auto local_meta = MetadataStateMachine::Open(*engine_);
  if (!local_meta.ok()) return local_meta.status();
  const v1::MetadataStateRecord& rec = (*local_meta)->state();
  int replicas = 0;
  std::set<GroupId> added;
  if (rec.initialized()) {
    // Restart: the replicas the metadata places here, and those still stored here (removed
    // later, once their group confirms this node left).
    directory_->Update(rec);
    transport_->UpdatePeers(directory_->Addresses());
    for (const v1::PartitionAssignment& a : rec.assignments()) {
      if (std::find(a.replicas().begin(), a.replicas().end(), config_.node_id) !=
          a.replicas().end()) {
        added.insert(GroupForPartition(a.partition()));
      }
    }
    std::unique_ptr<rocksdb::Iterator> it = engine_->NewIterator(storage::Family::kRaftState);
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      std::string_view key(it->key().data(), it->key().size());
      uint64_t group = 0;
      if (key.size() == 9 && key.back() == 'h' && storage::GetU64(&key, &group) && group != 0 &&
          group <= static_cast<uint64_t>(config_.partitions)) {
        added.insert(group);
      }
    }
    for (GroupId g : added) {
      if (absl::Status s = host_->AddPartitionGroup(g, static_cast<uint32_t>(g - 1), {}); !s.ok()) {
        return s;
      }
      ++replicas;
    }
  } else if (!founding_.empty()) {
    for (uint32_t p = 0; p < static_cast<uint32_t>(config_.partitions); ++p) {
      std::vector<raft::NodeId> voters = PlaceReplicas(p, nodes, config_.replication_factor);
      if (std::find(voters.begin(), voters.end(), config_.node_id) == voters.end()) continue;
      absl::Status s = host_->AddPartitionGroup(GroupForPartition(p), p, voters);
      if (!s.ok()) return s;
      ++replicas;
    }
  }
  host_->SetMetadataListener([this](const v1::MetadataStateRecord& r) {
    directory_->Update(r);
    transport_->UpdatePeers(directory_->Addresses());
    {
      std::lock_guard<std::mutex> l(membership_mu_);
      membership_kick_ = true;
    }
    membership_cv_.notify_one();
  });

  raft_service_ = std::make_unique<RaftTransportService>(
      config_.cluster_id, config_.node_id,
      [this](std::vector<RaftHost::Inbound> in) { host_->DeliverAll(std::move(in)); },
      [this](raft::NodeId from) { host_->HeardFrom(from); });
  raft_service_->set_host(host_.get());
  BrokerServiceOptions bo;
  bo.partition_count = static_cast<uint32_t>(config_.partitions);
  bo.directory = directory_;
  bo.node_id = config_.node_id;
  SessionManagerOptions so;
  so.node_id = config_.node_id;
  so.partition_count = bo.partition_count;
  so.directory = directory_;
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
  ao.directory = directory_;
  ao.channel_credentials = *channel_credentials;
  admin_service_ = std::make_unique<AdminService>(*host_, ao);

  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config_.listen, *server_credentials, &port);
  builder.RegisterService(raft_service_.get());
  builder.RegisterService(broker_service_.get());
  builder.RegisterService(admin_service_.get());
  builder.SetMaxReceiveMessageSize(64 << 20);
  // Peers and edges send keepalive pings every 10 s, also on idle connections (a dead peer is
  // noticed in seconds, not after TCP's retransmission timeout); without these the server
  // would answer pings that frequent with GOAWAY (too_many_pings).
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5'000);
  // And this node pings its clients every 10 s: an edge that vanished without closing its
  // connections (power loss, a network partition) has its Subscribe streams ended within about
  // 15 s, so that its shared-subscription turns go to the edges still there sooner (an edge cut
  // off by a test: its turns stopped after ~6 s with these pings, ~20 s without).
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 10'000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5'000);
  server_ = builder.BuildAndStart();
  if (!server_ || port == 0) {
    return absl::UnavailableError(StrCat("core.listen ", config_.listen, ": cannot listen"));
  }
  address_ = config_.listen.substr(0, config_.listen.rfind(':')) + ":" + std::to_string(port);
  absl::Status s = host_->Start();
  if (!s.ok()) return s;
  sessions_->Start();
  {
    std::lock_guard<std::mutex> l(membership_mu_);
    membership_stop_ = false;
  }
  membership_thread_ = std::thread([this] {
    SetThreadName("membership");
    MembershipLoop();
  });
  if (!config_.join.empty()) {
    join_thread_ = std::thread([this] {
      SetThreadName("join");
      JoinLoop();
    });
  }
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
  {
    std::lock_guard<std::mutex> l(membership_mu_);
    membership_stop_ = true;
  }
  membership_cv_.notify_all();
  if (membership_thread_.joinable()) membership_thread_.join();
  if (join_thread_.joinable()) join_thread_.join();
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

namespace {

bool Contains(const std::vector<raft::NodeId>& v, raft::NodeId n) {
  return std::find(v.begin(), v.end(), n) != v.end();
}

void ProposeAsync(RaftHost& host, const v1::MetadataCommand& cmd) {
  host.Propose(kMetadataGroup, cmd.SerializeAsString(), [](ProposalResult) {});
}

}  // namespace

void CoreNode::MembershipLoop() {
  int round = 0;
  std::unique_lock<std::mutex> l(membership_mu_);
  while (!membership_stop_) {
    membership_cv_.wait_for(l, std::chrono::milliseconds(500),
                            [this] { return membership_stop_ || membership_kick_; });
    if (membership_stop_) break;
    membership_kick_ = false;
    l.unlock();
    MembershipRound(round++);
    l.lock();
  }
}

void CoreNode::MembershipRound(int round) {
  const v1::MetadataStateRecord rec = directory_->Record();
  std::optional<GroupStatus> meta = host_->MetadataStatus();
  const bool controller = meta.has_value() && meta->role == raft::Role::kLeader;
  if (!rec.initialized()) {
    if (!controller || founding_.empty()) return;
    // The founding controller records the founding nodes and the initial placement (the one
    // every founding node created its replicas from).
    v1::MetadataCommand cmd;
    v1::MetadataInitCommand* init = cmd.mutable_init();
    for (raft::NodeId id : founding_) {
      v1::NodeInfo* n = init->add_nodes();
      n->set_node_id(id);
      auto ep = ParseEndpoint(directory_->Address(id).value_or(""));
      if (!ep.ok()) return;
      *n->mutable_peer_endpoint() = *ep;
      *n->mutable_api_endpoint() = *ep;
      n->set_state(v1::NODE_STATE_ACTIVE);
    }
    for (uint32_t p = 0; p < static_cast<uint32_t>(config_.partitions); ++p) {
      v1::PartitionAssignment* a = init->add_assignments();
      a->set_partition(p);
      for (raft::NodeId id : PlaceReplicas(p, founding_, config_.replication_factor)) {
        a->add_replicas(id);
      }
    }
    ProposeAsync(*host_, cmd);
    return;
  }
  for (const v1::PartitionAssignment& a : rec.assignments()) {
    if (Contains({a.replicas().begin(), a.replicas().end()}, config_.node_id)) {
      host_->EnsurePartitionGroup(GroupForPartition(a.partition()), a.partition());
    }
  }
  std::vector<raft::NodeId> meta_voters = meta ? meta->conf_state.voters : std::vector<raft::NodeId>{};
  host_->ReconcileMembership([this, rec, meta_voters](GroupId g) -> std::optional<MembershipTarget> {
    if (g != kMetadataGroup) return TargetOf(rec, g);
    // The metadata group: up to kMetadataVoters active voters (current ones first), every
    // other recorded node a learner, so that every node applies the metadata.
    MembershipTarget t;
    std::vector<raft::NodeId> active;
    for (const v1::NodeInfo& n : rec.nodes()) {
      if (n.state() == v1::NODE_STATE_ACTIVE) active.push_back(n.node_id());
    }
    for (raft::NodeId v : meta_voters) {
      if (Contains(active, v)) t.voters.push_back(v);
    }
    for (raft::NodeId a : active) {
      if (t.voters.size() >= kMetadataVoters) break;
      if (!Contains(t.voters, a)) t.voters.push_back(a);
    }
    for (const v1::NodeInfo& n : rec.nodes()) {
      if (!Contains(t.voters, n.node_id())) t.learners.push_back(n.node_id());
    }
    return t;
  });
  if (controller) ControllerRound(rec);
  if (round % 4 != 3) return;
  // Replicas stored here that the metadata no longer places here: delete them once their
  // group's leader reports a membership without this node.
  std::vector<GroupStatus> orphans;
  for (const GroupStatus& st : host_->Status()) {
    if (!Contains(directory_->Replicas(st.partition), config_.node_id) &&
        st.role != raft::Role::kLeader) {
      orphans.push_back(st);
    }
  }
  if (orphans.empty()) return;
  std::map<uint32_t, v1::PartitionStatus> gathered = admin_service_->GatherPartitions();
  for (const GroupStatus& st : orphans) {
    auto it = gathered.find(st.partition);
    if (it == gathered.end()) continue;
    const v1::PartitionInfo& info = it->second.info();
    if (info.leader_node_id() == 0 || info.leader_node_id() == config_.node_id) continue;
    bool member = Contains({info.voters().begin(), info.voters().end()}, config_.node_id) ||
                  Contains({info.learners().begin(), info.learners().end()}, config_.node_id);
    // Only if the replica has not learned of a membership change since Status() (the leader may
    // have added this node back meanwhile; wiping it then would leave the leader believing a
    // replica holds a log it no longer has).
    if (!member) host_->RemoveGroup(st.group, st.conf_state);
  }
}

std::optional<MembershipTarget> CoreNode::TargetOf(const v1::MetadataStateRecord& rec,
                                                   GroupId group) {
  const int p = static_cast<int>(group) - 1;
  if (p < 0 || p >= rec.assignments_size()) return std::nullopt;
  const auto& r = rec.assignments(p).replicas();
  if (r.empty()) return std::nullopt;
  MembershipTarget t;
  t.voters.assign(r.begin(), r.end());
  return t;
}

void CoreNode::ControllerRound(const v1::MetadataStateRecord& rec) {
  std::map<uint32_t, v1::PartitionStatus> gathered = admin_service_->GatherPartitions();
  std::vector<raft::NodeId> active;
  for (const v1::NodeInfo& n : rec.nodes()) {
    if (n.state() == v1::NODE_STATE_ACTIVE) active.push_back(n.node_id());
  }
  if (active.empty()) return;
  const size_t rf =
      std::min<size_t>(active.size(), static_cast<size_t>(std::max(1, config_.replication_factor)));
  std::map<raft::NodeId, int> load;
  for (raft::NodeId a : active) load[a] = 0;
  for (const v1::PartitionAssignment& a : rec.assignments()) {
    for (uint64_t id : a.replicas()) {
      if (load.count(id) != 0) ++load[id];
    }
  }
  auto settled = [&](const v1::PartitionAssignment& a) {
    auto it = gathered.find(a.partition());
    if (it == gathered.end()) return false;
    const v1::PartitionInfo& info = it->second.info();
    std::vector<uint64_t> voters(info.voters().begin(), info.voters().end());
    std::vector<uint64_t> want(a.replicas().begin(), a.replicas().end());
    std::sort(voters.begin(), voters.end());
    std::sort(want.begin(), want.end());
    return info.leader_node_id() != 0 && info.learners_size() == 0 && voters == want;
  };
  int in_flight = 0;
  for (const v1::PartitionAssignment& a : rec.assignments()) in_flight += settled(a) ? 0 : 1;

  // Placement: replace replicas on nodes that are not active, fill up to the replication
  // factor on the least loaded nodes, and move one replica from the most to the least loaded
  // node while they differ by two or more. At most kMaxMoves partitions move at a time.
  v1::MetadataCommand cmd;
  for (const v1::PartitionAssignment& a : rec.assignments()) {
    if (in_flight >= kMaxMoves) break;
    if (!settled(a)) continue;
    std::vector<raft::NodeId> cur(a.replicas().begin(), a.replicas().end());
    std::vector<raft::NodeId> next;
    for (raft::NodeId id : cur) {
      if (Contains(active, id)) next.push_back(id);
    }
    auto least = [&](const std::vector<raft::NodeId>& exclude) {
      raft::NodeId best = 0;
      for (raft::NodeId n : active) {
        if (Contains(exclude, n)) continue;
        if (best == 0 || load[n] < load[best]) best = n;
      }
      return best;
    };
    while (next.size() < rf) {
      raft::NodeId n = least(next);
      if (n == 0) break;
      next.push_back(n);
      ++load[n];
    }
    while (next.size() > rf) {
      auto most = std::max_element(next.begin(), next.end(),
                                   [&](raft::NodeId x, raft::NodeId y) { return load[x] < load[y]; });
      --load[*most];
      next.erase(most);
    }
    if (next.size() == cur.size() && std::is_permutation(next.begin(), next.end(), cur.begin())) {
      auto most = std::max_element(next.begin(), next.end(),
                                   [&](raft::NodeId x, raft::NodeId y) { return load[x] < load[y]; });
      raft::NodeId n = least(next);
      if (most != next.end() && n != 0 && load[*most] - load[n] >= 2) {
        --load[*most];
        ++load[n];
        *most = n;
      }
    }
    std::sort(next.begin(), next.end());
    std::vector<raft::NodeId> sorted_cur = cur;
    std::sort(sorted_cur.begin(), sorted_cur.end());
    if (next == sorted_cur) continue;
    v1::PartitionAssignment* change = cmd.mutable_assign()->add_assignments();
    change->set_partition(a.partition());
    for (raft::NodeId id : next) change->add_replicas(id);
    spdlog::info("controller: partition {} moves from [{}] to [{}]", a.partition(),
                 fmt::join(sorted_cur, ","), fmt::join(next, ","));
    ++in_flight;
  }
  if (cmd.has_assign()) ProposeAsync(*host_, cmd);

  // Draining nodes that host nothing any more leave the metadata.
  if (gathered.size() == static_cast<size_t>(rec.assignments_size())) {
    for (const v1::NodeInfo& n : rec.nodes()) {
      if (n.state() != v1::NODE_STATE_DRAINING) continue;
      bool hosts = false;
      for (const v1::PartitionAssignment& a : rec.assignments()) {
        hosts = hosts || Contains({a.replicas().begin(), a.replicas().end()}, n.node_id());
      }
      for (const auto& [p, ps] : gathered) {
        hosts = hosts ||
                Contains({ps.info().voters().begin(), ps.info().voters().end()}, n.node_id()) ||
                Contains({ps.info().learners().begin(), ps.info().learners().end()}, n.node_id());
      }
      if (hosts) continue;
      v1::MetadataCommand forget;
      forget.set_forget_node(n.node_id());
      spdlog::info("controller: node {} drained; removing it from the metadata", n.node_id());
      ProposeAsync(*host_, forget);
    }
  }

  // Leadership balance, once nothing moves: one transfer per round from the node leading the
  // most partitions to a voter of that partition leading at least two fewer.
  if (!config_.balance_leaders || in_flight != 0 ||
      gathered.size() != static_cast<size_t>(rec.assignments_size())) {
    return;
  }
  std::map<raft::NodeId, int> leads;
  for (raft::NodeId a : active) leads[a] = 0;
  for (const auto& [p, ps] : gathered) {
    if (leads.count(ps.info().leader_node_id()) != 0) ++leads[ps.info().leader_node_id()];
  }
  for (const auto& [p, ps] : gathered) {
    raft::NodeId from = ps.info().leader_node_id();
    if (leads.count(from) == 0) continue;
    // Only to a voter this node hears from and the leader reports close to its commit index:
    // the partition takes no publishes while a transfer runs, so a transfer to an unreachable
    // node, or one that needs much catching up, would stall it until the transfer times out.
    auto ready = [&](uint64_t v) {
      if (!host_->PeerAlive(v, RaftHost::kTransferLiveness)) return false;
      for (const v1::ReplicaStatus& r : ps.replicas()) {
        if (r.node_id() == v) {
          return r.match_index() > 0 && r.match_index() + kMaxTransferLag >= ps.commit_index();
        }
      }
      return false;
    };
    raft::NodeId to = 0;
    for (uint64_t v : ps.info().voters()) {
      if (leads.count(v) != 0 && leads[v] + 2 <= leads[from] && (to == 0 || leads[v] < leads[to]) &&
          ready(v)) {
        to = v;
      }
    }
    if (to == 0) continue;
    v1::Admin::Stub* stub = admin_service_->StubFor(from);
    if (stub == nullptr) continue;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    v1::TransferLeadershipRequest req;
    req.set_partition(p);
    req.set_target_node_id(to);
    v1::TransferLeadershipResponse resp;
    grpc::Status st = stub->TransferLeadership(&ctx, req, &resp);
    spdlog::info("controller: partition {} leadership {} -> {} ({})", p, from, to,
                 st.ok() ? "done" : st.error_message());
    return;
  }
}

void CoreNode::JoinLoop() {
  auto self = ParseEndpoint(address_);
  if (!self.ok()) {
    spdlog::error("cluster.join: this node's address {}: {}", address_, self.status());
    return;
  }
  auto creds = config_.grpc_tls.ChannelCredentials();
  auto stub = v1::Admin::NewStub(grpc::CreateChannel(
      config_.join, creds.ok() && *creds ? *creds : grpc::InsecureChannelCredentials()));
  while (true) {
    {
      std::unique_lock<std::mutex> l(membership_mu_);
      if (membership_stop_) return;
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::AddNodeRequest req;
    req.set_node_id(config_.node_id);
    *req.mutable_peer_endpoint() = *self;
    *req.mutable_api_endpoint() = *self;
    v1::AddNodeResponse resp;
    grpc::Status st = stub->AddNode(&ctx, req, &resp);
    if (st.ok()) {
      for (const v1::NodeInfo& n : resp.metadata().nodes()) {
        directory_->AddAddress(n.node_id(), EndpointAddress(n.peer_endpoint()));
      }
      host_->RunTask([this] { transport_->UpdatePeers(directory_->Addresses()); });
      spdlog::info("joined the cluster through {} as node {}", config_.join, config_.node_id);
      return;
    }
    spdlog::warn("cluster.join {}: {}; retrying", config_.join, st.error_message());
    std::unique_lock<std::mutex> l(membership_mu_);
    membership_cv_.wait_for(l, std::chrono::seconds(1), [this] { return membership_stop_; });
  }
}

}  // namespace herald::cluster
