#include "libs/cluster/admin_service.h"

#include <algorithm>
#include <charconv>
#include <latch>
#include <optional>
#include <thread>

#include "libs/cluster/broker_service.h"
#include "libs/cluster/core_node.h"
#include "libs/common/strings.h"

namespace herald::cluster {
namespace {

// A non-OK status with its ErrorInfo in the error details (common.proto, "How errors travel").
grpc::Status Error(grpc::StatusCode code, v1::ErrorCode error_code, const std::string& message,
                   std::optional<uint32_t> partition = std::nullopt,
                   const v1::LeaderHint* hint = nullptr) {
  v1::ErrorInfo info;
  info.set_code(error_code);
  info.set_message(message);
  if (partition.has_value()) info.set_partition(*partition);
  if (hint != nullptr) *info.mutable_leader_hint() = *hint;
  return grpc::Status(code, message, info.SerializeAsString());
}

std::string JoinIds(const std::vector<raft::NodeId>& ids) {
  std::string out;
  for (raft::NodeId id : ids) StrAppend(&out, out.empty() ? "" : ",", id);
  return out;
}

// What this node knows of one hosted partition, read in one step on the Raft host's thread.
struct PartitionView {
  GroupStatus status;
  uint64_t epoch = 0;
  uint64_t log_start_offset = 0;  // 0 when nothing is stored
};

}  // namespace

AdminService::AdminService(RaftHost& host, AdminServiceOptions options)
    : host_(host), options_(std::move(options)) {}

std::vector<raft::NodeId> AdminService::PlacementOf(uint32_t partition) const {
  std::vector<raft::NodeId> nodes;
  for (const auto& [id, addr] : options_.node_addresses) nodes.push_back(id);
  return PlaceReplicas(partition, nodes, options_.replication_factor);
}

void AdminService::FillEndpoint(raft::NodeId node, v1::Endpoint* endpoint) const {
  auto it = options_.node_addresses.find(node);
  if (it == options_.node_addresses.end()) return;
  const std::string& addr = it->second;
  size_t colon = addr.rfind(':');
  std::string host = addr.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);  // Endpoint.host: IPv6 without brackets
  }
  endpoint->set_host(host);
  uint32_t port = 0;
  if (colon != std::string::npos) {
    std::string_view p(addr);
    p.remove_prefix(colon + 1);
    std::from_chars(p.data(), p.data() + p.size(), port);
  }
  endpoint->set_port(port);
}

void AdminService::FillLeaderHint(raft::NodeId leader, uint64_t term, v1::LeaderHint* hint) const {
  hint->set_node_id(leader);
  hint->set_term(term);
  FillEndpoint(leader, hint->mutable_endpoint());
}

namespace {

// Reads the given partitions (every hosted one when `partitions` is empty) on the Raft host's
// thread. Partitions not hosted here are absent from the result.
std::map<uint32_t, PartitionView> ReadPartitions(RaftHost& host, std::vector<uint32_t> partitions) {
  if (partitions.empty()) {
    for (const GroupStatus& st : host.Status()) partitions.push_back(st.partition);
  }
  std::vector<std::optional<PartitionView>> views(partitions.size());
  std::latch done(static_cast<std::ptrdiff_t>(partitions.size()));
  for (size_t i = 0; i < partitions.size(); ++i) {
    host.ReadAsync(GroupForPartition(partitions[i]),
                   [&views, &done, i](broker::PartitionStateMachine* sm, const GroupStatus* st) {
                     if (sm != nullptr && st != nullptr) {
                       PartitionView v;
                       v.status = *st;
                       v.epoch = sm->state().epoch();
                       v.log_start_offset =
                           sm->state().message_count() != 0 ? sm->state().first_offset() : 0;
                       views[i] = std::move(v);
                     }
                     done.count_down();
                   });
  }
  done.wait();
  std::map<uint32_t, PartitionView> out;
  for (size_t i = 0; i < partitions.size(); ++i) {
    if (views[i].has_value()) out[partitions[i]] = std::move(*views[i]);
  }
  return out;
}

}  // namespace

