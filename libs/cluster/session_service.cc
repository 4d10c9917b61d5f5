// The Broker service's session RPCs (broker.proto "Sessions"). Mutations are PartitionCommands
// of the session's partition (hash(client_id) mod P), answered once applied on this node as
// leader; GetSession reads the leader's applied state.
#include <atomic>

#include "libs/cluster/broker_service.h"
#include "libs/common/partitioning.h"
#include "libs/common/strings.h"
#include "libs/protocol/mqtt/topic.h"

namespace herald::cluster {
namespace {

int64_t UnixMs(Clock& clock) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock.WallNow().time_since_epoch())
      .count();
}

void SetError(v1::ErrorInfo* e, v1::ErrorCode code, std::string message) {
  e->set_code(code);
  e->set_message(std::move(message));
}

grpc::StatusCode GrpcCode(v1::ErrorCode code) {
  switch (code) {
    case v1::ERROR_CODE_FENCED:
      return grpc::StatusCode::FAILED_PRECONDITION;
    case v1::ERROR_CODE_SESSION_NOT_FOUND:
      return grpc::StatusCode::NOT_FOUND;
    case v1::ERROR_CODE_INVALID_ARGUMENT:
    case v1::ERROR_CODE_MESSAGE_TOO_LARGE:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case v1::ERROR_CODE_OVERLOADED:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case v1::ERROR_CODE_INTERNAL:
      return grpc::StatusCode::INTERNAL;
    default:
      return grpc::StatusCode::UNAVAILABLE;
  }
}

// An error that ends an RPC: the gRPC code that goes with it, and the ErrorInfo as details.
grpc::Status ErrorStatus(const v1::ErrorInfo& e) {
  return grpc::Status(GrpcCode(e.code()), e.message(), e.SerializeAsString());
}

grpc::Status InvalidArgument(std::string message) {
  v1::ErrorInfo e;
  SetError(&e, v1::ERROR_CODE_INVALID_ARGUMENT, std::move(message));
  return ErrorStatus(e);
}

std::string ValidateWill(const v1::WillMessage& will) {
  if (auto err = mqtt::ValidateTopicName(will.message().topic()); err.has_value()) {
    return StrCat("will topic '", will.message().topic(), "': ", err->message);
  }
  return {};
}

std::string ValidateFilter(const std::string& filter) {
  std::optional<mqtt::Error> err;
  if (mqtt::IsSharedSubscription(filter)) {
    mqtt::SharedSubscription shared;
    err = mqtt::ParseSharedSubscription(filter, &shared);
  } else {
    err = mqtt::ValidateTopicFilter(filter);
  }
  if (err.has_value()) return StrCat("filter '", filter, "': ", err->message);
  return {};
}

std::string ValidateInflight(v1::InflightDirection direction, uint32_t packet_id) {
  if (direction != v1::INFLIGHT_DIRECTION_OUTBOUND && direction != v1::INFLIGHT_DIRECTION_INBOUND) {
    return "in-flight entry without a direction";
  }
  if (packet_id == 0 || packet_id > 65535) return StrCat("packet id ", packet_id, " out of range");
  return {};
}

}  // namespace

std::string BrokerService::ValidateSessionUpdate(const v1::SessionUpdate& u) const {
  if (u.client_id().empty()) return "client_id must not be empty";
  for (const std::string& f : u.remove_subscriptions()) {
    if (f.empty()) return "empty filter";
  }
  for (const v1::SessionSubscription& sub : u.put_subscriptions()) {
    if (std::string e = ValidateFilter(sub.filter()); !e.empty()) return e;
    if (sub.max_qos() > v1::QOS_EXACTLY_ONCE || sub.max_qos() < v1::QOS_AT_MOST_ONCE) {
      return StrCat("filter '", sub.filter(), "': invalid QoS");
    }
  }
  for (const v1::InflightRef& ref : u.remove_inflight()) {
    if (std::string e = ValidateInflight(ref.direction(), ref.packet_id()); !e.empty()) return e;
  }
  for (const v1::InflightMessage& m : u.put_inflight()) {
    if (std::string e = ValidateInflight(m.direction(), m.packet_id()); !e.empty()) return e;
  }
  for (const v1::PartitionPosition& p : u.commit_positions()) {
    if (p.partition() >= options_.partition_count) {
      return StrCat("partition ", p.partition(), " does not exist");
    }
  }
  if (u.has_set_will()) return ValidateWill(u.set_will());
  return {};
}

