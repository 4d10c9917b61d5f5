#include "libs/cluster/admin_service.h"

#include <algorithm>
#include <future>
#include <latch>
#include <set>
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
  std::vector<raft::NodeId> assigned = options_.directory->Replicas(partition);
  if (!assigned.empty()) return assigned;
  std::vector<raft::NodeId> nodes;
  for (const auto& [id, addr] : options_.directory->Addresses()) nodes.push_back(id);
  return PlaceReplicas(partition, nodes, options_.replication_factor);
}

void AdminService::FillEndpoint(raft::NodeId node, v1::Endpoint* endpoint) const {
  std::optional<std::string> found = options_.directory->Address(node);
  if (!found.has_value()) return;
  if (auto parsed = ParseEndpoint(*found); parsed.ok()) *endpoint = *std::move(parsed);
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
  std::set<raft::NodeId> answered;
  const std::map<uint32_t, v1::PartitionStatus> gathered = GatherPartitions(&answered);
  const v1::MetadataStateRecord rec = options_.directory->Record();

  v1::ClusterMetadata* md = resp->mutable_metadata();
  md->set_cluster_id(options_.cluster_id);
  md->set_version(rec.applied_index());
  md->set_partition_count(options_.partition_count);
  if (rec.initialized()) {
    *md->mutable_nodes() = rec.nodes();
  } else {
    for (const auto& [id, addr] : options_.directory->Addresses()) {  // sorted by node id
      v1::NodeInfo* n = md->add_nodes();
      n->set_node_id(id);
      // One gRPC server per node serves Broker, Admin and the Raft transport.
      FillEndpoint(id, n->mutable_api_endpoint());
      FillEndpoint(id, n->mutable_peer_endpoint());
      n->set_state(v1::NODE_STATE_ACTIVE);
    }
  }
  size_t active = 0;
  for (const v1::NodeInfo& n : md->nodes()) active += n.state() == v1::NODE_STATE_ACTIVE;

  std::map<raft::NodeId, uint32_t> replicas, leads;
  uint32_t without_leader = 0;
  for (uint32_t p = 0; p < options_.partition_count; ++p) {
    v1::PartitionInfo* info = md->add_partitions();
    auto it = gathered.find(p);
    if (it != gathered.end()) {
      *info = it->second.info();
      if (info->leader_node_id() != 0) {
        ++leads[info->leader_node_id()];
      } else {
        ++without_leader;
      }
    } else {
      info->set_partition(p);
      info->set_group_id(GroupForPartition(p));
      for (raft::NodeId id : PlacementOf(p)) info->add_voters(id);
      ++without_leader;
    }
    for (uint64_t id : info->voters()) ++replicas[id];
    for (uint64_t id : info->learners()) ++replicas[id];
  }

  resp->set_answered_by_node_id(options_.node_id);
  if (std::optional<GroupStatus> meta = host_.MetadataStatus(); meta.has_value()) {
    resp->set_controller_node_id(meta->leader);
    resp->set_controller_term(meta->term);
  }
  for (const v1::NodeInfo& n : md->nodes()) {
    v1::NodeStatus* ns = resp->add_nodes();
    ns->set_node_id(n.node_id());
    // Reachable: it answered the partition survey just made.
    ns->set_reachable(n.node_id() == options_.node_id || answered.count(n.node_id()) != 0);
    ns->set_leader_count(leads[n.node_id()]);
    ns->set_replica_count(replicas[n.node_id()]);
  }
  // The effective value: placement caps the replication factor at the number of nodes.
  resp->set_replication_factor(static_cast<uint32_t>(
      std::min<size_t>(std::max<size_t>(active, 1),
                       static_cast<size_t>(std::max(1, options_.replication_factor)))));
  resp->set_partitions_without_leader(without_leader);
  uint32_t under = 0;
  for (const v1::PartitionInfo& info : md->partitions()) {
    uint32_t reachable = 0;
    for (uint64_t id : info.voters()) {
      reachable += id == options_.node_id || answered.count(id) != 0 ? 1 : 0;
    }
    under += reachable < resp->replication_factor() ? 1 : 0;
  }
  resp->set_under_replicated_partitions(under);
  return grpc::Status::OK;
}

v1::Admin::Stub* AdminService::StubFor(raft::NodeId node) {
  std::optional<std::string> addr = options_.directory->Address(node);
  if (!addr.has_value()) return nullptr;
  std::lock_guard<std::mutex> l(stubs_mu_);
  auto& stub = stubs_[*addr];
  if (!stub) {
    auto creds = options_.channel_credentials ? options_.channel_credentials
                                              : grpc::InsecureChannelCredentials();
    stub = v1::Admin::NewStub(grpc::CreateChannel(*addr, creds));
  }
  return stub.get();
}