grpc::Status AdminService::GetClusterStatus(grpc::ServerContext*,
                                            const v1::GetClusterStatusRequest*,
                                            v1::GetClusterStatusResponse* resp) {
  const std::map<uint32_t, PartitionView> hosted = ReadPartitions(host_, {});

  v1::ClusterMetadata* md = resp->mutable_metadata();
  md->set_cluster_id(options_.cluster_id);
  // version stays 0: there is no metadata group (and no replicated metadata version) yet.
  md->set_partition_count(options_.partition_count);
  for (const auto& [id, addr] : options_.node_addresses) {  // std::map: sorted by node id
    v1::NodeInfo* n = md->add_nodes();
    n->set_node_id(id);
    // One gRPC server per node serves Broker, Admin and the Raft transport.
    FillEndpoint(id, n->mutable_api_endpoint());
    FillEndpoint(id, n->mutable_peer_endpoint());
    // Static membership: every listed node is a member; nothing is ever draining.
    n->set_state(v1::NODE_STATE_ACTIVE);
  }

  std::map<raft::NodeId, uint32_t> replicas, leads;
  uint32_t without_leader = 0;
  for (uint32_t p = 0; p < options_.partition_count; ++p) {
    v1::PartitionInfo* info = md->add_partitions();
    info->set_partition(p);
    info->set_group_id(GroupForPartition(p));
    auto it = hosted.find(p);
    if (it == hosted.end()) {
      // Not hosted here: the static placement is known, leadership is not (leader stays 0).
      for (raft::NodeId id : PlacementOf(p)) info->add_voters(id);
    } else {
      const PartitionView& v = it->second;
      for (raft::NodeId id : v.status.conf_state.voters) info->add_voters(id);
      for (raft::NodeId id : v.status.conf_state.learners) info->add_learners(id);
      info->set_epoch(v.epoch);
      if (v.status.leader != 0) {
        info->set_leader_node_id(v.status.leader);
        info->set_leader_term(v.status.term);
        ++leads[v.status.leader];
      } else {
        ++without_leader;
      }
    }
    for (uint64_t id : info->voters()) ++replicas[id];
    for (uint64_t id : info->learners()) ++replicas[id];
  }

  resp->set_answered_by_node_id(options_.node_id);
  // controller_node_id and controller_term stay 0 (unknown): there is no metadata group yet.
  for (const auto& [id, addr] : options_.node_addresses) {
    v1::NodeStatus* ns = resp->add_nodes();
    ns->set_node_id(id);
    // The Raft transport does not report the state of its streams yet, so reachability of other
    // nodes is unknown and left false; only this node is known to be reachable.
    ns->set_reachable(id == options_.node_id);
    // Counted over the partitions hosted here only (with static placement, others are unknown).
    ns->set_leader_count(leads[id]);
    ns->set_replica_count(replicas[id]);
  }
  // The effective value: placement caps the replication factor at the number of nodes.
  resp->set_replication_factor(static_cast<uint32_t>(
      std::min<size_t>(options_.node_addresses.size(),
                       static_cast<size_t>(std::max(1, options_.replication_factor)))));
  // Among the partitions hosted here; whether the others have a leader is unknown.
  resp->set_partitions_without_leader(without_leader);
  // under_replicated_partitions stays 0: it needs the reachability of voters, which is unknown.
  return grpc::Status::OK;
}

