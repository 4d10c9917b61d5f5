// The core's Broker gRPC service (proto/herald/v1/broker.proto) over a node's RaftHost: Publish
// proposes each partition's messages to its Raft group and answers once they are committed and
// applied (PublishStream does the same for a stream of requests); Fetch reads a partition's applied
// state on its leader; Subscribe streams a partition's backlog from a position and then its new
// messages, under credit-based flow control.
//
// GetRetained pages through a partition's retained messages on its leader.
//
// Sessions (session_service.cc): OpenSession, UpdateSessions and CloseSession propose commands
// to the session's partition and answer once applied; GetSession reads the leader's applied
// state. Leases and timers are the SessionManager's.
//
// Not served yet: metadata watch (UNIMPLEMENTED).
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <string>

#include "absl/base/thread_annotations.h"
#include "herald/v1/broker.grpc.pb.h"
#include "libs/cluster/raft_host.h"
#include "libs/cluster/session_manager.h"

namespace herald::cluster {

struct BrokerServiceOptions {
  uint32_t partition_count = 8;
  raft::NodeId node_id = 0;  // this node (never named in its own NOT_LEADER hints)
  // Node id -> its Broker API address ("host:port"), for NOT_LEADER hints.
  std::shared_ptr<NodeDirectory> directory = std::make_shared<NodeDirectory>();
  uint32_t max_messages_per_request = 10'000;
  uint64_t max_message_bytes = 1 << 20;
  // PublishStream: most requests of one stream started and not answered yet, and most bytes
  // of them (the next request is read only below both).
  uint32_t max_stream_inflight = 1024;
  uint64_t max_stream_inflight_bytes = 64 << 20;
  uint32_t fetch_default_max_messages = 1000;
  uint64_t fetch_default_max_bytes = 4 << 20;
  // Subscribe: heartbeat interval bounds (the edge asks within them) and default.
  std::chrono::milliseconds heartbeat_min{100};
  std::chrono::milliseconds heartbeat_max{60'000};
  std::chrono::milliseconds heartbeat_default{5'000};
  // Subscribe: most messages and bytes read from one partition per round.
  uint32_t subscribe_batch_messages = 1000;
  uint64_t subscribe_batch_bytes = 1 << 20;
};

// Partition p is Raft group p + 1 (group 0 is reserved for cluster metadata).
inline GroupId GroupForPartition(uint32_t partition) { return GroupId{partition} + 1; }

// Publish, PublishStream and Fetch use gRPC's callback API (no thread waits on Raft); Subscribe is
// a synchronous bidirectional stream with a thread per stream (an edge opens one per core node).
using BrokerServiceBase = v1::Broker::WithCallbackMethod_Publish<
    v1::Broker::WithCallbackMethod_PublishStream<v1::Broker::WithCallbackMethod_Fetch<
        v1::Broker::WithCallbackMethod_GetRetained<v1::Broker::WithCallbackMethod_OpenSession<
            v1::Broker::WithCallbackMethod_UpdateSessions<
                v1::Broker::WithCallbackMethod_CloseSession<
                    v1::Broker::WithCallbackMethod_GetSession<v1::Broker::Service>>>>>>>>;

class BrokerService final : public BrokerServiceBase {
 public:
  // `sessions` (optional, must outlive the service) keeps the session leases and timers;
  // without it sessions are stored but no lease lapses and no timer fires.
  BrokerService(RaftHost& host, BrokerServiceOptions options, Clock& clock = Clock::Real(),
                SessionManager* sessions = nullptr);

  grpc::ServerUnaryReactor* Publish(grpc::CallbackServerContext* ctx,
                                    const v1::PublishRequest* request,
                                    v1::PublishResponse* response) override;
  grpc::ServerBidiReactor<v1::PublishStreamRequest, v1::PublishStreamResponse>* PublishStream(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* Fetch(grpc::CallbackServerContext* ctx, const v1::FetchRequest* request,
                                  v1::FetchResponse* response) override;
  grpc::ServerUnaryReactor* GetRetained(grpc::CallbackServerContext* ctx,
                                        const v1::GetRetainedRequest* request,
                                        v1::GetRetainedResponse* response) override;
  grpc::Status Subscribe(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<v1::SubscribeResponse, v1::SubscribeRequest>* stream) override;
  grpc::ServerUnaryReactor* OpenSession(grpc::CallbackServerContext* ctx,
                                        const v1::OpenSessionRequest* request,
                                        v1::OpenSessionResponse* response) override;
  grpc::ServerUnaryReactor* UpdateSessions(grpc::CallbackServerContext* ctx,
                                           const v1::UpdateSessionsRequest* request,
                                           v1::UpdateSessionsResponse* response) override;
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* ctx,
                                         const v1::CloseSessionRequest* request,
                                         v1::CloseSessionResponse* response) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* ctx,
                                       const v1::GetSessionRequest* request,
                                       v1::GetSessionResponse* response) override;

 private:
  class Subscription;
  class PublishStreamReactor;
  // Validates `request` and proposes its messages, filling `response` (one result per message)
  // and calling `done` once every message has an outcome: on the Raft host's thread, or on this
  // one (nothing to propose, or the host is stopping). A request that fails as a whole returns
  // its status instead, and `done` is not called. `request` is not referenced after the return.
  grpc::Status StartPublish(const v1::PublishRequest& request, v1::PublishResponse* response,
                            std::function<void()> done);
  void SetNotLeader(raft::NodeId leader, uint64_t term, v1::ErrorInfo* error) const;
  // This node holds no replica of `group`'s partition: NOT_LEADER naming one of the partition's
  // assigned replicas (term 0), which leads it or knows who does; PARTITION_UNAVAILABLE when
  // this node does not know the placement (yet).
  void SetNotHosted(GroupId group, v1::ErrorInfo* error) const;
  // Why a proposal on `group` did not (or may not have) committed, as a Herald error.
  void SetProposalError(const ProposalResult& r, GroupId group, v1::ErrorInfo* error) const;
  // INVALID_ARGUMENT's message for a malformed session update, or empty.
  std::string ValidateSessionUpdate(const v1::SessionUpdate& u) const;
  // The request's limits, or the defaults for those it leaves at 0.
  broker::FetchLimits RequestLimits(uint32_t max_messages, uint64_t max_bytes) const;
  // Whether this node can serve a read of the partition (hosted and leading); if not, sets
  // `out`'s error (a FetchResult or RetainedResult) to say why.
  template <typename Result>
  bool LeaderServes(GroupId group, const broker::PartitionStateMachine* sm, const GroupStatus* st,
                    Result* out) const;

  RaftHost& host_;
  const BrokerServiceOptions options_;
  Clock& clock_;
  SessionManager* const sessions_;

  // Shared subscriptions ($share/{group}/{filter}, MQTT 5.0 §4.8.2) across edges: the edges
  // whose Subscribe streams on this node hold each one. A message of a partition this node
  // leads goes to one of them, picked by its offset, so each edge's members together get each
  // message once cluster-wide (then the edge picks one of its members).
  std::mutex shared_mu_;
  std::map<std::string, std::map<std::string, int>> shared_members_ ABSL_GUARDED_BY(shared_mu_);
  void AddSharedMember(const std::string& key, const std::string& edge_id);
  void RemoveSharedMember(const std::string& key, const std::string& edge_id);
  // Whether `edge_id` is the member of `key` that gets the message at `offset`.
  bool SharedTurn(const std::string& key, const std::string& edge_id, uint64_t offset);
};

}  // namespace herald::cluster
