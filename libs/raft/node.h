// Node is one member of a Raft group as a pure state machine: it has no I/O, threads or clocks.
// The host feeds it messages (Step), time (Tick) and requests (Propose, ReadIndex,
// ProposeConfChange, TransferLeadership), and collects its output as a Ready.
//
// Threading: a Node and its Storage are owned by one thread/loop; nothing here is thread-safe.
//
// HOST CONTRACT (the order is law; docs/raft.md explains why each step is needed)
//
//   while (node.HasReady()) {
//     Ready rd = node.GetReady();
//     1. Persist, durably (fsync) and in this order:
//          rd.snapshot        (if non-empty: MemoryStorage::ApplySnapshot or equivalent)
//          rd.entries         (append, replacing any suffix they overlap)
//          rd.hard_state      (if set)
//        Entries and hard state may go in one atomic write batch.
//     2. Only then send rd.messages. (A vote, an append acknowledgement or a leader's entries
//        must never leave a node before the state they depend on is durable.) Messages may be
//        lost, duplicated or reordered by the network; the core tolerates that.
//     3. Apply rd.snapshot (if any) to the state machine, then rd.committed_entries in order.
//        Only entries handed out here are committed; never apply anything else.
//     4. Serve reads from rd.read_states once the state machine has applied up to their index.
//     5. node.Advance(rd);
//   }
//
// Between GetReady() and Advance() the host may keep calling Step/Tick/Propose; their output
// goes into the next Ready. GetReady() must not be called again before Advance().
//
// Log compaction: after applying up to index i, the host may snapshot its state machine and
// call Storage to record it (MemoryStorage::CreateSnapshot(i, conf_state_at_i, data)), which
// discards the log before i. The leader sends that snapshot to followers that need older
// entries.
//
// Bootstrapping: every founding member starts with Storage holding a snapshot at index 1, term 1
// whose ConfState lists the founding voters (MemoryStorage::BootstrapSnapshot). Members added
// later start with empty Storage and receive a snapshot from the leader.
#ifndef HERALD_LIBS_RAFT_NODE_H_
#define HERALD_LIBS_RAFT_NODE_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "libs/raft/progress.h"
#include "libs/raft/raft_log.h"
#include "libs/raft/storage.h"
#include "libs/raft/types.h"

namespace herald::raft {

// Source of the randomness used for election timeouts. Tests inject a seeded one; the default
// is a SplitMix64 generator seeded from Config::random_seed and the node id.
class RandomSource {
 public:
  virtual ~RandomSource() = default;
  // Uniform in [0, n); n > 0.
  virtual uint64_t Uniform(uint64_t n) = 0;
};

// Switches that break one Raft rule on purpose, so that tests can prove the simulation catches
// the breakage. Only libs/raft/testing_knobs.h can set them; production code never should.
class TestingKnobs {
 public:
  bool break_vote_log_check() const { return break_vote_log_check_; }
  bool commit_previous_term_by_counting() const { return commit_previous_term_by_counting_; }

 private:
  friend struct TestingKnobsAccess;
  bool break_vote_log_check_ = false;              // grant votes without Raft §5.4.1's check
  bool commit_previous_term_by_counting_ = false;  // drop Raft §5.4.2's current-term rule
};

struct Config {
  NodeId id = kNoNode;
  const Storage* storage = nullptr;  // not owned; must outlive the Node

  // Ticks without hearing from a leader before a follower campaigns. The actual timeout is
  // randomized in [election_tick, 2 * election_tick) (Raft §5.2).
  int election_tick = 10;
  // Ticks between leader heartbeats. Must be < election_tick.
  int heartbeat_tick = 1;

  // Last index the host's state machine has applied (on restart). 0 means "the snapshot".
  uint64_t applied = 0;

  // Flow control (per follower): bytes of entries per kAppend (at least one entry is always
  // sent) and the number of unacknowledged kAppend messages while pipelining.
  uint64_t max_size_per_msg = 1 << 20;
  size_t max_inflight_msgs = 256;
  // Leader flow control towards clients: Propose is refused (ResourceExhausted) while this many
  // entries are appended but not committed. 0: unlimited.
  uint64_t max_uncommitted_entries = 0;
  // Upper bound on bytes of committed entries in one Ready.
  uint64_t max_committed_size_per_ready = kNoLimit;

