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
// Pipelined fsync: with storage.sync on, step 3 writes the batch without waiting for the disk
// and a syncer thread fsyncs the write-ahead log while the host goes on with the next pass; the
// pass's messages wait in order until the fsync that covers them completes (one fsync covers
// every pass written before it started). A committed entry is applied only once its own log
// entry is durable on this node, so what readers see and what proposals are answered with never
// depends on an unsynced write (this matters for single-replica groups, where an entry commits
// as soon as it is appended). Passes thus overlap the disk instead of waiting for it.
//
// Quiescence: a group this node leads whose log is fully committed, applied and replicated to
// every member, with nothing pending, is quiesced after a few idle ticks: its leader sends each
// member one last heartbeat marked "quiesce" (Transport::SendQuiesce) and every replica stops
// ticking, so idle groups cost no heartbeats and no timer work. Any activity wakes a group: a
// proposal, a membership change or leadership transfer, any Raft message other than heartbeat
// responses, and any output other than heartbeat responses. Failure detection for quiesced
// groups moves to the node level: transports make every peer hear from this node at least once
// per tick (Transport::Tick), and a quiesced replica wakes when a member of its group has not
// been heard from for an election timeout; when that member is its leader, the replica wakes
// with its election timer nearly expired, so it campaigns within one randomized timeout.
//
// Threading: the public methods are thread-safe; everything else runs on the host's thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string_view>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "libs/broker/partition_state_machine.h"
#include "herald/v1/partition.pb.h"
#include "libs/cluster/metadata.h"
#include "libs/common/clock.h"
#include "libs/raft/raft.h"
#include "libs/storage/engine.h"
#include "libs/storage/raft_log_store.h"

namespace herald::cluster {

using GroupId = uint64_t;

// A consistent image of one group's state-machine keys (every key of the partition column
// family under GroupStatePrefix(group)) as of the group's applied index `index`: a RocksDB
// snapshot the transport reads off the host's thread, released when the last user drops it.
struct SnapshotSource {
  SnapshotSource(storage::Engine& engine, GroupId group, uint64_t index);
  ~SnapshotSource();
  SnapshotSource(const SnapshotSource&) = delete;
  SnapshotSource& operator=(const SnapshotSource&) = delete;

  storage::Engine& engine;
  const GroupId group;
  const uint64_t index;
  const std::string prefix;
  const rocksdb::Snapshot* db_snapshot;
};

// The `data` of every snapshot a host hands to Raft: the state itself travels out of band
// (Transport::SendSnapshot), written by the receiver before the snapshot message is stepped.
inline constexpr std::string_view kStreamedSnapshot = "herald-streamed-snapshot";

// Carries Raft messages to other nodes. Called on the host's thread only; implementations batch
// what is sent between two Flush() calls (one pass) per destination node.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual void Send(GroupId group, raft::Message message) = 0;
  virtual void Flush() = 0;
  // Sends `heartbeat` (a kHeartbeat of a group this node leads) marked "quiesce": the receiver
  // stops ticking its replica until the group is active again (see RaftHost, "Quiescence").
  // Batched like Send. The default sends it unmarked (the receiver then keeps ticking).
  virtual void SendQuiesce(GroupId group, raft::Message heartbeat) {
    Send(group, std::move(heartbeat));
  }
  // Called once per tick: lets every peer hear from this node at least once per tick even when
  // no group has anything to say (node liveness, see RaftHost::HeardFrom). Default: nothing.
  virtual void Tick() {}
  // Streams `source` to message.to, then has the receiver step `message` (a kSnapshot). Runs
  // in the background; a failure is only logged (the leader sends a new snapshot after an
  // election timeout). The default drops it.
  virtual void SendSnapshot(GroupId group, raft::Message message,
                            std::shared_ptr<SnapshotSource> source) {
    (void)group;
    (void)message;
    (void)source;
  }
};