std::map<uint32_t, v1::PartitionStatus> AdminService::GatherPartitions(
    std::set<raft::NodeId>* answered) {
  std::vector<raft::NodeId> nodes;
  for (const auto& [id, addr] : options_.directory->Addresses()) nodes.push_back(id);
  if (std::find(nodes.begin(), nodes.end(), options_.node_id) == nodes.end()) {
    nodes.push_back(options_.node_id);
  }
  std::vector<std::optional<v1::ListPartitionsResponse>> answers(nodes.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (nodes[i] == options_.node_id) {
      v1::ListPartitionsResponse local;
      LocalPartitions({}, &local);
      answers[i] = std::move(local);
      continue;
    }
    v1::Admin::Stub* stub = StubFor(nodes[i]);
    if (stub == nullptr) continue;
    threads.emplace_back([stub, &answers, i] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(1000));
      v1::ListPartitionsRequest req;
      req.set_local_only(true);
      v1::ListPartitionsResponse resp;
      if (stub->ListPartitions(&ctx, req, &resp).ok()) answers[i] = std::move(resp);
    });
  }
  for (std::thread& t : threads) t.join();
  std::map<uint32_t, v1::PartitionStatus> out;
  std::map<uint32_t, bool> from_leader;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (!answers[i].has_value()) continue;
    if (answered != nullptr) answered->insert(nodes[i]);
    for (v1::PartitionStatus& ps : *answers[i]->mutable_partitions()) {
      if (ps.has_error()) continue;
      const uint32_t p = ps.info().partition();
      const bool leader = ps.info().leader_node_id() == nodes[i];
      auto it = out.find(p);
      bool better = it == out.end() || (leader && !from_leader[p]) ||
                    (leader == from_leader[p] &&
                     ps.info().leader_term() > it->second.info().leader_term());
      if (better) {
        out[p] = std::move(ps);
        from_leader[p] = leader;
      }
    }
  }
  return out;
}

absl::Status AdminService::ProposeMetadata(const v1::MetadataCommand& cmd, raft::NodeId* leader) {
  std::promise<ProposalResult> done;
  auto f = done.get_future();
  host_.Propose(kMetadataGroup, cmd.SerializeAsString(),
                [&done](ProposalResult r) { done.set_value(std::move(r)); });
  ProposalResult r = f.get();
  *leader = r.leader_hint;
  return r.status;
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
  if (req->local_only()) {
    LocalPartitions(requested, resp);
    return grpc::Status::OK;
  }
  std::map<uint32_t, v1::PartitionStatus> gathered = GatherPartitions();
  if (requested.empty()) {
    for (uint32_t p = 0; p < options_.partition_count; ++p) requested.push_back(p);
  }
  for (uint32_t p : requested) {
    v1::PartitionStatus* ps = resp->add_partitions();
    auto it = gathered.find(p);
    if (it != gathered.end()) {
      *ps = it->second;
      continue;
    }
    v1::PartitionInfo* info = ps->mutable_info();
    info->set_partition(p);
    info->set_group_id(GroupForPartition(p));
    for (raft::NodeId id : PlacementOf(p)) info->add_voters(id);
    v1::ErrorInfo* e = ps->mutable_error();
    e->set_code(v1::ERROR_CODE_PARTITION_UNAVAILABLE);
    e->set_message(StrCat("no replica of partition ", p, " answered (replicas: ",
                          JoinIds(PlacementOf(p)), ")"));
    e->set_partition(p);
  }
  return grpc::Status::OK;
}