grpc::Status AdminService::ListPartitions(grpc::ServerContext*,
                                          const v1::ListPartitionsRequest* req,
                                          v1::ListPartitionsResponse* resp) {
  std::vector<uint32_t> requested(req->partitions().begin(), req->partitions().end());
  for (uint32_t p : requested) {
    if (p >= options_.partition_count) {
      return Error(grpc::StatusCode::INVALID_ARGUMENT, v1::ERROR_CODE_INVALID_ARGUMENT,
                   StrCat("partition ", p, " does not exist (the cluster has ",
                          options_.partition_count, " partitions)"),
                   p);
    }
  }
  const std::map<uint32_t, PartitionView> views = ReadPartitions(host_, requested);
  // Empty request: the hosted partitions in partition order (std::map), not all P of them.
  if (requested.empty()) {
    for (const auto& [p, v] : views) requested.push_back(p);
  }
  for (uint32_t p : requested) {
    v1::PartitionStatus* ps = resp->add_partitions();
    v1::PartitionInfo* info = ps->mutable_info();
    info->set_partition(p);
    info->set_group_id(GroupForPartition(p));
    auto it = views.find(p);
    if (it == views.end()) {
      for (raft::NodeId id : PlacementOf(p)) info->add_voters(id);
      v1::ErrorInfo* e = ps->mutable_error();
      e->set_code(v1::ERROR_CODE_PARTITION_UNAVAILABLE);
      e->set_message(StrCat("partition ", p, " is not hosted on node ", options_.node_id,
                            " (replicas: ", JoinIds(PlacementOf(p)), ")"));
      e->set_partition(p);
      continue;
    }
    const PartitionView& v = it->second;
    const GroupStatus& st = v.status;
    for (raft::NodeId id : st.conf_state.voters) info->add_voters(id);
    for (raft::NodeId id : st.conf_state.learners) info->add_learners(id);
    if (st.leader != 0) {
      info->set_leader_node_id(st.leader);
      info->set_leader_term(st.term);
    }
    info->set_epoch(v.epoch);
    // This node's own commit index and applied state: the leader's when this node leads (a
    // client merging several nodes' answers keeps the leader's).
    ps->set_commit_index(st.commit);
    ps->set_log_start_offset(v.log_start_offset);
    ps->set_last_offset(st.last_offset);
    for (raft::NodeId id : st.conf_state.voters) {
      v1::ReplicaStatus* r = ps->add_replicas();
      r->set_node_id(id);
      r->set_role(id == st.leader ? v1::REPLICA_ROLE_LEADER : v1::REPLICA_ROLE_FOLLOWER);
      // match_index stays 0: GroupStatus does not expose the leader's progress tracking yet.
    }
    for (raft::NodeId id : st.conf_state.learners) {
      v1::ReplicaStatus* r = ps->add_replicas();
      r->set_node_id(id);
      r->set_role(v1::REPLICA_ROLE_LEARNER);
    }
  }
  return grpc::Status::OK;
}

