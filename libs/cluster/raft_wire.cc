#include "libs/cluster/raft_wire.h"

#include <type_traits>
#include <utility>

#include "libs/common/strings.h"

namespace herald::cluster {
namespace {

struct TypePair {
  raft::MessageType raft;
  v1::RaftMessageType wire;
};
constexpr TypePair kTypes[] = {
    {raft::MessageType::kAppend, v1::RAFT_MESSAGE_TYPE_APP},
    {raft::MessageType::kAppendResp, v1::RAFT_MESSAGE_TYPE_APP_RESP},
    {raft::MessageType::kVote, v1::RAFT_MESSAGE_TYPE_VOTE},
    {raft::MessageType::kVoteResp, v1::RAFT_MESSAGE_TYPE_VOTE_RESP},
    {raft::MessageType::kPreVote, v1::RAFT_MESSAGE_TYPE_PRE_VOTE},
    {raft::MessageType::kPreVoteResp, v1::RAFT_MESSAGE_TYPE_PRE_VOTE_RESP},
    {raft::MessageType::kHeartbeat, v1::RAFT_MESSAGE_TYPE_HEARTBEAT},
    {raft::MessageType::kHeartbeatResp, v1::RAFT_MESSAGE_TYPE_HEARTBEAT_RESP},
    {raft::MessageType::kSnapshot, v1::RAFT_MESSAGE_TYPE_SNAP},
    {raft::MessageType::kTimeoutNow, v1::RAFT_MESSAGE_TYPE_TIMEOUT_NOW},
    {raft::MessageType::kReadIndex, v1::RAFT_MESSAGE_TYPE_READ_INDEX},
    {raft::MessageType::kReadIndexResp, v1::RAFT_MESSAGE_TYPE_READ_INDEX_RESP},
};

void ConfToProto(const raft::ConfState& cs, v1::RaftConfState* out) {
  for (auto id : cs.voters) out->add_voters(id);
  for (auto id : cs.learners) out->add_learners(id);
}

// The copying and the moving conversions: a moved-from message gives up its entries' data and
// context instead of having them copied (replicated entries are most of the bytes).
template <typename M>
void ToProtoImpl(M&& m, v1::RaftMessage* out) {
  constexpr bool kMove = !std::is_lvalue_reference_v<M>;
  for (const auto& t : kTypes) {
    if (t.raft == m.type) out->set_type(t.wire);
  }
  out->set_to(m.to);
  out->set_from(m.from);
  out->set_term(m.term);
  out->set_log_term(m.log_term);
  out->set_index(m.index);
  out->set_commit(m.commit);
  out->set_reject(m.reject);
  out->set_reject_hint(m.reject_hint);
  if constexpr (kMove) {
    out->set_context(std::move(m.context));
  } else {
    out->set_context(m.context);
  }
  out->mutable_entries()->Reserve(static_cast<int>(m.entries.size()));
  for (auto& e : m.entries) {
    v1::RaftEntry* pe = out->add_entries();
    pe->set_term(e.term);
    pe->set_index(e.index);
    pe->set_type(e.type == raft::EntryType::kConfChange ? v1::RAFT_ENTRY_TYPE_CONF_CHANGE
                                                        : v1::RAFT_ENTRY_TYPE_NORMAL);
    if constexpr (kMove) {
      pe->set_data(std::move(e.data));
    } else {
      pe->set_data(e.data);
    }
  }
  if (m.snapshot) {
    v1::RaftSnapshotMetadata* md = out->mutable_snapshot();
    md->set_index(m.snapshot->metadata.index);
    md->set_term(m.snapshot->metadata.term);
    ConfToProto(m.snapshot->metadata.conf_state, md->mutable_conf_state());
  }
}

template <typename P>
absl::StatusOr<raft::Message> FromProtoImpl(P&& p) {
  constexpr bool kMove = !std::is_lvalue_reference_v<P>;
  raft::Message m;
  bool known = false;
  for (const auto& t : kTypes) {
    if (t.wire == p.type()) {
      m.type = t.raft;
      known = true;
    }
  }
  if (!known) {
    return absl::InvalidArgumentError(
        StrCat("unknown raft message type ", static_cast<int>(p.type())));
  }
  m.to = p.to();
  m.from = p.from();
  m.term = p.term();
  m.log_term = p.log_term();
  m.index = p.index();
  m.commit = p.commit();
  m.reject = p.reject();
  m.reject_hint = p.reject_hint();
  if constexpr (kMove) {
    m.context = std::move(*p.mutable_context());
  } else {
    m.context = p.context();
  }
  m.entries.reserve(p.entries_size());
  for (int i = 0; i < p.entries_size(); ++i) {
    const v1::RaftEntry& pe = p.entries(i);
    raft::Entry e;
    e.term = pe.term();
    e.index = pe.index();
    e.type = pe.type() == v1::RAFT_ENTRY_TYPE_CONF_CHANGE ? raft::EntryType::kConfChange
                                                          : raft::EntryType::kNormal;
    if constexpr (kMove) {
      e.data = std::move(*p.mutable_entries(i)->mutable_data());
    } else {
      e.data = pe.data();
    }
    m.entries.push_back(std::move(e));
  }
  if (m.type == raft::MessageType::kSnapshot) {
    auto snap = std::make_shared<raft::Snapshot>();
    snap->metadata.index = p.snapshot().index();
    snap->metadata.term = p.snapshot().term();
    for (auto id : p.snapshot().conf_state().voters()) {
      snap->metadata.conf_state.voters.push_back(id);
    }
    for (auto id : p.snapshot().conf_state().learners()) {
      snap->metadata.conf_state.learners.push_back(id);
    }
    m.snapshot = std::move(snap);
  }
  return m;
}

}  // namespace

void ToProto(const raft::Message& m, v1::RaftMessage* out) { ToProtoImpl(m, out); }
void ToProto(raft::Message&& m, v1::RaftMessage* out) { ToProtoImpl(std::move(m), out); }
absl::StatusOr<raft::Message> FromProto(const v1::RaftMessage& p) { return FromProtoImpl(p); }
absl::StatusOr<raft::Message> FromProto(v1::RaftMessage&& p) {
  return FromProtoImpl(std::move(p));
}

}  // namespace herald::cluster