grpc::ServerUnaryReactor* BrokerService::OpenSession(grpc::CallbackServerContext* ctx,
                                                     const v1::OpenSessionRequest* request,
                                                     v1::OpenSessionResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (request->client_id().empty() || request->edge_id().empty()) {
    reactor->Finish(InvalidArgument("client_id and edge_id must not be empty"));
    return reactor;
  }
  if (request->has_will()) {
    if (std::string e = ValidateWill(request->will()); !e.empty()) {
      reactor->Finish(InvalidArgument(std::move(e)));
      return reactor;
    }
  }
  const GroupId group =
      GroupForPartition(PartitionFor(request->client_id(), options_.partition_count));
  v1::PartitionCommand cmd;
  cmd.set_proposed_at_unix_ms(UnixMs(clock_));
  *cmd.mutable_open_session()->mutable_request() = *request;
  host_.Propose(group, cmd.SerializeAsString(), [this, reactor, response, group](ProposalResult r) {
    if (!r.status.ok() || !r.apply.open_session.has_value()) {
      v1::ErrorInfo e;
      SetProposalError(r, group, &e);
      reactor->Finish(ErrorStatus(e));
      return;
    }
    *response = std::move(*r.apply.open_session);
    response->set_lease_ms(sessions_ != nullptr ? sessions_->lease_ms()
                                                : SessionManagerOptions().lease.count());
    if (sessions_ != nullptr) {
      sessions_->RenewLease(group, response->session().client_id(),
                            response->session().owner_epoch());
    }
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* BrokerService::UpdateSessions(grpc::CallbackServerContext* ctx,
                                                        const v1::UpdateSessionsRequest* request,
                                                        v1::UpdateSessionsResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  std::map<uint32_t, std::vector<int>> by_partition;
  for (int i = 0; i < request->updates_size(); ++i) {
    v1::SessionUpdateResult* r = response->add_results();
    const v1::SessionUpdate& u = request->updates(i);
    if (std::string e = ValidateSessionUpdate(u); !e.empty()) {
      SetError(r->mutable_error(), v1::ERROR_CODE_INVALID_ARGUMENT, std::move(e));
      continue;
    }
    by_partition[PartitionFor(u.client_id(), options_.partition_count)].push_back(i);
  }
  if (by_partition.empty()) {
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  // As in Publish: callbacks run on the host's thread; each writes only its own results.
  auto outstanding = std::make_shared<std::atomic<size_t>>(by_partition.size());
  const int64_t now = UnixMs(clock_);
  for (auto& [partition, indexes] : by_partition) {
    v1::PartitionCommand cmd;
    cmd.set_proposed_at_unix_ms(now);
    for (int i : indexes) *cmd.mutable_update_sessions()->add_updates() = request->updates(i);
    const GroupId group = GroupForPartition(partition);
    host_.Propose(group, cmd.SerializeAsString(),
                  [this, reactor, request, response, outstanding, group,
                   indexes = std::move(indexes)](ProposalResult r) {
                    for (size_t k = 0; k < indexes.size(); ++k) {
                      v1::SessionUpdateResult* out = response->mutable_results(indexes[k]);
                      if (r.status.ok() && k < r.apply.session_updates.size()) {
                        *out = std::move(r.apply.session_updates[k]);
                        if (!out->has_error() && sessions_ != nullptr) {
                          const v1::SessionUpdate& u = request->updates(indexes[k]);
                          sessions_->RenewLease(group, u.client_id(), u.owner_epoch());
                        }
                        continue;
                      }
                      SetProposalError(r, group, out->mutable_error());
                    }
                    if (outstanding->fetch_sub(1) == 1) reactor->Finish(grpc::Status::OK);
                  });
  }
  return reactor;
}

grpc::ServerUnaryReactor* BrokerService::CloseSession(grpc::CallbackServerContext* ctx,
                                                      const v1::CloseSessionRequest* request,
                                                      v1::CloseSessionResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (request->client_id().empty()) {
    reactor->Finish(InvalidArgument("client_id must not be empty"));
    return reactor;
  }
  const GroupId group =
      GroupForPartition(PartitionFor(request->client_id(), options_.partition_count));
  v1::PartitionCommand cmd;
  cmd.set_proposed_at_unix_ms(UnixMs(clock_));
  *cmd.mutable_close_session()->mutable_request() = *request;
  host_.Propose(group, cmd.SerializeAsString(), [this, reactor, response, group](ProposalResult r) {
    if (r.status.ok() && r.apply.close_session.has_value()) {
      *response = std::move(*r.apply.close_session);
      reactor->Finish(grpc::Status::OK);
      return;
    }
    v1::ErrorInfo e;
    if (r.status.ok() && r.apply.session_error.code() != v1::ERROR_CODE_UNSPECIFIED) {
      e = std::move(r.apply.session_error);
    } else {
      SetProposalError(r, group, &e);
    }
    reactor->Finish(ErrorStatus(e));
  });
  return reactor;
}

grpc::ServerUnaryReactor* BrokerService::GetSession(grpc::CallbackServerContext* ctx,
                                                    const v1::GetSessionRequest* request,
                                                    v1::GetSessionResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (request->client_id().empty()) {
    reactor->Finish(InvalidArgument("client_id must not be empty"));
    return reactor;
  }
  const uint32_t partition = PartitionFor(request->client_id(), options_.partition_count);
  // Linearizable (a ReadIndex round, as Fetch): a deposed leader does not answer.
  host_.ReadLinearizable(
      GroupForPartition(partition), [this, reactor, request, response, partition](
                                        broker::PartitionStateMachine* sm, const GroupStatus* st) {
        v1::ErrorInfo e;
        e.set_partition(partition);
        if (sm == nullptr) {
          SetNotHosted(GroupForPartition(partition), &e);
        } else if (st->role != raft::Role::kLeader) {
          SetNotLeader(st->leader, st->term, &e);
        } else {
          auto s = sm->GetSession(request->client_id());
          if (!s.ok()) {
            SetError(&e, v1::ERROR_CODE_INTERNAL, std::string(s.status().message()));
          } else if (!s->has_value()) {
            SetError(&e, v1::ERROR_CODE_SESSION_NOT_FOUND,
                     StrCat("no session for client '", request->client_id(), "'"));
          } else {
            *response->mutable_session() = std::move(**s);
            reactor->Finish(grpc::Status::OK);
            return;
          }
        }
        reactor->Finish(ErrorStatus(e));
      });
  return reactor;
}

}  // namespace herald::cluster
