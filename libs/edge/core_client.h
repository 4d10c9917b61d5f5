// CoreClient: the edge's gRPC client of the core's Broker API (proto/herald/v1/broker.proto).
//
// Publishing: messages are queued per partition and sent to the partition's leader (learned
// from NOT_LEADER hints), at most one Publish request in flight per partition; whatever queued
// while a request was in flight goes out in the next one, so concurrent publishes are batched.
// The requests to one core node share a PublishStream (unary Publish calls for a minute to a
// node that answers it UNIMPLEMENTED, an older version).
// Every message carries this edge's producer id and the partition's next sequence number, and a
// retry resends the same (producer id, sequence), so the core appends it at most once.
//
// Subscribing: one Subscribe stream per core address, each with its own reader thread, carrying
// the union of the filters the edge's clients hold (reference-counted here) and the partitions
// that address leads. Every partition is attached once, live (START_MODE_LATEST) the first time
// and after the last position seen when it moves; a partition stopped with NOT_LEADER is
// attached again on the hinted node. Credit is granted back as deliveries are consumed.
//
// Threading: every method is thread-safe. Callbacks run on gRPC or CoreClient threads; they
// must not block (post to an event loop instead) and must not call Shutdown().
#pragma once

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "herald/v1/broker.grpc.pb.h"
#include "libs/edge/core_api.h"
#include "libs/edge/publish_lane.h"

namespace herald::edge {

struct CoreClientOptions {
  // Core node addresses ("host:port"). Node id i (1-based) is taken to be addresses[i-1] when
  // a NOT_LEADER hint names a node without an endpoint.
  std::vector<std::string> addresses;
  // Must equal the cluster's partition count (cluster.partitions).
  uint32_t partitions = 8;
  // Identifies this edge on its Subscribe streams.
  std::string edge_id = "edge";
  // A publish that is not acknowledged within this time fails with DEADLINE_EXCEEDED (its
  // outcome is then unknown).
  std::chrono::milliseconds publish_timeout{15000};
  // A Publish request (a unary call, or one on a PublishStream) unanswered after this long is
  // given up and sent again (same producer id and sequences, so it is committed at most once).
  std::chrono::milliseconds publish_request_timeout{5000};
  // The most messages in one Publish request.
  size_t max_batch = 256;
  // Messages waiting per partition (queued or in flight); a Publish beyond it fails at once
  // with RESOURCE_EXHAUSTED, so an unreachable partition cannot take all memory.
  size_t max_queued_per_partition = 10000;
  // Credit granted to each Subscribe stream at start, and topped up as it is consumed.
  uint64_t stream_credit_bytes = 4 << 20;
  // Fetch, GetRetained and session calls give up after this long (retrying meanwhile).
  std::chrono::milliseconds request_timeout{10000};
  // How often open sessions' leases are renewed (the core's lease is 30 s by default).
  std::chrono::milliseconds lease_renew_interval{5000};
  // Credentials of the channels to the core nodes (GrpcTlsConfig::ChannelCredentials for
  // mutual TLS); null is taken as insecure.
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
};

class CoreClient final : public CoreApi {
 public:
  // Called with every batch of messages a Subscribe stream delivers (in offset order per
  // partition). Runs on a stream thread.
  // The callback may move the messages out.
  using DeliveryCallback = std::function<void(const std::vector<v1::Message*>& messages)>;
  // OK when every message of the Publish call was committed (duplicates included).
  using PublishCallback = std::function<void(const absl::Status& status)>;

  CoreClient(CoreClientOptions options, DeliveryCallback on_delivery);
  ~CoreClient() override;  // Shutdown()

  // Starts the Subscribe streams.
  absl::Status Start();
  // Ends the streams, fails queued publishes with UNAVAILABLE and waits for in-flight requests
  // and threads. Idempotent.
  void Shutdown();

  // Publishes `messages` (topic, payload, qos and attributes set; producer id, sequence and
  // partition are filled here). `done` runs once, when all are committed or one failed.
  void Publish(std::vector<v1::Message> messages, PublishCallback done) override;

  // Adds a reference to `filter` (a valid MQTT topic filter, shared-subscription prefix
  // stripped). `applied` runs when every connected stream has applied the filter (at once when
  // it already had), so messages committed afterwards are delivered.
  void AddFilter(const std::string& filter, std::function<void()> applied) override;
  // Drops a reference; the filter leaves the streams with its last reference.
  void RemoveFilter(const std::string& filter) override;

  // Waits until every partition is attached to a stream (its leader serves it), at most
  // `timeout`; false on timeout. A partition has no leader for a moment after a core starts.
  bool WaitUntilAttached(std::chrono::milliseconds timeout);

  uint32_t partitions() const override { return options_.partitions; }
  std::optional<v1::PartitionPosition> LivePosition(uint32_t partition) override;