void AdminService::LocalPartitions(const std::vector<uint32_t>& wanted,
                                   v1::ListPartitionsResponse* resp) {
  std::vector<uint32_t> requested = wanted;
  const std::map<uint32_t, PartitionView> views = ReadPartitions(host_, requested);
  // Empty request: the hosted partitions in partition order (std::map), not all P of them.
  if (requested.empty()) {
    for (const auto& [p, v] : views) requested.push_back(p);
  }
  for (uint32_t p : requested) {
    auto it = views.find(p);
    if (it == views.end()) continue;  // not hosted here
    v1::PartitionStatus* ps = resp->add_partitions();
    v1::PartitionInfo* info = ps->mutable_info();
    info->set_partition(p);
    info->set_group_id(GroupForPartition(p));
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
    // Match indexes are known only to the leader (st.match is empty elsewhere: 0).
    auto match_of = [&st](raft::NodeId id) -> uint64_t {
      for (const auto& [member, index] : st.match) {
        if (member == id) return index;
      }
      return 0;
    };
    for (raft::NodeId id : st.conf_state.voters) {
      v1::ReplicaStatus* r = ps->add_replicas();
      r->set_node_id(id);
      r->set_role(id == st.leader ? v1::REPLICA_ROLE_LEADER : v1::REPLICA_ROLE_FOLLOWER);
      r->set_match_index(match_of(id));
    }
    for (raft::NodeId id : st.conf_state.learners) {
      v1::ReplicaStatus* r = ps->add_replicas();
      r->set_node_id(id);
      r->set_role(v1::REPLICA_ROLE_LEARNER);
      r->set_match_index(match_of(id));
    }
  }
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
    // The most caught-up other voter this node has heard from lately.
    uint64_t best_match = 0;
    for (const auto& [id, match] : st.match) {
      if (id == options_.node_id || !host_.PeerAlive(id, RaftHost::kTransferLiveness) ||
          std::find(voters.begin(), voters.end(), id) == voters.end()) {
        continue;
      }
      if (target == 0 || match > best_match) {
        target = id;
        best_match = match;
      }
    }
    if (target == 0) {
      return Error(grpc::StatusCode::FAILED_PRECONDITION, v1::ERROR_CODE_NOT_ENOUGH_NODES,
                   StrCat("partition ", p, " has no other voter this node can reach to take over",
                          " (voters: ", JoinIds(voters), ")"),
                   p);
    }
  } else if (!host_.PeerAlive(target, RaftHost::kTransferLiveness)) {
    // The leader takes no proposals while a transfer runs (Raft dissertation §3.10): a transfer
    // to a node it cannot reach would stall the partition until the transfer times out.
    return Error(
        grpc::StatusCode::FAILED_PRECONDITION, v1::ERROR_CODE_UNSPECIFIED,
        StrCat("node ", target, " has not been heard from by partition ", p, "'s leader (node ",
               options_.node_id, ") lately; not transferring leadership to it"),
        p);
  }

  auto deadline = std::chrono::steady_clock::now() + options_.default_transfer_timeout;
  if (ctx->deadline() != std::chrono::system_clock::time_point::max()) {
    // Answer a little before the caller gives up, so it gets OUTCOME_UNKNOWN, not a timeout.
    auto left = ctx->deadline() - std::chrono::system_clock::now() - std::chrono::milliseconds(50);
    deadline = std::chrono::steady_clock::now() +
               std::max<std::chrono::steady_clock::duration>(left, std::chrono::milliseconds(0));
  }
  host_.TransferLeadership(GroupForPartition(p), target);
  auto last_request = std::chrono::steady_clock::now();
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
      // Raft gives a transfer up after an election timeout (the target did not catch up, or
      // its TimeoutNow was lost, e.g. while its replica was still being created); ask again
      // while this node still leads. Asking while a transfer to the target runs changes nothing.
      if (view->status.role == raft::Role::kLeader &&
          std::chrono::steady_clock::now() - last_request >= options_.transfer_retry_interval) {
        host_.TransferLeadership(GroupForPartition(p), target);
        last_request = std::chrono::steady_clock::now();
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

const v1::NodeInfo* FindNode(const v1::MetadataStateRecord& rec, uint64_t id) {
  for (const v1::NodeInfo& n : rec.nodes()) {
    if (n.node_id() == id) return &n;
  }
  return nullptr;
}

}  // namespace

template <typename Req, typename Resp>
std::optional<grpc::Status> AdminService::ProposeOrForward(
    const v1::MetadataCommand& cmd, const Req& req, Resp* resp,
    grpc::Status (v1::Admin::Stub::*forward)(grpc::ClientContext*, const Req&, Resp*)) {
  raft::NodeId leader = 0;
  absl::Status st = ProposeMetadata(cmd, &leader);
  if (st.ok()) return std::nullopt;
  if (leader != 0 && leader != options_.node_id) {
    if (v1::Admin::Stub* stub = StubFor(leader); stub != nullptr) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      return (stub->*forward)(&ctx, req, resp);  // the controller answers
    }
  }
  return Error(grpc::StatusCode::UNAVAILABLE, v1::ERROR_CODE_NOT_LEADER,
               StrCat("metadata group: ", st.message()));
}