// What a group's membership should become: the host's leader of the group moves towards it one
// change at a time. Learners that should be voters are promoted once caught up; members in
// neither list are removed (after leadership moved away if this node is one of them).
struct MembershipTarget {
  std::vector<raft::NodeId> voters;
  std::vector<raft::NodeId> learners;
};
// Target of a group, or nullopt to leave the group alone.
using TargetFn = std::function<std::optional<MembershipTarget>(GroupId)>;

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
  // Retention: every `retention_check_interval`, the leader of each partition group plans
  // (PartitionStateMachine::PlanRetention) the removal of messages older than
  // `retention_max_age` and of the oldest records beyond `retention_max_bytes` per partition,
  // and proposes it as a TrimCommand (one at a time per group). Zero disables that limit.
  std::chrono::milliseconds retention_max_age{0};
  uint64_t retention_max_bytes = 0;
  std::chrono::milliseconds retention_check_interval{10000};
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
  // On the leader: each member's highest log index known to be durable there (this node's own
  // included), in member id order. Empty elsewhere.
  absl::InlinedVector<std::pair<raft::NodeId, uint64_t>, 7> match;
  // The partition's state machine.
  uint32_t partition = 0;
  uint64_t last_offset = 0;
  uint64_t stored_messages = 0;
  uint64_t stored_bytes = 0;
  uint64_t trimmed_messages = 0;
  // The replica is quiesced: idle, not ticking (see RaftHost, "Quiescence").
  bool quiesced = false;
};

// Counters of a host's activity since it started. Thread-safe to read.
struct RaftHostStats {
  std::atomic<uint64_t> passes{0};
  std::atomic<uint64_t> write_batches{0};
  std::atomic<uint64_t> write_nanos{0};  // time spent in Engine::Write (fsync included)
  std::atomic<uint64_t> syncs{0};        // write-ahead log fsyncs (pipelined: SyncWal calls)
  std::atomic<uint64_t> entries_applied{0};
  std::atomic<uint64_t> proposals{0};
  std::atomic<uint64_t> proposals_refused{0};
  std::atomic<uint64_t> leader_changes{0};  // observed changes of a group's leader
  std::atomic<uint64_t> messages_sent{0};  // Raft messages handed to the transport
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
  // Adds the metadata group (kMetadataGroup) before Start(), founded like a partition group.
  absl::Status AddMetadataGroup(std::vector<raft::NodeId> initial_voters);
  // Called on the host's thread, after the write, whenever the metadata group applied entries
  // or installed a snapshot. Set before Start().
  void SetMetadataListener(std::function<void(const v1::MetadataStateRecord&)> fn) {
    metadata_listener_ = std::move(fn);
  }

  // Runtime membership of this node's replicas (thread-safe; run on the host's thread soon).
  // Creates an empty replica of `partition` that waits for its leader's snapshot (no-op when
  // the group exists).
  void EnsurePartitionGroup(GroupId group, uint32_t partition);
  // Deletes this node's replica of `group` and its data (Raft log, partition state). The Raft
  // term and vote are kept, so that a later replica of the group never votes twice in a term.
  // With `if_conf`, only if the replica's latest membership is still that one: a replica that
  // learned of a change since the caller decided (e.g. it was just added back) is kept.
  void RemoveGroup(GroupId group, std::optional<raft::ConfState> if_conf = std::nullopt);
  // For every group this node leads, takes one step towards `target` (see MembershipTarget).
  void ReconcileMembership(TargetFn target);

  // Snapshot installation, called by the transport's receiver (blocking, any thread).
  // Begin: prepares `group` for an image at `index` sent in a message of term `term` (creating
  // an empty partition replica if needed). *skip_data is set when the replica already applied
  // `index`: the data is not needed. A message from a term older than the replica's is refused
  // (FailedPrecondition) before anything is touched: Raft would ignore it, leaving the image
  // ahead of the log. Otherwise the group's state is cleared and the caller writes the image's
  // records (WriteSnapshotRecords), then calls Finish, which loads the state and steps `message`.
  absl::Status BeginSnapshotInstall(GroupId group, uint64_t index, uint64_t term,
                                    bool* skip_data);
  absl::Status WriteSnapshotRecords(GroupId group, std::string_view records);
  absl::Status FinishSnapshotInstall(GroupId group, raft::Message message, bool data_written);

  absl::Status Start();
  // Stops the thread; pending proposals fail with UNAVAILABLE (outcome unknown).
  void Stop();