  void Fetch(uint32_t partition, const v1::PartitionPosition& after,
             std::vector<std::string> filters, uint32_t max_messages,
             std::function<void(absl::StatusOr<v1::FetchResult>)> done) override;
  void GetRetained(std::vector<std::string> filters, uint32_t max_messages,
                   std::function<void(absl::StatusOr<RetainedMessages>)> done) override;
  void OpenSession(v1::OpenSessionRequest request,
                   std::function<void(absl::StatusOr<v1::OpenSessionResponse>)> done) override;
  void UpdateSession(v1::SessionUpdate update,
                     std::function<void(const absl::Status&)> done) override;
  void CloseSession(v1::CloseSessionRequest request,
                    std::function<void(const absl::Status&)> done) override;
  void GetSession(const std::string& client_id,
                  std::function<void(absl::StatusOr<v1::Session>)> done) override;

 private:
  struct Pending;
  struct PartitionQueue;
  struct Stream;
  struct Call;

  // Publishing.
  // Starts the partition's next request if it may; one for a PublishStream is only queued in
  // `to_send_`: the caller runs SendQueued() once it released mu_.
  void MaybeSendLocked(uint32_t partition) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendQueued() ABSL_LOCKS_EXCLUDED(mu_);
  // Fails the requests on PublishStreams that went unanswered too long; runs every
  // ExpiryCheckInterval().
  void ExpirePublishes();
  // The current PublishStream lanes (to use outside mu_).
  std::vector<std::shared_ptr<PublishLane>> LanesLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::chrono::milliseconds ExpiryCheckInterval() const {
    return std::clamp(options_.publish_request_timeout / 10, std::chrono::milliseconds(10),
                      std::chrono::milliseconds(500));
  }
  void OnPublishDone(Call* call, const grpc::Status& status);
  void FinishPending(const std::shared_ptr<Pending>& p, const absl::Status& s);
  size_t LeaderIndexLocked(uint32_t partition, const v1::ErrorInfo* error, size_t current)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Unary calls to a partition's leader, retried on NOT_LEADER and unavailability until
  // `options_.request_timeout`. `invoke` starts the call on a stub; `item_error` finds an
  // in-band error in an OK response (nullptr: none).
  template <typename Req, typename Resp>
  struct Unary;
  struct RetainedScan;
  template <typename Req, typename Resp>
  void CallLeader(std::shared_ptr<Unary<Req, Resp>> call);
  void RenewLeases();

  // Subscribing.
  void RunStream(Stream* s);
  void AttachPartition(uint32_t partition, size_t stream_index);
  void ProcessStopped(Stream* s, const v1::PartitionStopped& stopped);
  // Remembers how far a partition attached to `s` was evaluated, so a later attach (another
  // node, a new stream) carries on after it instead of starting at LATEST.
  void RecordPositionLocked(Stream* s, uint32_t partition, uint64_t epoch, uint64_t offset)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ChangeAppliedLocked(Stream* s, const v1::SubscribeChangeApplied& applied)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StreamDownLocked(Stream* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs `fn` on the timer thread after `delay`.
  void RunAfter(std::chrono::milliseconds delay, std::function<void()> fn);
  void RunTimers();

  const CoreClientOptions options_;
  const DeliveryCallback on_delivery_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<v1::Broker::Stub>> stubs_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ = false;
  // Publishing state.
  std::vector<std::unique_ptr<PartitionQueue>> queues_ ABSL_GUARDED_BY(mu_);
  std::set<Call*> calls_ ABSL_GUARDED_BY(mu_);
  // Requests for PublishStreams, not yet handed to their lane (see MaybeSendLocked).
  std::vector<Call*> to_send_ ABSL_GUARDED_BY(mu_);
  // Per core address: the current PublishStream (null until the next request opens one), and
  // until when the node gets unary Publish calls instead (it answered UNIMPLEMENTED).
  std::vector<std::shared_ptr<PublishLane>> lanes_ ABSL_GUARDED_BY(mu_);
  std::vector<std::chrono::steady_clock::time_point> unary_until_ ABSL_GUARDED_BY(mu_);
  int lanes_alive_ ABSL_GUARDED_BY(mu_) = 0;  // lanes not done yet (Shutdown waits for them)
  uint64_t next_request_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::set<grpc::ClientContext*> unary_calls_ ABSL_GUARDED_BY(mu_);
  // Held from the allocation of a SubscribeChange id to its write (and while a stream starts),
  // so every stream receives changes in id order and none falls between a stream's start message
  // and its first change. Taken before mu_ and write_mu.
  std::mutex change_mu_;
  bool partition_mismatch_logged_ ABSL_GUARDED_BY(mu_) = false;
  // Subscribing state.
  std::map<std::string, int> filter_refs_ ABSL_GUARDED_BY(mu_);
  // Filters added but not yet applied everywhere: the streams still to apply them, and the
  // callbacks to run then.
  struct FilterWaiters {
    std::set<Stream*> streams;
    std::vector<std::function<void()>> callbacks;
  };
  std::map<std::string, FilterWaiters> filter_waiters_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Stream>> streams_;
  // Where a partition stopped on one stream resumes on the next (its last position).
  std::map<uint32_t, v1::PartitionPosition> resume_ ABSL_GUARDED_BY(mu_);
  // Timers.
  std::multimap<std::chrono::steady_clock::time_point, std::function<void()>> timers_
      ABSL_GUARDED_BY(mu_);
  std::thread timer_thread_;
  // Open sessions whose leases this client renews: client id -> owner epoch.
  std::map<std::string, uint64_t> leases_ ABSL_GUARDED_BY(mu_);
  bool renewing_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace herald::edge