grpc::Status AdminService::TransferLeadership(grpc::ServerContext* ctx,
                                              const v1::TransferLeadershipRequest* req,
                                              v1::TransferLeadershipResponse* resp) {
  if (req->group_case() == v1::TransferLeadershipRequest::kMetadataGroup) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT, v1::ERROR_CODE_INVALID_ARGUMENT,
                 "there is no metadata group yet (membership is static)");
  }
  if (req->group_case() != v1::TransferLeadershipRequest::kPartition) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT, v1::ERROR_CODE_INVALID_ARGUMENT,
                 "partition is required");
  }
  const uint32_t p = req->partition();
  if (p >= options_.partition_count) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT, v1::ERROR_CODE_INVALID_ARGUMENT,
                 StrCat("partition ", p, " does not exist (the cluster has ",
                        options_.partition_count, " partitions)"),
                 p);
  }
  auto read = [&]() -> std::optional<PartitionView> {
    auto views = ReadPartitions(host_, {p});
    if (views.empty()) return std::nullopt;
    return std::move(views.begin()->second);
  };
  std::optional<PartitionView> view = read();
  if (!view.has_value()) {
    return Error(grpc::StatusCode::UNAVAILABLE, v1::ERROR_CODE_NOT_LEADER,
                 StrCat("partition ", p, " is not hosted on node ", options_.node_id,
                        " (replicas: ", JoinIds(PlacementOf(p)), "); ask one of those"),
                 p);
  }
  const GroupStatus& st = view->status;
  raft::NodeId target = req->target_node_id();
  const auto& voters = st.conf_state.voters;
  if (target != 0 && std::find(voters.begin(), voters.end(), target) == voters.end()) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT, v1::ERROR_CODE_INVALID_ARGUMENT,
                 StrCat("node ", target, " is not a voter of partition ", p,
                        " (voters: ", JoinIds(voters), ")"),
                 p);
  }
  if (target != 0 && st.leader == target) {
    resp->set_leader_node_id(target);
    resp->set_term(st.term);
    return grpc::Status::OK;
  }
  if (st.role != raft::Role::kLeader) {
    v1::LeaderHint hint;
    if (st.leader != 0) FillLeaderHint(st.leader, st.term, &hint);
    return Error(grpc::StatusCode::UNAVAILABLE, v1::ERROR_CODE_NOT_LEADER,
                 StrCat("node ", options_.node_id, " does not lead partition ", p,
                        st.leader != 0 ? StrCat("; node ", st.leader, " does")
                                       : std::string("; no leader is known")),
                 p, st.leader != 0 ? &hint : nullptr);
  }
  if (target == 0) {
    // The leader's replication progress is not exposed yet, so "most caught-up" is approximated
    // by the next voter after this node in id order.
    auto next = std::upper_bound(voters.begin(), voters.end(), options_.node_id);
    if (next == voters.end()) next = voters.begin();
    if (next == voters.end() || *next == options_.node_id) {
      return Error(grpc::StatusCode::FAILED_PRECONDITION, v1::ERROR_CODE_NOT_ENOUGH_NODES,
                   StrCat("partition ", p, " has no other voter to take over"), p);
    }
    target = *next;
  }

  auto deadline = std::chrono::steady_clock::now() + options_.default_transfer_timeout;
  if (ctx->deadline() != std::chrono::system_clock::time_point::max()) {
    // Answer a little before the caller gives up, so it gets OUTCOME_UNKNOWN, not a timeout.
    auto left = ctx->deadline() - std::chrono::system_clock::now() - std::chrono::milliseconds(50);
    deadline = std::chrono::steady_clock::now() +
               std::max<std::chrono::steady_clock::duration>(left, std::chrono::milliseconds(0));
  }
  host_.TransferLeadership(GroupForPartition(p), target);
  uint64_t last_term = st.term;
  raft::NodeId last_leader = st.leader;
  while (true) {
    view = read();
    if (view.has_value()) {
      last_leader = view->status.leader;
      last_term = view->status.term;
      if (last_leader == target) {
        resp->set_leader_node_id(target);
        resp->set_term(last_term);
        return grpc::Status::OK;
      }
    }
    if (ctx->IsCancelled()) {
      return Error(grpc::StatusCode::CANCELLED, v1::ERROR_CODE_OUTCOME_UNKNOWN,
                   "cancelled while waiting for the new leader", p);
    }
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(options_.transfer_poll_interval);
  }
  v1::LeaderHint hint;
  if (last_leader != 0) FillLeaderHint(last_leader, last_term, &hint);
  return Error(grpc::StatusCode::UNAVAILABLE, v1::ERROR_CODE_OUTCOME_UNKNOWN,
               StrCat("node ", target, " was not seen leading partition ", p,
                      " before the deadline (the transfer may still complete); leader now: ",
                      last_leader == 0 ? std::string("unknown") : StrCat("node ", last_leader)),
               p, last_leader != 0 ? &hint : nullptr);
}

namespace {
constexpr const char* kStaticMembership =
    "membership is static until the metadata group lands: the cluster is the cluster.peers list "
    "every node was started with";
}  // namespace

grpc::Status AdminService::AddNode(grpc::ServerContext*, const v1::AddNodeRequest*,
                                   v1::AddNodeResponse*) {
  return Error(grpc::StatusCode::UNIMPLEMENTED, v1::ERROR_CODE_UNSPECIFIED,
               StrCat("AddNode: ", kStaticMembership));
}

grpc::Status AdminService::RemoveNode(grpc::ServerContext*, const v1::RemoveNodeRequest*,
                                      v1::RemoveNodeResponse*) {
  return Error(grpc::StatusCode::UNIMPLEMENTED, v1::ERROR_CODE_UNSPECIFIED,
               StrCat("RemoveNode: ", kStaticMembership));
}

}  // namespace herald::cluster