grpc::Status AdminService::AddNode(grpc::ServerContext*, const v1::AddNodeRequest* req,
                                   v1::AddNodeResponse* resp) {
  if (req->node_id() == 0) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT, v1::ERROR_CODE_INVALID_ARGUMENT,
                 "node_id is required (ids are chosen by the operator: core.node_id)");
  }
  if (req->peer_endpoint().host().empty() || req->peer_endpoint().port() == 0) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT, v1::ERROR_CODE_INVALID_ARGUMENT,
                 "peer_endpoint is required");
  }
  v1::MetadataStateRecord rec = options_.directory->Record();
  if (!rec.initialized()) {
    return Error(grpc::StatusCode::UNAVAILABLE, v1::ERROR_CODE_PARTITION_UNAVAILABLE,
                 "the cluster's metadata is not initialized yet; retry");
  }
  auto same = [&](const v1::NodeInfo& n) {
    return EndpointAddress(n.peer_endpoint()) == EndpointAddress(req->peer_endpoint());
  };
  if (const v1::NodeInfo* n = FindNode(rec, req->node_id()); n != nullptr) {
    if (!same(*n)) {
      return Error(grpc::StatusCode::INVALID_ARGUMENT, v1::ERROR_CODE_INVALID_ARGUMENT,
                   StrCat("node ", req->node_id(), " is already a member at ",
                          EndpointAddress(n->peer_endpoint())));
    }
    *resp->mutable_node() = *n;
    resp->mutable_metadata()->set_cluster_id(options_.cluster_id);
    resp->mutable_metadata()->set_partition_count(options_.partition_count);
    *resp->mutable_metadata()->mutable_nodes() = rec.nodes();
    return grpc::Status::OK;
  }
  v1::MetadataCommand cmd;
  v1::NodeInfo* add = cmd.mutable_add_node();
  add->set_node_id(req->node_id());
  *add->mutable_peer_endpoint() = req->peer_endpoint();
  *add->mutable_api_endpoint() =
      req->has_api_endpoint() ? req->api_endpoint() : req->peer_endpoint();
  add->set_state(v1::NODE_STATE_ACTIVE);
  if (auto forwarded = ProposeOrForward(cmd, *req, resp, &v1::Admin::Stub::AddNode)) {
    return *forwarded;
  }
  // Applied on this node (the controller) when the proposal answered.
  *resp->mutable_node() = *add;
  v1::MetadataStateRecord now = options_.directory->Record();
  resp->mutable_metadata()->set_cluster_id(options_.cluster_id);
  resp->mutable_metadata()->set_version(now.applied_index());
  resp->mutable_metadata()->set_partition_count(options_.partition_count);
  *resp->mutable_metadata()->mutable_nodes() = now.nodes();
  return grpc::Status::OK;
}

grpc::Status AdminService::RemoveNode(grpc::ServerContext*, const v1::RemoveNodeRequest* req,
                                      v1::RemoveNodeResponse* resp) {
  v1::MetadataStateRecord rec = options_.directory->Record();
  if (!rec.initialized()) {
    return Error(grpc::StatusCode::UNAVAILABLE, v1::ERROR_CODE_PARTITION_UNAVAILABLE,
                 "the cluster's metadata is not initialized yet; retry");
  }
  const v1::NodeInfo* n = FindNode(rec, req->node_id());
  if (n == nullptr) {
    return Error(grpc::StatusCode::NOT_FOUND, v1::ERROR_CODE_NODE_NOT_FOUND,
                 StrCat("node ", req->node_id(), " is not a member"));
  }
  if (n->state() == v1::NODE_STATE_DRAINING) {
    *resp->mutable_node() = *n;
    return grpc::Status::OK;
  }
  int active = 0;
  for (const v1::NodeInfo& m : rec.nodes()) active += m.state() == v1::NODE_STATE_ACTIVE;
  if (active - 1 < std::max(1, options_.replication_factor)) {
    return Error(grpc::StatusCode::FAILED_PRECONDITION, v1::ERROR_CODE_NOT_ENOUGH_NODES,
                 StrCat("removing node ", req->node_id(), " would leave ", active - 1,
                        " active node(s), fewer than the replication factor ",
                        options_.replication_factor));
  }
  v1::MetadataCommand cmd;
  cmd.mutable_set_node_state()->set_node_id(req->node_id());
  cmd.mutable_set_node_state()->set_state(v1::NODE_STATE_DRAINING);
  if (auto forwarded = ProposeOrForward(cmd, *req, resp, &v1::Admin::Stub::RemoveNode)) {
    return *forwarded;
  }
  *resp->mutable_node() = *n;
  resp->mutable_node()->set_state(v1::NODE_STATE_DRAINING);
  return grpc::Status::OK;
}

}  // namespace herald::cluster