  // The leader counts its own log entries toward commitment only once the host reports them
  // durable (LocalPersisted), instead of as soon as they are appended. The host may then send
  // the leader's kAppend and kHeartbeat messages before its own write is durable, so the
  // leader's disk write overlaps replication (dissertation §10.2.1). Other messages (votes,
  // responses) must still wait for durability.
  bool self_ack_on_persist = false;

  // When the leader's commit index advances, tell every follower at once with a kAppend (empty
  // if it has no new entries to carry). Off: followers learn the commit index from the next
  // kAppend that carries entries or from the next heartbeat (at most heartbeat_tick later),
  // which under load saves an empty kAppend and its response per follower per commit. The
  // leader's own commit and apply (and so its answers to clients) are not delayed either way.
  // A commit that covers a membership change is always sent at once.
  bool broadcast_commit = true;

  bool pre_vote = true;      // dissertation §9.6
  bool check_quorum = true;  // dissertation §6.2: leader steps down without a live quorum

  uint64_t random_seed = 0;
  RandomSource* random = nullptr;  // not owned; overrides random_seed if set

  TestingKnobs testing;
};

struct SoftState {
  NodeId leader = kNoNode;
  Role role = Role::kFollower;
  bool operator==(const SoftState&) const = default;
};

struct Ready {
  std::optional<SoftState> soft_state;   // set when leader or role changed (not persisted)
  std::optional<HardState> hard_state;   // set when it changed; persist before sending
  std::vector<Entry> entries;            // persist before sending
  Snapshot snapshot;                     // non-empty: persist, then install in state machine
  std::vector<Message> messages;         // send after persisting
  std::vector<Entry> committed_entries;  // apply in order after persisting
  std::vector<ReadState> read_states;

  bool MustSync() const {
    return hard_state.has_value() || !entries.empty() || !snapshot.IsEmpty();
  }
};

class Node {
 public:
  // Restores term, vote, commit and membership from config.storage.
  static absl::StatusOr<std::unique_ptr<Node>> Create(const Config& config);

  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Time passes by one tick.
  void Tick();
  // A message from another node. Messages for other recipients or that make no sense are
  // dropped (InvalidArgument); stale ones are ignored with OK.
  absl::Status Step(Message m);
  // Leader only: appends `data` to the log. FailedPrecondition when not leader or while a
  // leadership transfer is in progress; ResourceExhausted when max_uncommitted_entries are
  // pending. OK does not mean committed: watch committed_entries.
  absl::Status Propose(std::string data);
  // Leader only: single-server membership change (dissertation §4.1). Refused
  // (FailedPrecondition) until the leader has committed an entry of its own term, while another
  // change is uncommitted, during a transfer, or when promoting a learner that is not caught up.
  absl::Status ProposeConfChange(const ConfChange& cc);
  // Leader only: hand leadership to voter `to` (dissertation §3.10). Proposals are refused until
  // the transfer ends (success, or an election timeout).
  absl::Status TransferLeadership(NodeId to);
  // Linearizable read (dissertation §6.4): a ReadState{index, context} appears in a later Ready
  // once the leader has confirmed it is still leader; the host serves the read after applying up
  // to `index`. `context` must be unique per request. Followers forward to the leader.
  // Unavailable when no leader is known. Requests in flight are lost if leadership changes;
  // hosts retry on timeout.
  absl::Status ReadIndex(std::string context);

  // With Config::self_ack_on_persist: the host made this node's log durable up to `index`.
  void LocalPersisted(uint64_t index);

  // Whether there is output to collect. False while a Ready is outstanding (between GetReady and
  // Advance).
  bool HasReady() const;
  // The output accumulated so far (see the host contract at the top). Aborts if a Ready is
  // outstanding.
  Ready GetReady();
  // The host has persisted, sent and applied `rd` (the Ready returned by the last GetReady).
  void Advance(const Ready& rd);

  // Introspection.
  NodeId id() const { return id_; }
  uint64_t term() const { return term_; }
  NodeId vote() const { return vote_; }
  NodeId leader() const { return lead_; }
  Role role() const { return role_; }
  uint64_t committed() const { return log_.committed(); }
  uint64_t applied() const { return log_.applied(); }
  uint64_t last_index() const { return log_.LastIndex(); }
  uint64_t first_index() const { return log_.FirstIndex(); }
  absl::StatusOr<uint64_t> LogTerm(uint64_t index) const { return log_.Term(index); }
  // Membership in effect: the latest configuration in the log, committed or not (dissertation
  // §4.1).
  const ConfState& conf_state() const { return conf_; }
  NodeId transferee() const { return lead_transferee_; }
  // Leader only: replication progress of a member, or nullptr.
  const Progress* progress(NodeId id) const;

