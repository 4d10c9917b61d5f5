// The multi-Raft host of a core node: drives every Raft group the node has a replica of (topic
// partitions, and later the metadata group) on one thread, with one RocksDB write per pass.
//
// One pass of the host's thread:
//   1. steps every inbound message into its group, ticks the groups whose tick is due, and
//      proposes queued client commands on the groups this node leads;
//   2. collects every group's Ready: stages its snapshot, entries and hard state
//      (storage::RaftLogStore) and applies its committed entries to the group's state machine,
//      all into one WriteBatch;
//   3. writes that batch with one fsync (group commit);
//   4. only then sends the Readies' messages and answers the proposals whose entries applied;
//   5. advances every node.
// That order is the host contract of libs/raft/node.h: nothing leaves the node before the state
// it depends on is durable, and only committed entries are applied.
//
// Threading: the public methods are thread-safe; everything else runs on the host's thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "libs/broker/partition_state_machine.h"
#include "libs/common/clock.h"
#include "libs/raft/raft.h"
#include "libs/storage/engine.h"
#include "libs/storage/raft_log_store.h"

namespace herald::cluster {

using GroupId = uint64_t;

// Carries Raft messages to other nodes. Called on the host's thread only; implementations batch
// what is sent between two Flush() calls (one pass) per destination node.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual void Send(GroupId group, raft::Message message) = 0;
  virtual void Flush() = 0;
};

struct RaftHostOptions {
  raft::NodeId node_id = 0;
  // Wall time of one Raft tick. Election timeout = election_ticks ticks (randomized up to 2x).
  std::chrono::milliseconds tick{100};
  int election_ticks = 10;
  int heartbeat_ticks = 1;
  // Leader flow control: proposals are refused while this many entries await commit.
  uint64_t max_uncommitted_entries = 4096;
  uint64_t random_seed = 0;  // 0: seeded from the node id
  // Raft log compaction: when a group's log holds more than this many applied entries, its
  // leader proposes discarding all but the newest `log_keep_entries` of them that every voter
  // has replicated. 0 disables compaction.
  uint64_t log_compact_threshold = 20000;
  uint64_t log_keep_entries = 2000;
};

// The outcome of a proposal: OK with what the apply produced, or why it did not (or may not
// have) committed. UNAVAILABLE with "outcome unknown" means the entry may still commit: callers
// retry with the same idempotency keys.
struct ProposalResult {
  absl::Status status;
  raft::NodeId leader_hint = 0;  // set with NOT_LEADER-like failures when a leader is known
  broker::ApplyResult apply;
};
using ProposalCallback = std::function<void(ProposalResult)>;

// Introspection of one group, for status pages and tests.
struct GroupStatus {
  GroupId group = 0;
  raft::Role role = raft::Role::kFollower;
  raft::NodeId leader = 0;
  uint64_t term = 0;
  uint64_t commit = 0;
  uint64_t applied = 0;
  uint64_t last_index = 0;
  uint64_t first_index = 0;  // first entry still in the log (compaction discards before it)
  raft::ConfState conf_state;
  // The partition's state machine.
  uint32_t partition = 0;
  uint64_t last_offset = 0;
  uint64_t stored_messages = 0;
  uint64_t stored_bytes = 0;
  uint64_t trimmed_messages = 0;
};

// Counters of a host's activity since it started. Thread-safe to read.
struct RaftHostStats {
  std::atomic<uint64_t> passes{0};
  std::atomic<uint64_t> write_batches{0};
  std::atomic<uint64_t> write_nanos{0};  // time spent in Engine::Write (fsync included)
  std::atomic<uint64_t> entries_applied{0};
  std::atomic<uint64_t> proposals{0};
  std::atomic<uint64_t> proposals_refused{0};
  std::atomic<uint64_t> leader_changes{0};  // observed changes of a group's leader
};

class RaftHost {
 public:
  RaftHost(storage::Engine& engine, Transport& transport, RaftHostOptions options,
           Clock& clock = Clock::Real());
  ~RaftHost();

  // Adds a partition group before Start(). `initial_voters` founds the group when the node has
  // no state for it yet (every founding member must be given the same list); a node added later
  // passes an empty list and receives a snapshot from the leader.
  absl::Status AddPartitionGroup(GroupId group, uint32_t partition,
                                 std::vector<raft::NodeId> initial_voters);

  absl::Status Start();
  // Stops the thread; pending proposals fail with UNAVAILABLE (outcome unknown).
  void Stop();

  // Queues an inbound message from the transport. Thread-safe.
  void Deliver(GroupId group, raft::Message message);
  // Proposes a PartitionCommand (serialized) on `group`; `done` runs on the host's thread once
  // the outcome is known. Thread-safe.
  void Propose(GroupId group, std::string command, ProposalCallback done);
  // Asks the group's leader (this node) to hand leadership to `to`. Thread-safe.
  void TransferLeadership(GroupId group, raft::NodeId to);
  // Hands every leadership of this node to the most caught-up other voter of each group and
  // waits up to `timeout` for the transfers to finish, so that stopping the node does not leave
  // its partitions without a leader for an election timeout. Returns how many groups this node
  // still leads. Thread-safe.
  int HandOffLeadership(std::chrono::milliseconds timeout);

  // Runs `fn` on the host's thread with the partition's state machine and waits for it (reads
  // of applied state). Returns false if the group is unknown or the host is stopped.
  bool WithPartition(GroupId group, const std::function<void(broker::PartitionStateMachine&)>& fn);

  std::vector<GroupStatus> Status();
  const RaftHostStats& stats() const { return stats_; }

  // Calls `fn` (on the host's thread, after the write) whenever the group's partition applied
  // new messages or the group's leader changed. `fn` must be quick (wake someone up). Returns an
  // id for RemoveWatcher. Thread-safe.
  uint64_t AddWatcher(GroupId group, std::function<void()> fn);
  void RemoveWatcher(GroupId group, uint64_t id);

  // Runs `fn` on the host's thread, soon, with the group's state machine and status (nullptrs
  // when the group is unknown or the host is stopping: `fn` then runs on the caller's thread).
  // For reads that must not block the caller. Thread-safe.
  using ReadFn = std::function<void(broker::PartitionStateMachine*, const GroupStatus*)>;
  void ReadAsync(GroupId group, ReadFn fn);

 private:
  struct Group;
  struct PendingProposal {
    uint64_t term;
    ProposalCallback done;
  };
  struct Inbox {
    std::vector<std::pair<GroupId, raft::Message>> messages;
    std::vector<std::tuple<GroupId, std::string, ProposalCallback>> proposals;
    std::vector<std::function<void()>> tasks;
    bool stop = false;
  };

  void Run();
  void RunPass(Inbox& inbox);
  void FailPending(Group& g, const absl::Status& why);
  void MaybeProposeCompaction(Group& g);
  static GroupStatus StatusOf(const Group& g);

  storage::Engine& engine_;
  Transport& transport_;
  const RaftHostOptions options_;
  Clock& clock_;
  std::map<GroupId, std::unique_ptr<Group>> groups_;  // host thread (fixed after Start)
  RaftHostStats stats_;

  std::mutex watchers_mu_;
  std::map<GroupId, std::map<uint64_t, std::function<void()>>> watchers_
      ABSL_GUARDED_BY(watchers_mu_);
  uint64_t next_watcher_id_ ABSL_GUARDED_BY(watchers_mu_) = 1;

  std::mutex mu_;
  std::condition_variable cv_;
  Inbox inbox_ ABSL_GUARDED_BY(mu_);
  bool running_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace herald::cluster
