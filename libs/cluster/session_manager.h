// The leader-side timers of MQTT persistent sessions (docs/core.md "Sessions"): owner leases,
// will delays, session expiry, and the publication of due wills.
//
// For every partition group this node leads, every `timer_interval`:
//   - leases: a connected session whose owner has not renewed (OpenSession, UpdateSessions)
//     within `lease` is disconnected as if closed with publish_will (SessionTimerCommand
//     LEASE_LAPSED). Leases live in this node's memory only; when the node becomes leader of a
//     group (a new term) it grants every connected session a fresh lease.
//   - durable deadlines (will delay, session expiry) come from the state machine's in-memory
//     index and are proposed as SessionTimerCommands, which apply re-checks.
//   - the will outbox: each due will is published into its topic's partition, by proposing it
//     locally when this node hosts that partition's group and leads it, else by Broker.Publish
//     to the partition's leader (following NOT_LEADER hints); then WillPublishedCommand is
//     proposed. The will's idempotency key makes a repeat (after a failure or leader change) a
//     duplicate.
// Nothing here is needed for correctness on followers: a follower that becomes leader rebuilds
// its leases and finds the durable deadlines and the outbox in its applied state.
//
// Threading: the checks run on the Raft host's thread (RaftHost::ReadAsync), forwarding to
// other nodes on the manager's own thread. Public methods are thread-safe.
#pragma once

#include <grpcpp/security/credentials.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "herald/v1/broker.grpc.pb.h"
#include "libs/cluster/raft_host.h"

namespace herald::cluster {

struct SessionManagerOptions {
  raft::NodeId node_id = 0;
  uint32_t partition_count = 8;
  // Node id -> Broker API address ("host:port"), to forward wills to other partitions' leaders.
  std::shared_ptr<NodeDirectory> directory = std::make_shared<NodeDirectory>();
  // Owner lease (OpenSessionResponse.lease_ms).
  std::chrono::milliseconds lease{30'000};
  // How often the timers are checked.
  std::chrono::milliseconds timer_interval{200};
  // Deadline of one forwarded will publish.
  std::chrono::milliseconds forward_timeout{2'000};
  // Credentials of the channels to other nodes' Broker API (insecure when null).
  std::shared_ptr<grpc::ChannelCredentials> channel_credentials;
};

class SessionManager {
 public:
  SessionManager(RaftHost& host, SessionManagerOptions options, Clock& clock = Clock::Real());
  ~SessionManager();

  // Starts checking the groups of `host` (call after the groups were added).
  void Start();
  // Stops the thread; call before stopping the host.
  void Stop();

  uint32_t lease_ms() const { return static_cast<uint32_t>(options_.lease.count()); }
  // Renews (or grants) the lease of `client_id`'s connection `owner_epoch` in `group`; called
  // when one of its mutations committed on this node as leader.
  void RenewLease(GroupId group, const std::string& client_id, uint64_t owner_epoch);

 private:
  struct Lease {
    uint64_t owner_epoch = 0;
    int64_t deadline = 0;
  };
  struct GroupTimers {
    uint64_t term = 0;  // leader term the leases belong to; 0: not leader
    // The leases are granted once the leader applied every entry it had when it was first seen
    // leading (so it knows every connected session); until then none lapses.
    uint64_t grant_at_index = 0;
    bool leases_granted = false;
    std::map<std::string, Lease> leases;
    std::set<std::pair<int64_t, std::string>> lease_order;
    // Commands proposed and not yet answered (no need to propose them again each tick).
    std::set<std::pair<std::string, int>> timers_in_flight;
    std::set<uint64_t> wills_in_flight;
  };
  struct WillJob {
    GroupId group = 0;  // the session's group (for WillPublished)
    uint64_t will_id = 0;
    v1::Message message;
    raft::NodeId leader_hint = 0;
  };

  void Run();
  // Runs on the host's thread for one group.
  void Check(GroupId group, broker::PartitionStateMachine* sm, const GroupStatus* st);
  void SetLease(GroupTimers& g, const std::string& client_id, uint64_t epoch, int64_t deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PublishWill(WillJob job);
  void ForwardWill(WillJob job);
  void WillPublished(GroupId group, uint64_t will_id);
  void ClearWillInFlight(GroupId group, uint64_t will_id);
  v1::Broker::Stub* StubFor(raft::NodeId node);
  int64_t NowMs() const;

  RaftHost& host_;
  const SessionManagerOptions options_;
  Clock& clock_;
  std::vector<GroupId> groups_;  // fixed at Start

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::map<GroupId, GroupTimers> timers_ ABSL_GUARDED_BY(mu_);
  std::deque<WillJob> forward_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;

  // Manager thread only.
  std::map<raft::NodeId, std::unique_ptr<v1::Broker::Stub>> stubs_;
  size_t next_peer_ = 0;
};

}  // namespace herald::cluster