 private:
  explicit Node(const Config& config);
  absl::Status Init();

  // Role changes.
  void BecomeFollower(uint64_t term, NodeId lead);
  void BecomePreCandidate();
  void BecomeCandidate();
  void BecomeLeader();
  void Reset(uint64_t term);
  void Campaign(bool pre_vote, bool transfer);
  bool Promotable() const;
  int Quorum() const { return static_cast<int>(conf_.voters.size() / 2 + 1); }

  // Per-role message handling.
  void StepLeader(Message& m);
  void StepCandidate(Message& m);
  void StepFollower(Message& m);
  void HandleVoteRequest(const Message& m);
  void HandleAppend(Message& m);
  void HandleHeartbeat(const Message& m);
  void HandleSnapshot(const Message& m);
  void HandleAppendResp(const Message& m, Progress& pr);
  void HandleHeartbeatResp(const Message& m, Progress& pr);
  void HandleReadRequest(NodeId from, std::string context);
  void HandleReadAck(NodeId from, const std::string& context);
  // Answers the pending reads a quorum of the current voters has acknowledged.
  void ReleaseConfirmedReads();
  void ReleaseReadsAwaitingCommit();

  // Replication.
  bool SendAppend(Progress& pr, bool send_if_empty);
  void BroadcastAppend();
  void BroadcastCommit();  // after the commit index advanced (Config::broadcast_commit)
  void SendTimeoutNow(Progress& pr);  // leadership transfer to a caught-up transferee
  void BroadcastHeartbeat(const std::string& context);
  bool MaybeCommit();
  uint64_t QuorumMatch() const;
  void AppendLeaderEntry(Entry e);
  void Send(Message m);
  Progress* FindProgress(NodeId id);

  // Membership.
  void OnConfEntryAppended(uint64_t index, const std::string& data);
  void RollbackConf(uint64_t from_index);
  void RecomputeConf();
  void SyncProgressWithConf();
  void PruneConfHistory();
  void MaybeStepDownAfterRemoval();

  void TickElection();
  void TickHeartbeat();
  void ResetRandomizedElectionTimeout();
  bool PastElectionTimeout() const { return election_elapsed_ >= randomized_election_timeout_; }
  HardState CurrentHardState() const { return {term_, vote_, log_.committed()}; }

  const NodeId id_;
  const Config config_;
  RaftLog log_;
  std::unique_ptr<RandomSource> owned_random_;
  RandomSource* random_;

  uint64_t term_ = 0;
  NodeId vote_ = kNoNode;
  NodeId lead_ = kNoNode;
  Role role_ = Role::kFollower;

  // Membership: conf_ is the latest configuration in the log. base_conf_ is the one at the
  // snapshot/compaction point, conf_history_ the conf-change entries after it.
  ConfState conf_;
  ConfState base_conf_;
  struct ConfEntry {
    uint64_t index;
    ConfState conf;
  };
  std::vector<ConfEntry> conf_history_;
  bool commit_covered_conf_ = false;  // the last MaybeCommit committed a membership change

  // Leader state.
  std::vector<Progress> progress_;  // one per member except self, sorted by id
  uint64_t self_match_ = 0;
  uint64_t leader_first_index_ = 0;  // index of this leader's no-op
  NodeId lead_transferee_ = kNoNode;
  int transfer_elapsed_ = 0;
  bool pending_broadcast_ = false;
  struct PendingRead {
    std::string context;
    NodeId from;  // kNoNode: local request
    uint64_t index;
    std::vector<NodeId> acks;
  };
  std::deque<PendingRead> pending_reads_;
  std::vector<std::pair<NodeId, std::string>> reads_awaiting_commit_;

  // Candidate state: votes received (id, granted).
  std::vector<std::pair<NodeId, bool>> votes_;

  int election_elapsed_ = 0;
  int heartbeat_elapsed_ = 0;
  int randomized_election_timeout_ = 0;

  // Output.
  std::vector<Message> msgs_;
  std::vector<ReadState> read_states_;
  HardState prev_hard_state_;
  SoftState prev_soft_state_;
  bool ready_outstanding_ = false;
};

}  // namespace herald::raft

#endif  // HERALD_LIBS_RAFT_NODE_H_
