#include "libs/raft/types.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace herald::raft {
namespace {

bool Contains(const std::vector<NodeId>& v, NodeId id) {
  return std::binary_search(v.begin(), v.end(), id);
}
void Insert(std::vector<NodeId>* v, NodeId id) {
  v->insert(std::lower_bound(v->begin(), v->end(), id), id);
}
void Erase(std::vector<NodeId>* v, NodeId id) {
  auto it = std::lower_bound(v->begin(), v->end(), id);
  if (it != v->end() && *it == id) v->erase(it);
}

}  // namespace

bool ConfState::IsVoter(NodeId id) const { return Contains(voters, id); }
bool ConfState::IsLearner(NodeId id) const { return Contains(learners, id); }

std::string EncodeConfChange(const ConfChange& cc) {
  std::string out(9, '\0');
  out[0] = static_cast<char>(cc.type);
  for (int i = 0; i < 8; ++i) out[1 + i] = static_cast<char>((cc.node_id >> (8 * i)) & 0xff);
  return out;
}

absl::StatusOr<ConfChange> DecodeConfChange(std::string_view data) {
  if (data.size() != 9) return absl::InvalidArgumentError("raft: bad conf change length");
  const auto type = static_cast<uint8_t>(data[0]);
  if (type > static_cast<uint8_t>(ConfChangeType::kRemoveNode)) {
    return absl::InvalidArgumentError("raft: bad conf change type");
  }
  ConfChange cc;
  cc.type = static_cast<ConfChangeType>(type);
  for (int i = 0; i < 8; ++i) {
    cc.node_id |= static_cast<uint64_t>(static_cast<uint8_t>(data[1 + i])) << (8 * i);
  }
  return cc;
}

absl::Status ApplyConfChange(const ConfChange& cc, ConfState* cs) {
  if (cc.node_id == kNoNode) return absl::InvalidArgumentError("raft: conf change for node 0");
  switch (cc.type) {
    case ConfChangeType::kAddLearner:
      if (cs->IsMember(cc.node_id)) {
        return absl::InvalidArgumentError(absl::StrCat("raft: ", cc.node_id, " already member"));
      }
      Insert(&cs->learners, cc.node_id);
      return absl::OkStatus();
    case ConfChangeType::kAddVoter:
      if (!cs->IsLearner(cc.node_id)) {
        return absl::InvalidArgumentError(
            absl::StrCat("raft: ", cc.node_id, " must be a learner before it becomes a voter"));
      }
      Erase(&cs->learners, cc.node_id);
      Insert(&cs->voters, cc.node_id);
      return absl::OkStatus();
    case ConfChangeType::kRemoveNode:
      if (!cs->IsMember(cc.node_id)) {
        return absl::InvalidArgumentError(absl::StrCat("raft: ", cc.node_id, " not a member"));
      }
      if (cs->IsVoter(cc.node_id) && cs->voters.size() == 1) {
        return absl::InvalidArgumentError("raft: cannot remove the last voter");
      }
      Erase(&cs->voters, cc.node_id);
      Erase(&cs->learners, cc.node_id);
      return absl::OkStatus();
  }
  return absl::InvalidArgumentError("raft: unknown conf change");
}

const char* MessageTypeName(MessageType type) {
  switch (type) {
    case MessageType::kAppend:
      return "Append";
    case MessageType::kAppendResp:
      return "AppendResp";
    case MessageType::kHeartbeat:
      return "Heartbeat";
    case MessageType::kHeartbeatResp:
      return "HeartbeatResp";
    case MessageType::kVote:
      return "Vote";
    case MessageType::kVoteResp:
      return "VoteResp";
    case MessageType::kPreVote:
      return "PreVote";
    case MessageType::kPreVoteResp:
      return "PreVoteResp";
    case MessageType::kSnapshot:
      return "Snapshot";
    case MessageType::kTimeoutNow:
      return "TimeoutNow";
    case MessageType::kReadIndex:
      return "ReadIndex";
    case MessageType::kReadIndexResp:
      return "ReadIndexResp";
  }
  return "?";
}

const char* RoleName(Role role) {
  switch (role) {
    case Role::kFollower:
      return "follower";
    case Role::kPreCandidate:
      return "pre-candidate";
    case Role::kCandidate:
      return "candidate";
    case Role::kLeader:
      return "leader";
  }
  return "?";
}

}  // namespace herald::raft
