// Plain value types shared by the Raft core, its Storage and its host: log entries, hard state,
// snapshots, membership and the messages nodes exchange.
//
// These are deliberately plain C++ structs (no protobuf): the host translates Message to and from
// its wire format (proto/herald/v1) and Entry/HardState to and from its log store.
#ifndef HERALD_LIBS_RAFT_TYPES_H_
#define HERALD_LIBS_RAFT_TYPES_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace herald::raft {

// Node ids are non-zero; 0 means "none" (no leader known, no vote cast).
using NodeId = uint64_t;
inline constexpr NodeId kNoNode = 0;

enum class EntryType : uint8_t {
  kNormal = 0,      // host data (an empty kNormal entry is the leader's no-op)
  kConfChange = 1,  // data is EncodeConfChange(ConfChange)
};

struct Entry {
  uint64_t term = 0;
  uint64_t index = 0;
  EntryType type = EntryType::kNormal;
  std::string data;

  // Bytes counted against size limits (max_size_per_msg and friends).
  size_t ByteSize() const { return data.size() + 24; }
};

// Durable per-node state (Raft §5.1 Figure 2 "persistent state", plus commit for faster restart).
struct HardState {
  uint64_t term = 0;
  NodeId vote = kNoNode;
  uint64_t commit = 0;

  bool operator==(const HardState&) const = default;
  bool IsEmpty() const { return term == 0 && vote == kNoNode && commit == 0; }
};

// Membership of a group. Both lists are kept sorted and disjoint.
struct ConfState {
  std::vector<NodeId> voters;
  std::vector<NodeId> learners;

  bool operator==(const ConfState&) const = default;
  bool IsVoter(NodeId id) const;
  bool IsLearner(NodeId id) const;
  bool IsMember(NodeId id) const { return IsVoter(id) || IsLearner(id); }
};

struct SnapshotMetadata {
  uint64_t index = 0;    // last log index covered by the snapshot
  uint64_t term = 0;     // term of that entry
  ConfState conf_state;  // membership as of `index`
};

struct Snapshot {
  SnapshotMetadata metadata;
  std::string data;  // opaque state-machine image produced by the host

  bool IsEmpty() const { return metadata.index == 0; }
};

// Single-server membership change (Raft dissertation §4.1). See docs/raft.md for why we chose this
// over joint consensus.
enum class ConfChangeType : uint8_t {
  kAddLearner = 0,  // add a non-voting member (must not be a member yet)
  kAddVoter = 1,    // promote an existing, caught-up learner to voter
  kRemoveNode = 2,  // remove a voter or learner
};

struct ConfChange {
  ConfChangeType type = ConfChangeType::kAddLearner;
  NodeId node_id = kNoNode;

  bool operator==(const ConfChange&) const = default;
};

std::string EncodeConfChange(const ConfChange& cc);
absl::StatusOr<ConfChange> DecodeConfChange(std::string_view data);

// Applies `cc` to `cs`, validating it (InvalidArgument if it makes no sense for `cs`). Hosts use
// this to track the membership of their applied state (e.g. for Storage snapshots).
absl::Status ApplyConfChange(const ConfChange& cc, ConfState* cs);

enum class MessageType : uint8_t {
  kAppend,  // AppendEntries (Raft §5.3)
  kAppendResp,
  kHeartbeat,  // empty AppendEntries that carries commit and a ReadIndex context
  kHeartbeatResp,
  kVote,  // RequestVote (Raft §5.2)
  kVoteResp,
  kPreVote,  // dissertation §9.6
  kPreVoteResp,
  kSnapshot,    // InstallSnapshot (Raft §7); answered with kAppendResp
  kTimeoutNow,  // leadership transfer (dissertation §3.10)
  kReadIndex,   // follower forwards a read to the leader (dissertation §6.4)
  kReadIndexResp,
};

const char* MessageTypeName(MessageType type);

struct Message {
  MessageType type = MessageType::kAppend;
  NodeId from = kNoNode;
  NodeId to = kNoNode;
  uint64_t term = 0;
  // kAppend: index/log_term of the entry preceding `entries`.
  // kAppendResp: highest index the follower now matches (or the rejected index).
  // kVote/kPreVote: candidate's last log index/term. kReadIndexResp: the read index.
  uint64_t log_term = 0;
  uint64_t index = 0;
  uint64_t commit = 0;
  std::vector<Entry> entries;
  bool reject = false;
  uint64_t reject_hint = 0;                  // kAppendResp reject: follower's suggested probe index
  std::string context;                       // ReadIndex context, or kCampaignTransfer on kVote
  std::shared_ptr<const Snapshot> snapshot;  // kSnapshot only
};

// Context on kVote sent by a transfer target: voters grant it even if they heard from a leader
// recently (dissertation §3.10 / §4.2.3).
inline constexpr std::string_view kCampaignTransfer = "transfer";

// Result of a ReadIndex request once it is safe to serve: the host may answer the read as soon
// as it has applied up to `index`.
struct ReadState {
  uint64_t index = 0;
  std::string context;
};

enum class Role : uint8_t { kFollower, kPreCandidate, kCandidate, kLeader };
const char* RoleName(Role role);

}  // namespace herald::raft

#endif  // HERALD_LIBS_RAFT_TYPES_H_
