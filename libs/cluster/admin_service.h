// The core's Admin gRPC service (proto/herald/v1/admin.proto) over a node's RaftHost, for
// heraldctl and operators.
//
// Membership is static until the metadata group lands, so this service answers from the
// answering node's own knowledge only and forwards nothing:
//   - GetClusterStatus: the static peer list and placement, and the leaders this node's own
//     replicas know; fields that need the metadata group or transport health are left unset
//     (see admin_service.cc for each one).
//   - ListPartitions: the partition groups hosted on this node, as this node sees them (its
//     commit index, its applied state). A client that wants the whole cluster asks every node and
//     keeps, per partition, the leader's answer (heraldctl does).
//   - TransferLeadership: only on the partition's current leader; other nodes answer NOT_LEADER
//     with a leader hint.
//   - AddNode, RemoveNode: UNIMPLEMENTED.
//
// Errors follow common.proto ("How errors travel"): every non-OK status carries a serialized
// v1::ErrorInfo in its error details.
//
// Threading: a synchronous gRPC service; handlers run on gRPC's threads and wait on the Raft
// host (RaftHost::Status), never on its own thread. The RaftHost must outlive the service.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include <grpcpp/security/credentials.h>

#include "herald/v1/admin.grpc.pb.h"
#include "libs/cluster/raft_host.h"

namespace herald::cluster {

struct AdminServiceOptions {
  raft::NodeId node_id = 0;
  std::string cluster_id;
  uint32_t partition_count = 8;
  int replication_factor = 3;
  // Every node of the cluster (this one included) -> its gRPC address "host:port" (Broker,
  // Admin and Raft transport share it), and the applied metadata. Required.
  std::shared_ptr<NodeDirectory> directory = std::make_shared<NodeDirectory>();
  // Credentials of channels to other nodes (insecure when null).
  std::shared_ptr<grpc::ChannelCredentials> channel_credentials;
  // TransferLeadership waits at most this long for the new leader when the caller set no
  // deadline.
  std::chrono::milliseconds default_transfer_timeout{5000};
  // How often TransferLeadership looks at the group while it waits.
  std::chrono::milliseconds transfer_poll_interval{20};
  // How often a transfer that has not completed is requested again.
  std::chrono::milliseconds transfer_retry_interval{500};
};

class AdminService final : public v1::Admin::Service {
 public:
  AdminService(RaftHost& host, AdminServiceOptions options);

  grpc::Status GetClusterStatus(grpc::ServerContext* ctx, const v1::GetClusterStatusRequest* req,
                                v1::GetClusterStatusResponse* resp) override;
  grpc::Status ListPartitions(grpc::ServerContext* ctx, const v1::ListPartitionsRequest* req,
                              v1::ListPartitionsResponse* resp) override;
  grpc::Status TransferLeadership(grpc::ServerContext* ctx,
                                  const v1::TransferLeadershipRequest* req,
                                  v1::TransferLeadershipResponse* resp) override;
  grpc::Status AddNode(grpc::ServerContext* ctx, const v1::AddNodeRequest* req,
                       v1::AddNodeResponse* resp) override;
  grpc::Status RemoveNode(grpc::ServerContext* ctx, const v1::RemoveNodeRequest* req,
                          v1::RemoveNodeResponse* resp) override;

  // Every partition's status as its leader reports it (or, without an answer from a leader,
  // the freshest answer of any replica), asking every known node. Partitions nobody answered
  // for are absent. Blocks up to about a second.
  std::map<uint32_t, v1::PartitionStatus> GatherPartitions(
      std::set<raft::NodeId>* answered = nullptr);
  // Proposes a metadata command on this node (the controller) and waits for its apply;
  // Unavailable with the controller's id in *leader when another node leads the metadata group.
  absl::Status ProposeMetadata(const v1::MetadataCommand& cmd, raft::NodeId* leader);
  v1::Admin::Stub* StubFor(raft::NodeId node);

 private:
  // Placement of `partition` by static membership (the same on every node).
  std::vector<raft::NodeId> PlacementOf(uint32_t partition) const;
  // Fills `hint` with the leader's id, term and address.
  void FillLeaderHint(raft::NodeId leader, uint64_t term, v1::LeaderHint* hint) const;
  void FillEndpoint(raft::NodeId node, v1::Endpoint* endpoint) const;

  // Proposes `cmd` on this node; when another node is the controller, that node answers `req`
  // through `forward` instead. nullopt: the command applied here.
  template <typename Req, typename Resp>
  std::optional<grpc::Status> ProposeOrForward(
      const v1::MetadataCommand& cmd, const Req& req, Resp* resp,
      grpc::Status (v1::Admin::Stub::*forward)(grpc::ClientContext*, const Req&, Resp*));
  void LocalPartitions(const std::vector<uint32_t>& requested, v1::ListPartitionsResponse* resp);

  RaftHost& host_;
  const AdminServiceOptions options_;
  std::mutex stubs_mu_;
  std::map<std::string, std::unique_ptr<v1::Admin::Stub>> stubs_;  // by address
};

}  // namespace herald::cluster
