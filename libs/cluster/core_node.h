// A core node: the storage engine, the Raft host with this node's partition replicas, and the
// gRPC server for the Broker API and the Raft transport. herald-core runs one; the all-in-one
// herald runs one with a single replica.
//
// Membership: the founding nodes are started with the same peer list (cluster.peers) and found
// the metadata group (group 0) and the partitions, placed as PlaceReplicas says. Later nodes
// start with cluster.join and are added by the controller (the metadata group's leader), which
// also moves replicas off draining nodes and onto new ones and balances leadership
// (docs/core.md "Membership and placement").
#pragma once

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "libs/cluster/admin_service.h"
#include "libs/cluster/broker_service.h"
#include "libs/cluster/core_metrics.h"
#include "libs/cluster/grpc_transport.h"
#include "libs/cluster/raft_host.h"
#include "libs/cluster/session_manager.h"
#include "libs/common/config.h"
#include "libs/common/grpc_tls.h"
#include "libs/storage/engine.h"

namespace herald::cluster {

struct CoreNodeConfig {
  uint64_t node_id = 1;
  std::string cluster_id = "herald";
  // gRPC address this node serves (Broker API and Raft transport).
  std::string listen = "127.0.0.1:7070";
  // Every core node as "id=host:port", this one included. Empty: a single-node cluster.
  std::vector<std::string> peers;
  // A node of an existing cluster to join through ("host:port"); this node then starts with no
  // peers and asks the controller to add it.
  std::string join;
  // The controller evens out partition leaderships across nodes.
  bool balance_leaders = true;
  int partitions = 8;
  int replication_factor = 3;
  absl::Duration raft_tick = absl::Milliseconds(100);
  int raft_election_ticks = 10;
  // MQTT sessions: owner lease (OpenSessionResponse.lease_ms) and how often the leader checks
  // leases, will delays and session expiry.
  absl::Duration session_lease = absl::Seconds(30);
  absl::Duration session_timer_interval = absl::Milliseconds(200);
  bool storage_sync = true;
  ByteSize storage_block_cache{256ull << 20};
  // Retention per partition (RaftHostOptions): messages older than retention_max_age are
  // removed, and the oldest ones beyond retention_max_bytes (zero: no limit).
  absl::Duration retention_max_age = absl::Hours(24 * 7);
  ByteSize retention_max_bytes{0};
  absl::Duration retention_check_interval = absl::Seconds(10);
  // Mutual TLS on the gRPC server and on every channel to other nodes (grpc.tls.*).
  GrpcTlsConfig grpc_tls;

  // Registers the options under "core.", "cluster.", "raft.", "session.", "storage.",
  // "retention." and "grpc.tls.".
  void AddOptions(ConfigSchema& schema);
};

// Replicas of `partition`: replication_factor nodes (or all, if fewer) starting at
// partition mod n in ascending node-id order.
std::vector<raft::NodeId> PlaceReplicas(uint32_t partition, const std::vector<raft::NodeId>& nodes,
                                        int replication_factor);

class CoreNode {
 public:
  // Voters of the metadata group (the other nodes hold it as learners).
  static constexpr size_t kMetadataVoters = 5;
  // Partitions the controller moves at the same time.
  static constexpr int kMaxMoves = 2;
  // Leadership balance moves a partition's leadership only to a voter at most this many log
  // entries behind the leader's commit index (the leader catches it up before handing over).
  static constexpr uint64_t kMaxTransferLag = 256;

  explicit CoreNode(CoreNodeConfig config) : config_(std::move(config)) {}
  ~CoreNode();

  // Opens the database under `data_dir`, loads this node's replicas and starts serving.
  absl::Status Start(const std::string& data_dir);
  // The node's metrics collector (valid before and after Start; empty when stopped).
  std::shared_ptr<prometheus::Collectable> metrics_collector() {
    return NewCoreCollector(metrics_source_);
  }
  void Stop();

  RaftHost& host() { return *host_; }
  // The address the gRPC server bound (resolves port 0).
  const std::string& address() const { return address_; }

 private:
  CoreNodeConfig config_;
  std::unique_ptr<storage::Engine> engine_;
  std::unique_ptr<GrpcRaftTransport> transport_;
  std::unique_ptr<RaftHost> host_;
  std::unique_ptr<RaftTransportService> raft_service_;
  std::unique_ptr<SessionManager> sessions_;
  std::unique_ptr<BrokerService> broker_service_;
  std::unique_ptr<AdminService> admin_service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<NodeDirectory> directory_;
  std::vector<raft::NodeId> founding_;  // cluster.peers (empty when joining)

  // Membership: the controller's duties when this node leads the metadata group, and every
  // node's own (replicas to create and to delete, membership steps of groups it leads).
  void MembershipLoop();
  void MembershipRound(int round);
  void ControllerRound(const v1::MetadataStateRecord& rec);
  std::optional<MembershipTarget> TargetOf(const v1::MetadataStateRecord& rec, GroupId group);
  void JoinLoop();
  std::thread membership_thread_;
  std::thread join_thread_;
  std::mutex membership_mu_;
  std::condition_variable membership_cv_;
  bool membership_stop_ = false;
  bool membership_kick_ = false;
  std::string address_;
  bool peers_single_node_ = true;
  std::shared_ptr<CoreMetricsSource> metrics_source_ = std::make_shared<CoreMetricsSource>();
};

}  // namespace herald::cluster