  // An inbound message from the transport; `quiesce` marks a leader's quiesce heartbeat
  // (Transport::SendQuiesce).
  struct Inbound {
    GroupId group;
    raft::Message message;
    bool quiesce;
  };
  // Queues an inbound message. Thread-safe.
  void Deliver(GroupId group, raft::Message message, bool quiesce = false);
  // Queues everything one received batch carried, in order, with one wake-up of the host
  // thread (a wake-up per message lets the thread start a pass on the first of them).
  // Thread-safe.
  void DeliverAll(std::vector<Inbound> messages);
  // The transport received something (anything, an empty batch included) from `node`: it is
  // alive. Quiesced groups wake up when a member has not been heard from for an election
  // timeout. Thread-safe.
  void HeardFrom(raft::NodeId node);
  // Whether `node` was heard from within `election_timeouts` election timeouts (always true
  // for this node). Thread-safe.
  bool PeerAlive(raft::NodeId node, int election_timeouts = 1);
  // How long a leadership transfer target may have been silent, in election timeouts: a live
  // node whose host thread stalled briefly still qualifies.
  static constexpr int kTransferLiveness = 2;
  // Proposes a PartitionCommand (serialized) on `group`; `done` runs on the host's thread once
  // the outcome is known. Thread-safe.
  void Propose(GroupId group, std::string command, ProposalCallback done);
  // Proposes a PartitionCommand holding only `messages` publish messages (and
  // proposed_at_unix_ms). Publish proposals reaching the host thread together are merged into
  // one Raft entry (serialized commands concatenate into one whose messages are theirs in
  // order); each `done` gets its own messages' results. Thread-safe.
  void ProposePublish(GroupId group, std::string command, size_t messages, ProposalCallback done);
  // Runs `fn` on the host's thread soon (e.g. transport changes). Thread-safe.
  void RunTask(std::function<void()> fn);
  // Asks the group's leader (this node) to hand leadership to `to`. Ignored while `to` has not
  // been heard from within kTransferLiveness election timeouts: the leader takes no proposals
  // while a transfer
  // runs (dissertation §3.10), so a transfer to a node it cannot reach would stall the group
  // until the transfer times out. Thread-safe.
  void TransferLeadership(GroupId group, raft::NodeId to);
  // Hands every leadership of this node to the most caught-up live other voter of each group and
  // waits up to `timeout` for the transfers to finish, so that stopping the node does not leave
  // its partitions without a leader for an election timeout. Returns how many groups this node
  // still leads. Thread-safe.
  int HandOffLeadership(std::chrono::milliseconds timeout);

  // Runs `fn` on the host's thread with the partition's state machine and waits for it (reads
  // of applied state). Returns false if the group is unknown or the host is stopped.
  bool WithPartition(GroupId group, const std::function<void(broker::PartitionStateMachine&)>& fn);

  // Partition groups (the metadata group is not listed).
  std::vector<GroupStatus> Status();
  // The metadata group's status (group 0), if this node has a replica.
  std::optional<GroupStatus> MetadataStatus();
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
  // As ReadAsync, linearizable (ReadIndex, Raft dissertation §6.4): on the group's leader, `fn`
  // runs once a heartbeat round confirmed this node still leads and the state machine applied
  // everything committed when the read was asked, so it sees every write acknowledged before.
  // Elsewhere, or when leadership is lost meanwhile, `fn` gets the status of a non-leader.
  // A leader that cannot reach a quorum answers when it steps down (check-quorum).
  void ReadLinearizable(GroupId group, ReadFn fn);

 private:
  struct Group;
  struct PendingProposal {
    uint64_t term;
    ProposalCallback done;
  };
  struct Inbox {
    std::vector<Inbound> messages;
    // (group, command, callback, publish messages: 0 unless it is a mergeable publish)
    std::vector<std::tuple<GroupId, std::string, ProposalCallback, size_t>> proposals;
    std::vector<std::function<void()>> tasks;
    uint64_t synced = 0;  // the syncer finished the fsync covering passes up to this one
    bool stop = false;
  };
  // What a written pass sends once an fsync covers it.
  struct Outgoing {
    uint64_t seq = 0;
    std::vector<std::pair<GroupId, raft::Message>> messages;
    std::vector<std::tuple<GroupId, raft::Message, std::shared_ptr<SnapshotSource>>> snapshots;
    // Last log index (or snapshot index) the pass wrote, per group.
    std::vector<std::pair<GroupId, uint64_t>> written;
    // Groups with messages in `messages` or `snapshots` (see Group::unsent).
    std::vector<GroupId> senders;
  };

