#include "libs/raft/node.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "libs/raft/fatal.h"

namespace herald::raft {
namespace {

class SplitMix64 : public RandomSource {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Uniform(uint64_t n) override { return Next() % n; }

 private:
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  uint64_t state_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Node>> Node::Create(const Config& config) {
  if (config.id == kNoNode) return absl::InvalidArgumentError("raft: id must be non-zero");
  if (config.storage == nullptr) return absl::InvalidArgumentError("raft: storage required");
  if (config.heartbeat_tick <= 0 || config.election_tick <= config.heartbeat_tick) {
    return absl::InvalidArgumentError("raft: need 0 < heartbeat_tick < election_tick");
  }
  std::unique_ptr<Node> node(new Node(config));
  absl::Status s = node->Init();
  if (!s.ok()) return s;
  return node;
}

Node::Node(const Config& config) : id_(config.id), config_(config), log_(config.storage) {
  if (config.random != nullptr) {
    random_ = config.random;
  } else {
    owned_random_ = std::make_unique<SplitMix64>(config.random_seed * 0x100000001b3ULL ^ config.id);
    random_ = owned_random_.get();
  }
}

absl::Status Node::Init() {
  const InitialState st = config_.storage->GetInitialState();
  base_conf_ = st.conf_state;
  conf_ = base_conf_;
  {
    std::vector<Entry> ents;
    absl::Status s = log_.Slice(log_.FirstIndex(), log_.LastIndex() + 1, kNoLimit, &ents);
    if (!s.ok()) return s;
    for (const Entry& e : ents) {
      if (e.type == EntryType::kConfChange) OnConfEntryAppended(e.index, e.data);
    }
  }
  const HardState& hs = st.hard_state;
  if (!hs.IsEmpty()) {
    if (hs.commit < log_.committed() || hs.commit > log_.LastIndex()) {
      return absl::DataLossError(absl::StrCat("raft: hard state commit ", hs.commit,
                                              " outside log [", log_.committed(), ", ",
                                              log_.LastIndex(), "]"));
    }
    log_.CommitTo(hs.commit);
    term_ = hs.term;
    vote_ = hs.vote;
  }
  PruneConfHistory();
  if (config_.applied > 0) {
    if (config_.applied > log_.committed()) {
      return absl::InvalidArgumentError("raft: applied beyond commit");
    }
    log_.AppliedTo(config_.applied);
  }
  BecomeFollower(term_, kNoNode);
  prev_hard_state_ = CurrentHardState();
  prev_soft_state_ = SoftState{lead_, role_};
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Roles

void Node::Reset(uint64_t term) {
  if (term_ != term) {
    term_ = term;
    vote_ = kNoNode;
  }
  lead_ = kNoNode;
  election_elapsed_ = 0;
  heartbeat_elapsed_ = 0;
  ResetRandomizedElectionTimeout();
  votes_.clear();
  progress_.clear();
  lead_transferee_ = kNoNode;
  transfer_elapsed_ = 0;
  pending_broadcast_ = false;
  pending_reads_.clear();
  reads_awaiting_commit_.clear();
}

void Node::ResetRandomizedElectionTimeout() {
  randomized_election_timeout_ =
      config_.election_tick + static_cast<int>(random_->Uniform(config_.election_tick));
}

void Node::BecomeFollower(uint64_t term, NodeId lead) {
  Reset(term);
  lead_ = lead;
  role_ = Role::kFollower;
}

void Node::BecomePreCandidate() {
  // Pre-vote does not change term or vote (dissertation §9.6).
  votes_.clear();
  progress_.clear();
  lead_ = kNoNode;
  ResetRandomizedElectionTimeout();
  role_ = Role::kPreCandidate;
}

void Node::BecomeCandidate() {
  Reset(term_ + 1);  // Raft §5.2: increment currentTerm, vote for self
  vote_ = id_;
  role_ = Role::kCandidate;
}

void Node::BecomeLeader() {
  Reset(term_);
  lead_ = id_;
  role_ = Role::kLeader;
  SyncProgressWithConf();
  for (Progress& pr : progress_) pr.recent_active = true;
  // With self_ack_on_persist too: the entries a candidate had when it asked for votes were
  // durable before its vote requests left (host contract), and it appended none since.
  self_match_ = log_.LastIndex();
  // Raft §8: a new leader commits a no-op of its term; until it does it knows neither the commit
  // index (no ReadIndex) nor is it allowed to change membership.
  leader_first_index_ = log_.LastIndex() + 1;
  AppendLeaderEntry(Entry{});
}

bool Node::Promotable() const {
  return conf_.IsVoter(id_) && !log_.unstable_snapshot().has_value();
}

void Node::Campaign(bool pre_vote, bool transfer) {
  if (!Promotable()) return;
  uint64_t vote_term;
  MessageType type;
  if (pre_vote) {
    BecomePreCandidate();
    vote_term = term_ + 1;
    type = MessageType::kPreVote;
  } else {
    BecomeCandidate();
    vote_term = term_;
    type = MessageType::kVote;
  }
  votes_.emplace_back(id_, true);
  if (Quorum() <= 1) {
    if (pre_vote) {
      Campaign(false, transfer);
    } else {
      BecomeLeader();
    }
    return;
  }
  const uint64_t last = log_.LastIndex();
  const uint64_t last_term = log_.LastTerm();
  for (NodeId v : conf_.voters) {
    if (v == id_) continue;
    Message m;
    m.type = type;
    m.to = v;
    m.term = vote_term;
    m.index = last;
    m.log_term = last_term;
    if (transfer) m.context = std::string(kCampaignTransfer);
    Send(std::move(m));
  }
}

// ---------------------------------------------------------------------------------------------
// Time

void Node::Tick() {
  if (role_ == Role::kLeader) {
    TickHeartbeat();
  } else {
    TickElection();
  }
}

void Node::TickElection() {
  ++election_elapsed_;
  if (Promotable() && PastElectionTimeout()) {
    election_elapsed_ = 0;
    Campaign(config_.pre_vote, false);
  }
}

void Node::TickHeartbeat() {
  ++heartbeat_elapsed_;
  ++election_elapsed_;
  for (Progress& pr : progress_) {
    if (pr.state == Progress::State::kSnapshot && ++pr.snapshot_ticks >= config_.election_tick) {
      pr.BecomeProbe();  // the snapshot (or its answer) was probably lost: probe again
    }
  }
  if (lead_transferee_ != kNoNode && ++transfer_elapsed_ >= config_.election_tick) {
    lead_transferee_ = kNoNode;  // dissertation §3.10: abort after an election timeout
    transfer_elapsed_ = 0;
  }
  if (election_elapsed_ >= config_.election_tick) {
    election_elapsed_ = 0;
    if (config_.check_quorum) {
      // Dissertation §6.2: step down if a quorum has not been heard from in an election timeout.
      int active = conf_.IsVoter(id_) ? 1 : 0;
      for (Progress& pr : progress_) {
        if (pr.recent_active && conf_.IsVoter(pr.id)) ++active;
        pr.recent_active = false;
      }
      if (active < Quorum()) {
        BecomeFollower(term_, kNoNode);
        return;
      }
    }
  }
  if (heartbeat_elapsed_ >= config_.heartbeat_tick) {
    heartbeat_elapsed_ = 0;
    BroadcastHeartbeat(pending_reads_.empty() ? std::string() : pending_reads_.back().context);
  }
}

// ---------------------------------------------------------------------------------------------
// Messages

absl::Status Node::Step(Message m) {
  if (m.to != id_) return absl::InvalidArgumentError("raft: message for another node");
  if (m.term > term_) {
    if (m.type == MessageType::kVote || m.type == MessageType::kPreVote) {
      const bool force = m.context == kCampaignTransfer;
      const bool in_lease =
          config_.check_quorum && lead_ != kNoNode && election_elapsed_ < config_.election_tick;
      // Dissertation §4.2.3: ignore disruptive candidates while we have a live leader.
      if (!force && in_lease) return absl::OkStatus();
    }
    if (m.type == MessageType::kPreVote) {
      // A pre-vote never changes our term.
    } else if (m.type == MessageType::kPreVoteResp && !m.reject) {
      // Granted pre-vote for the term we would campaign in; no term change.
    } else if (m.type == MessageType::kAppend || m.type == MessageType::kHeartbeat ||
               m.type == MessageType::kSnapshot) {
      BecomeFollower(m.term, m.from);  // Raft §5.1: adopt the newer term
    } else {
      BecomeFollower(m.term, kNoNode);
    }
  } else if (m.term < term_) {
    if ((config_.check_quorum || config_.pre_vote) &&
        (m.type == MessageType::kAppend || m.type == MessageType::kHeartbeat)) {
      // Tell a stale leader about the newer term so it steps down.
      Message r;
      r.type = MessageType::kAppendResp;
      r.to = m.from;
      Send(std::move(r));
    } else if (m.type == MessageType::kPreVote) {
      Message r;
      r.type = MessageType::kPreVoteResp;
      r.to = m.from;
      r.term = term_;
      r.reject = true;
      Send(std::move(r));
    }
    return absl::OkStatus();  // Raft §5.1: stale messages are ignored
  }

  if (m.type == MessageType::kVote || m.type == MessageType::kPreVote) {
    HandleVoteRequest(m);
    return absl::OkStatus();
  }
  switch (role_) {
    case Role::kLeader:
      StepLeader(m);
      break;
    case Role::kCandidate:
    case Role::kPreCandidate:
      StepCandidate(m);
      break;
    case Role::kFollower:
      StepFollower(m);
      break;
  }
  return absl::OkStatus();
}

void Node::HandleVoteRequest(const Message& m) {
  const bool pre = m.type == MessageType::kPreVote;
  // Raft §5.2: at most one vote per term (first-come-first-served); repeat grants are idempotent.
  const bool can_vote =
      vote_ == m.from || (vote_ == kNoNode && lead_ == kNoNode) || (pre && m.term > term_);
  // Raft §5.4.1: only for candidates whose log is at least as up-to-date as ours.
  const bool log_ok =
      config_.testing.break_vote_log_check() || log_.IsUpToDate(m.index, m.log_term);
  Message r;
  r.type = pre ? MessageType::kPreVoteResp : MessageType::kVoteResp;
  r.to = m.from;
  if (can_vote && log_ok) {
    r.term = m.term;
    if (!pre) {
      election_elapsed_ = 0;
      vote_ = m.from;
    }
  } else {
    r.term = term_;
    r.reject = true;
  }
  Send(std::move(r));
}

void Node::StepLeader(Message& m) {
  switch (m.type) {
    case MessageType::kAppendResp: {
      Progress* pr = FindProgress(m.from);
      if (pr == nullptr) return;
      pr->recent_active = true;
      HandleAppendResp(m, *pr);
      return;
    }
    case MessageType::kHeartbeatResp: {
      Progress* pr = FindProgress(m.from);
      if (pr == nullptr) return;
      pr->recent_active = true;
      HandleHeartbeatResp(m, *pr);
      return;
    }
    case MessageType::kReadIndex:
      HandleReadRequest(m.from, std::move(m.context));
      return;
    default:
      return;
  }
}

void Node::StepCandidate(Message& m) {
  switch (m.type) {
    case MessageType::kAppend:
      BecomeFollower(m.term, m.from);  // Raft §5.2: a leader of our term exists
      HandleAppend(m);
      return;
    case MessageType::kHeartbeat:
      BecomeFollower(m.term, m.from);
      HandleHeartbeat(m);
      return;
    case MessageType::kSnapshot:
      BecomeFollower(m.term, m.from);
      HandleSnapshot(m);
      return;
    case MessageType::kVoteResp:
    case MessageType::kPreVoteResp: {
      const bool pre = role_ == Role::kPreCandidate;
      if (pre != (m.type == MessageType::kPreVoteResp)) return;
      if (!conf_.IsVoter(m.from)) return;
      for (const auto& [id, granted] : votes_) {
        if (id == m.from) return;
      }
      votes_.emplace_back(m.from, !m.reject);
      int granted = 0, rejected = 0;
      for (const auto& v : votes_) (v.second ? granted : rejected)++;
      const int voters = static_cast<int>(conf_.voters.size());
      if (granted >= Quorum()) {
        if (pre) {
          Campaign(false, false);
        } else {
          BecomeLeader();
        }
      } else if (rejected > voters - Quorum()) {
        BecomeFollower(term_, kNoNode);
      }
      return;
    }
    default:
      return;
  }
}

void Node::StepFollower(Message& m) {
  switch (m.type) {
    case MessageType::kAppend:
      election_elapsed_ = 0;
      lead_ = m.from;
      HandleAppend(m);
      return;
    case MessageType::kHeartbeat:
      election_elapsed_ = 0;
      lead_ = m.from;
      HandleHeartbeat(m);
      return;
    case MessageType::kSnapshot:
      election_elapsed_ = 0;
      lead_ = m.from;
      HandleSnapshot(m);
      return;
    case MessageType::kTimeoutNow:
      // Dissertation §3.10: start an election at once, skipping pre-vote.
      if (Promotable()) Campaign(false, true);
      return;
    case MessageType::kReadIndexResp:
      read_states_.push_back(ReadState{m.index, std::move(m.context)});
      return;
    default:
      return;
  }
}

void Node::HandleAppend(Message& m) {
  Message r;
  r.type = MessageType::kAppendResp;
  r.to = m.from;
  if (m.index < log_.committed()) {
    r.index = log_.committed();
    Send(std::move(r));
    return;
  }
  if (log_.MatchTerm(m.index, m.log_term)) {
    // Raft §5.3: the logs match up to m.index; delete conflicting entries, append new ones.
    const uint64_t last_new = m.index + m.entries.size();
    const uint64_t ci = log_.FindConflict(m.entries);
    if (ci != 0) {
      if (ci <= log_.committed()) {
        Fatal(absl::StrCat("entry ", ci, " conflicts with committed entry (commit ",
                           log_.committed(), ")"));
      }
      RollbackConf(ci);
      const size_t from = ci - (m.index + 1);
      for (size_t i = from; i < m.entries.size(); ++i) {
        if (m.entries[i].type == EntryType::kConfChange) {
          OnConfEntryAppended(m.entries[i].index, m.entries[i].data);
        }
      }
      log_.TruncateAndAppend(std::move(m.entries), from);
    }
    const uint64_t commit = std::min(m.commit, last_new);
    if (commit > log_.committed()) {
      log_.CommitTo(commit);
      PruneConfHistory();
    }
    r.index = last_new;
    Send(std::move(r));
    return;
  }
  // Fast backtracking: suggest the last index whose term is <= the leader's prev term.
  const auto [hint_index, hint_term] =
      log_.FindConflictByTerm(std::min(m.index, log_.LastIndex()), m.log_term);
  r.index = m.index;
  r.reject = true;
  r.reject_hint = hint_index;
  r.log_term = hint_term;
  Send(std::move(r));
}

void Node::HandleHeartbeat(const Message& m) {
  if (m.commit > log_.committed()) {
    log_.CommitTo(m.commit);
    PruneConfHistory();
  }
  Message r;
  r.type = MessageType::kHeartbeatResp;
  r.to = m.from;
  r.context = m.context;
  Send(std::move(r));
}

void Node::HandleSnapshot(const Message& m) {
  Message r;
  r.type = MessageType::kAppendResp;
  r.to = m.from;
  if (m.snapshot == nullptr) return;
  const SnapshotMetadata& md = m.snapshot->metadata;
  if (md.index <= log_.committed()) {
    r.index = log_.committed();
  } else if (log_.MatchTerm(md.index, md.term)) {
    // Raft §7: the snapshot is a prefix of our log; keep the entries that follow it.
    log_.CommitTo(md.index);
    PruneConfHistory();
    r.index = log_.committed();
  } else {
    log_.Restore(*m.snapshot);
    base_conf_ = md.conf_state;
    conf_history_.clear();
    conf_ = base_conf_;
    r.index = log_.LastIndex();
  }
  Send(std::move(r));
}

void Node::HandleAppendResp(const Message& m, Progress& pr) {
  if (m.reject) {
    uint64_t next_probe = m.reject_hint;
    if (m.log_term > 0) next_probe = log_.FindConflictByTerm(m.reject_hint, m.log_term).first;
    if (pr.MaybeDecrTo(m.index, next_probe)) {
      if (pr.state == Progress::State::kReplicate) pr.BecomeProbe();
      SendAppend(pr, true);
    }
    return;
  }
  const bool was_paused = pr.IsPaused();
  if (!pr.MaybeUpdate(m.index)) {
    if (was_paused && !pr.IsPaused()) SendAppend(pr, false);
    return;
  }
  switch (pr.state) {
    case Progress::State::kProbe:
      pr.BecomeReplicate();
      break;
    case Progress::State::kSnapshot:
      if (pr.match >= pr.pending_snapshot) {
        pr.BecomeProbe();
        pr.BecomeReplicate();
      }
      break;
    case Progress::State::kReplicate:
      pr.inflights.FreeLE(m.index);
      break;
  }
  if (MaybeCommit()) {
    BroadcastCommit();
    if (role_ != Role::kLeader) return;  // stepped down after its own removal
  }
  while (SendAppend(pr, false)) {
  }
  if (pr.id == lead_transferee_ && pr.match == log_.LastIndex()) SendTimeoutNow(pr);
}

void Node::HandleHeartbeatResp(const Message& m, Progress& pr) {
  pr.probe_sent = false;
  if (pr.state == Progress::State::kReplicate && pr.inflights.Full()) pr.inflights.FreeFirstOne();
  if (pr.match < log_.LastIndex()) SendAppend(pr, true);
  if (!m.context.empty()) HandleReadAck(m.from, m.context);
}

// ---------------------------------------------------------------------------------------------
// Replication

Progress* Node::FindProgress(NodeId id) {
  auto it = std::lower_bound(progress_.begin(), progress_.end(), id,
                             [](const Progress& p, NodeId v) { return p.id < v; });
  if (it == progress_.end() || it->id != id) return nullptr;
  return &*it;
}

const Progress* Node::progress(NodeId id) const {
  return const_cast<Node*>(this)->FindProgress(id);
}

void Node::Send(Message m) {
  m.from = id_;
  if (m.term == 0) m.term = term_;
  msgs_.push_back(std::move(m));
}

bool Node::SendAppend(Progress& pr, bool send_if_empty) {
  if (pr.IsPaused()) return false;
  const uint64_t last = log_.LastIndex();
  if (pr.next > last + 1) pr.next = last + 1;
  const uint64_t prev = pr.next - 1;
  absl::StatusOr<uint64_t> prev_term = log_.Term(prev);
  Message m;
  absl::Status s;
  if (prev_term.ok() && pr.next <= last) {
    s = log_.Slice(pr.next, last + 1, config_.max_size_per_msg, &m.entries);
  }
  if (!prev_term.ok() || !s.ok()) {
    // Raft §7: the follower needs entries we compacted; send the snapshot instead.
    if (!pr.recent_active) return false;
    absl::StatusOr<Snapshot> snap = config_.storage->GetSnapshot();
    if (!snap.ok()) return false;  // temporarily unavailable
    if (snap->IsEmpty()) Fatal("need a snapshot but storage has none");
    const uint64_t index = snap->metadata.index;
    m.entries.clear();
    m.type = MessageType::kSnapshot;
    m.to = pr.id;
    m.snapshot = std::make_shared<const Snapshot>(std::move(*snap));
    pr.BecomeSnapshot(index);
    Send(std::move(m));
    return true;
  }
  if (m.entries.empty() && !send_if_empty) return false;
  m.type = MessageType::kAppend;
  m.to = pr.id;
  m.index = prev;
  m.log_term = *prev_term;
  m.commit = log_.committed();
  if (!m.entries.empty()) {
    const uint64_t sent_last = m.entries.back().index;
    if (pr.state == Progress::State::kReplicate) {
      pr.next = sent_last + 1;  // pipelining: assume it arrives
      pr.inflights.Add(sent_last);
    } else {
      pr.probe_sent = true;
    }
  } else if (pr.state == Progress::State::kProbe) {
    pr.probe_sent = true;
  }
  Send(std::move(m));
  return true;
}

void Node::BroadcastAppend() {
  for (Progress& pr : progress_) SendAppend(pr, true);
}

void Node::SendTimeoutNow(Progress& pr) {
  // The transferee has every entry; an append just before tells it the commit index too (which
  // without broadcast_commit it may not know yet), so that as the new leader it applies all
  // this leader acknowledged without waiting for its own first entry to commit.
  if (!config_.broadcast_commit) SendAppend(pr, /*send_if_empty=*/true);
  Message t;
  t.type = MessageType::kTimeoutNow;
  t.to = pr.id;
  Send(std::move(t));
}

void Node::BroadcastCommit() {
  // Without broadcast_commit nothing is sent here: new entries go out from GetReady (pending
  // broadcast) carrying the commit index, and heartbeats carry it when nothing else does.
  if (config_.broadcast_commit || commit_covered_conf_) BroadcastAppend();
}

void Node::BroadcastHeartbeat(const std::string& context) {
  for (const Progress& pr : progress_) {
    Message m;
    m.type = MessageType::kHeartbeat;
    m.to = pr.id;
    // Never tell a follower to commit past what it is known to hold.
    m.commit = std::min(pr.match, log_.committed());
    m.context = context;
    Send(std::move(m));
  }
}

uint64_t Node::QuorumMatch() const {
  if (conf_.voters.empty()) return 0;
  uint64_t buf[16];
  std::vector<uint64_t> heap;
  uint64_t* v = buf;
  if (conf_.voters.size() > 16) {
    heap.resize(conf_.voters.size());
    v = heap.data();
  }
  size_t n = 0;
  for (NodeId id : conf_.voters) {
    if (id == id_) {
      v[n++] = self_match_;
    } else {
      const Progress* pr = progress(id);
      v[n++] = pr == nullptr ? 0 : pr->match;
    }
  }
  std::sort(v, v + n, std::greater<uint64_t>());
  return v[Quorum() - 1];
}

bool Node::MaybeCommit() {
  const uint64_t index = QuorumMatch();
  if (index <= log_.committed()) return false;
  // Raft §5.4.2: only entries of the current term are committed by counting replicas.
  if (log_.TermOrZero(index) != term_ && !config_.testing.commit_previous_term_by_counting()) {
    return false;
  }
  commit_covered_conf_ = !conf_history_.empty() && conf_history_.front().index <= index;
  log_.CommitTo(index);
  PruneConfHistory();
  ReleaseReadsAwaitingCommit();
  MaybeStepDownAfterRemoval();
  return true;
}

void Node::AppendLeaderEntry(Entry e) {
  e.term = term_;
  e.index = log_.LastIndex() + 1;
  const uint64_t index = e.index;
  if (e.type == EntryType::kConfChange) OnConfEntryAppended(index, e.data);
  log_.AppendOne(std::move(e));
  if (!config_.self_ack_on_persist) self_match_ = index;
  pending_broadcast_ = true;
  MaybeCommit();
}

void Node::LocalPersisted(uint64_t index) {
  if (!config_.self_ack_on_persist || role_ != Role::kLeader) return;
  index = std::min(index, log_.LastIndex());
  if (index <= self_match_) return;
  self_match_ = index;
  if (MaybeCommit()) BroadcastCommit();
}

absl::Status Node::Propose(std::string data) {
  if (role_ != Role::kLeader) return absl::FailedPreconditionError("raft: not leader");
  if (lead_transferee_ != kNoNode) {
    return absl::FailedPreconditionError("raft: leadership transfer in progress");
  }
  if (config_.max_uncommitted_entries > 0 &&
      log_.LastIndex() - log_.committed() >= config_.max_uncommitted_entries) {
    return absl::ResourceExhaustedError("raft: too many uncommitted entries");
  }
  Entry e;
  e.data = std::move(data);
  AppendLeaderEntry(std::move(e));
  return absl::OkStatus();
}

absl::Status Node::ProposeConfChange(const ConfChange& cc) {
  if (role_ != Role::kLeader) return absl::FailedPreconditionError("raft: not leader");
  if (lead_transferee_ != kNoNode) {
    return absl::FailedPreconditionError("raft: leadership transfer in progress");
  }
  // Single-server changes are only safe if the leader has committed an entry of its term first
  // (Ongaro, raft-dev 2015 "bug in single-server membership changes") and if at most one change
  // is uncommitted at a time (dissertation §4.1).
  if (log_.committed() < leader_first_index_) {
    return absl::FailedPreconditionError("raft: leader has not committed an entry of its term");
  }
  if (!conf_history_.empty()) {
    return absl::FailedPreconditionError("raft: another membership change is pending");
  }
  ConfState next = conf_;
  absl::Status s = ApplyConfChange(cc, &next);
  if (!s.ok()) return s;
  if (cc.type == ConfChangeType::kAddVoter) {
    const Progress* pr = progress(cc.node_id);
    if (pr == nullptr || pr->match < log_.committed()) {
      return absl::FailedPreconditionError("raft: learner has not caught up");
    }
  }
  Entry e;
  e.type = EntryType::kConfChange;
  e.data = EncodeConfChange(cc);
  AppendLeaderEntry(std::move(e));
  return absl::OkStatus();
}

absl::Status Node::TransferLeadership(NodeId to) {
  if (role_ != Role::kLeader) return absl::FailedPreconditionError("raft: not leader");
  if (to == id_) return absl::OkStatus();
  if (!conf_.IsVoter(to)) return absl::InvalidArgumentError("raft: transferee is not a voter");
  if (lead_transferee_ == to) return absl::OkStatus();
  Progress* pr = FindProgress(to);
  if (pr == nullptr) return absl::InvalidArgumentError("raft: unknown transferee");
  lead_transferee_ = to;
  transfer_elapsed_ = 0;
  if (pr->match == log_.LastIndex()) {
    SendTimeoutNow(*pr);
  } else {
    SendAppend(*pr, true);
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// ReadIndex (dissertation §6.4)

absl::Status Node::ReadIndex(std::string context) {
  if (role_ == Role::kLeader) {
    HandleReadRequest(kNoNode, std::move(context));
    return absl::OkStatus();
  }
  if (role_ == Role::kFollower && lead_ != kNoNode) {
    Message m;
    m.type = MessageType::kReadIndex;
    m.to = lead_;
    m.context = std::move(context);
    Send(std::move(m));
    return absl::OkStatus();
  }
  return absl::UnavailableError("raft: no leader");
}

void Node::HandleReadRequest(NodeId from, std::string context) {
  if (log_.committed() < leader_first_index_) {
    // We do not know the commit index until our no-op commits.
    reads_awaiting_commit_.emplace_back(from, std::move(context));
    return;
  }
  auto respond = [this](NodeId to, uint64_t index, std::string ctx) {
    if (to == kNoNode || to == id_) {
      read_states_.push_back(ReadState{index, std::move(ctx)});
    } else {
      Message r;
      r.type = MessageType::kReadIndexResp;
      r.to = to;
      r.index = index;
      r.context = std::move(ctx);
      Send(std::move(r));
    }
  };
  if (conf_.voters.size() == 1 && conf_.IsVoter(id_)) {
    respond(from, log_.committed(), std::move(context));
    return;
  }
  pending_reads_.push_back(PendingRead{context, from, log_.committed(), {}});
  BroadcastHeartbeat(context);
}

void Node::HandleReadAck(NodeId from, const std::string& context) {
  if (!conf_.IsVoter(from)) return;
  size_t pos = pending_reads_.size();
  for (size_t i = 0; i < pending_reads_.size(); ++i) {
    if (pending_reads_[i].context == context) {
      pos = i;
      break;
    }
  }
  if (pos == pending_reads_.size()) return;
  PendingRead& pr = pending_reads_[pos];
  if (std::find(pr.acks.begin(), pr.acks.end(), from) == pr.acks.end()) pr.acks.push_back(from);
  ReleaseConfirmedReads();
}

void Node::ReleaseConfirmedReads() {
  // The newest request a quorum of the current voters acknowledged; its heartbeat round also
  // confirms every earlier one. (Acks of members removed since do not count.)
  size_t confirmed = 0;
  for (size_t i = pending_reads_.size(); i > 0; --i) {
    const PendingRead& pr = pending_reads_[i - 1];
    int acks = conf_.IsVoter(id_) ? 1 : 0;
    for (NodeId a : pr.acks) acks += conf_.IsVoter(a) ? 1 : 0;
    if (acks >= Quorum()) {
      confirmed = i;
      break;
    }
  }
  for (size_t i = 0; i < confirmed; ++i) {
    PendingRead r = std::move(pending_reads_.front());
    pending_reads_.pop_front();
    if (r.from == kNoNode || r.from == id_) {
      read_states_.push_back(ReadState{r.index, std::move(r.context)});
    } else {
      Message m;
      m.type = MessageType::kReadIndexResp;
      m.to = r.from;
      m.index = r.index;
      m.context = std::move(r.context);
      Send(std::move(m));
    }
  }
}

void Node::ReleaseReadsAwaitingCommit() {
  if (reads_awaiting_commit_.empty() || log_.committed() < leader_first_index_) return;
  auto reads = std::move(reads_awaiting_commit_);
  reads_awaiting_commit_.clear();
  for (auto& [from, ctx] : reads) HandleReadRequest(from, std::move(ctx));
}

// ---------------------------------------------------------------------------------------------
// Membership (dissertation §4.1: a server uses the latest configuration in its log)

void Node::OnConfEntryAppended(uint64_t index, const std::string& data) {
  ConfState next = conf_;
  absl::StatusOr<ConfChange> cc = DecodeConfChange(data);
  if (cc.ok()) {
    // An invalid change (impossible if the leader validated it) leaves membership unchanged.
    (void)ApplyConfChange(*cc, &next);
  }
  conf_history_.push_back(ConfEntry{index, std::move(next)});
  conf_ = conf_history_.back().conf;
  if (role_ == Role::kLeader) SyncProgressWithConf();
}

void Node::RollbackConf(uint64_t from_index) {
  while (!conf_history_.empty() && conf_history_.back().index >= from_index) {
    conf_history_.pop_back();
  }
  RecomputeConf();
}

void Node::RecomputeConf() {
  conf_ = conf_history_.empty() ? base_conf_ : conf_history_.back().conf;
  if (role_ == Role::kLeader) SyncProgressWithConf();
}

void Node::PruneConfHistory() {
  size_t n = 0;
  while (n < conf_history_.size() && conf_history_[n].index <= log_.committed()) ++n;
  if (n == 0) return;
  base_conf_ = conf_history_[n - 1].conf;
  conf_history_.erase(conf_history_.begin(), conf_history_.begin() + n);
}

void Node::SyncProgressWithConf() {
  std::vector<NodeId> members;
  members.reserve(conf_.voters.size() + conf_.learners.size());
  for (NodeId id : conf_.voters) {
    if (id != id_) members.push_back(id);
  }
  for (NodeId id : conf_.learners) {
    if (id != id_) members.push_back(id);
  }
  std::sort(members.begin(), members.end());
  std::vector<Progress> next;
  next.reserve(members.size());
  for (NodeId id : members) {
    if (Progress* pr = FindProgress(id)) {
      next.push_back(std::move(*pr));
    } else {
      Progress p(id, config_.max_inflight_msgs);
      p.next = log_.LastIndex() + 1;
      p.recent_active = true;
      next.push_back(std::move(p));
    }
  }
  progress_ = std::move(next);
  if (lead_transferee_ != kNoNode && !conf_.IsVoter(lead_transferee_)) lead_transferee_ = kNoNode;
  // Fewer voters may make a quorum of acknowledgements already received (down to this node
  // alone, which then hears from nobody).
  ReleaseConfirmedReads();
}

void Node::MaybeStepDownAfterRemoval() {
  // Dissertation §4.2.2: a leader removed from the configuration steps down once the change
  // commits (it managed the cluster without counting itself until then).
  if (role_ != Role::kLeader || conf_.IsMember(id_) || !conf_history_.empty()) return;
  BroadcastAppend();  // let the others learn the commit index
  BecomeFollower(term_, kNoNode);
}

// ---------------------------------------------------------------------------------------------
// Ready

bool Node::HasReady() const {
  if (ready_outstanding_) return false;
  if (pending_broadcast_ && role_ == Role::kLeader) return true;
  if (!msgs_.empty() || !read_states_.empty()) return true;
  if (log_.HasUnstableEntries() || log_.unstable_snapshot().has_value()) return true;
  if (log_.HasNextCommitted()) return true;
  if (CurrentHardState() != prev_hard_state_) return true;
  if (SoftState{lead_, role_} != prev_soft_state_) return true;
  return false;
}

Ready Node::GetReady() {
  if (ready_outstanding_) Fatal("GetReady called before Advance");
  if (pending_broadcast_ && role_ == Role::kLeader) {
    for (Progress& pr : progress_) {
      while (SendAppend(pr, false)) {
      }
    }
  }
  pending_broadcast_ = false;
  Ready rd;
  const SoftState ss{lead_, role_};
  if (ss != prev_soft_state_) {
    rd.soft_state = ss;
    prev_soft_state_ = ss;
  }
  const HardState hs = CurrentHardState();
  if (hs != prev_hard_state_) {
    rd.hard_state = hs;
    prev_hard_state_ = hs;
  }
  rd.entries = log_.unstable_entries();
  if (log_.unstable_snapshot()) rd.snapshot = *log_.unstable_snapshot();
  rd.messages = std::move(msgs_);
  msgs_.clear();
  log_.NextCommitted(config_.max_committed_size_per_ready, &rd.committed_entries);
  rd.read_states = std::move(read_states_);
  read_states_.clear();
  ready_outstanding_ = true;
  return rd;
}

void Node::Advance(const Ready& rd) {
  if (!rd.snapshot.IsEmpty()) {
    log_.StableSnapTo(rd.snapshot.metadata.index);
    log_.AppliedTo(rd.snapshot.metadata.index);
  }
  if (!rd.entries.empty()) log_.StableTo(rd.entries.back().index, rd.entries.back().term);
  if (!rd.committed_entries.empty()) log_.AppliedTo(rd.committed_entries.back().index);
  ready_outstanding_ = false;
}

}  // namespace herald::raft