  void Run();
  void RunPass(Inbox& inbox);
  // Sends what passes up to `synced` produced and marks their log entries durable.
  void Release(uint64_t synced);
  void RunSyncer();
  absl::StatusOr<std::unique_ptr<Group>> CreateGroup(GroupId id, uint32_t partition,
                                                     std::vector<raft::NodeId> initial_voters);
  absl::StatusOr<raft::Snapshot> SnapshotFor(Group& g);
  void ApplyConfEntry(Group& g, const raft::Entry& e, rocksdb::WriteBatch* batch);
  void ReconcileGroup(Group& g, const MembershipTarget& t);
  // Runs `fn` on the host's thread and waits for its status.
  absl::Status RunOnHost(std::function<absl::Status()> fn);
  void FailPending(Group& g, const absl::Status& why);
  // Answers every linearizable read of the group: with nullptrs when the replica is going
  // away, else with its status (which no longer says leader).
  void AnswerReads(Group& g, bool gone);
  // Runs the reads whose read index the group has applied.
  void ServeReads(Group& g);
  void MaybeProposeCompaction(Group& g);
  // Proposes the trim retention calls for in `g` if this node leads it and its check is due
  // (see RaftHostOptions); whether it planned (read the partition).
  bool MaybeProposeRetention(Group& g, Clock::MonotonicTime now);
  static constexpr int kRetentionPlansPerTick = 2;
  GroupId retention_cursor_ = 0;  // the group retention was last planned for
  // Quiescence (host thread, once per tick): wakes quiesced groups that lost a member, and
  // quiesces idle groups this node leads.
  void TickQuiescence(int ticks);
  // Brings a replica woken because its leader's node is silent to the end of its lease.
  void RunDownElectionTimer(raft::Node& node);
  // Of `candidates`, the voter of `node`'s group (not this node) heard from within
  // kTransferLiveness election timeouts whose log the leader knows to reach furthest; kNoNode if
  // none (host thread, leader).
  raft::NodeId MostCaughtUpLiveVoter(const raft::Node& node,
                                     const std::vector<raft::NodeId>& candidates);
  void Quiesce(Group& g);
  void Wake(Group& g);
  static GroupStatus StatusOf(const Group& g);

  storage::Engine& engine_;
  Transport& transport_;
  const RaftHostOptions options_;
  Clock& clock_;
  std::map<GroupId, std::unique_ptr<Group>> groups_;  // host thread
  std::function<void(const v1::MetadataStateRecord&)> metadata_listener_;
  RaftHostStats stats_;

  std::mutex watchers_mu_;
  std::map<GroupId, std::map<uint64_t, std::function<void()>>> watchers_
      ABSL_GUARDED_BY(watchers_mu_);
  uint64_t next_watcher_id_ ABSL_GUARDED_BY(watchers_mu_) = 1;

  // When each peer was last heard from (HeardFrom).
  std::mutex heard_mu_;
  std::map<raft::NodeId, Clock::MonotonicTime> heard_ ABSL_GUARDED_BY(heard_mu_);

  // Pipelined fsync (host thread): passes written and not yet released, oldest first.
  std::deque<Outgoing> outgoing_;
  uint64_t write_seq_ = 0;
  // write_seq_ as of the last pass whose batch is in the WAL buffer: a sync started after
  // reading it covers every pass up to it, even those written after the sync was requested.
  std::atomic<uint64_t> buffered_seq_{0};
  // Host thread: groups with reads asked since the last pass; ReadIndex contexts.
  std::vector<GroupId> groups_with_reads_;
  uint64_t next_read_ctx_ = 1;
  size_t last_batch_bytes_ = 0;  // host thread: size of the last pass's write batch
  bool sync_in_flight_ = false;
  // The syncer thread.
  std::mutex sync_mu_;
  std::condition_variable sync_cv_;
  uint64_t sync_requested_ ABSL_GUARDED_BY(sync_mu_) = 0;
  bool sync_stop_ ABSL_GUARDED_BY(sync_mu_) = false;
  std::thread syncer_;

  std::mutex mu_;
  std::condition_variable cv_;
  Inbox inbox_ ABSL_GUARDED_BY(mu_);
  bool running_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace herald::cluster
