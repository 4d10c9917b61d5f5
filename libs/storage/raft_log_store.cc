#include "libs/storage/raft_log_store.h"

#include <algorithm>

#include "libs/common/strings.h"
#include "libs/storage/keys.h"

namespace herald::storage {

absl::StatusOr<std::unique_ptr<RaftLogStore>> RaftLogStore::Load(Engine& engine, uint64_t group,
                                                                 Options options) {
  std::unique_ptr<RaftLogStore> s(new RaftLogStore(engine, group, options));
  absl::Status st = s->LoadFromEngine();
  if (!st.ok()) return st;
  return s;
}

absl::Status RaftLogStore::LoadFromEngine() {
  auto hs = engine_.Get(Family::kRaftState, RaftStateKey(group_, 'h'));
  if (!hs.ok()) return hs.status();
  if (hs->has_value()) {
    auto decoded = DecodeHardState(**hs);
    if (!decoded.ok()) return decoded.status();
    hard_state_ = *decoded;
  }
  auto snap = engine_.Get(Family::kRaftState, RaftStateKey(group_, 's'));
  if (!snap.ok()) return snap.status();
  if (snap->has_value()) {
    auto decoded = DecodeSnapshot(**snap);
    if (!decoded.ok()) return decoded.status();
    snapshot_ = std::move(*decoded);
  }
  last_index_ = snapshot_.metadata.index;
  written_ = hard_state_;
  // The commit index is not written when only it changes (StageReady); what a snapshot covers
  // was committed.
  if (!hard_state_.IsEmpty()) {
    hard_state_.commit = std::max(hard_state_.commit, snapshot_.metadata.index);
  }
  // One scan of the group's log rebuilds the index bounds and term runs. Logs are compacted
  // after every snapshot, so this is short.
  auto it = engine_.NewIterator(Family::kRaftLog);
  std::string lo = RaftLogKey(group_, snapshot_.metadata.index + 1);
  for (it->Seek(lo); it->Valid(); it->Next()) {
    std::string_view key(it->key().data(), it->key().size());
    std::string_view kg = key.substr(0, 8);
    uint64_t g = 0;
    GetU64(&kg, &g);
    if (g != group_) break;
    uint64_t index = RaftLogKeyIndex(key);
    if (index != last_index_ + 1) {
      return absl::DataLossError(StrCat("raft group ", group_, ": log has a hole before index ",
                                        index, " (last was ", last_index_, ")"));
    }
    std::string_view value(it->value().data(), it->value().size());
    uint64_t term = 0;
    if (!GetU64(&value, &term)) return absl::DataLossError("raft log entry value too short");
    if (term_runs_.empty() || term_runs_.back().second != term)
      term_runs_.emplace_back(index, term);
    last_index_ = index;
  }
  if (!it->status().ok()) return FromRocks(it->status(), "scan raft log");
  return absl::OkStatus();
}

raft::InitialState RaftLogStore::GetInitialState() const {
  return raft::InitialState{hard_state_, snapshot_.metadata.conf_state};
}

absl::StatusOr<uint64_t> RaftLogStore::Term(uint64_t index) const {
  if (index < snapshot_.metadata.index) return raft::CompactedError();
  if (index == snapshot_.metadata.index) return snapshot_.metadata.term;
  if (index > last_index_) {
    return absl::UnavailableError(
        StrCat("index ", index, " is beyond the last index ", last_index_));
  }
  auto it = std::upper_bound(term_runs_.begin(), term_runs_.end(), index,
                             [](uint64_t i, const auto& run) { return i < run.first; });
  return std::prev(it)->second;
}

absl::Status RaftLogStore::Entries(uint64_t lo, uint64_t hi, uint64_t max_bytes,
                                   std::vector<raft::Entry>* out) const {
  if (lo <= snapshot_.metadata.index) return raft::CompactedError();
  if (hi > last_index_ + 1) {
    return absl::UnavailableError(
        StrCat("entries up to ", hi, " requested, last is ", last_index_));
  }
  uint64_t bytes = 0;
  uint64_t next = lo;
  auto take = [&](raft::Entry e) {
    uint64_t size = e.ByteSize();
    if (next > lo && bytes + size > max_bytes) return false;
    bytes += size;
    out->push_back(std::move(e));
    ++next;
    return true;
  };
  if (!tail_.empty() && lo >= tail_.front().index) {
    for (size_t i = lo - tail_.front().index; next < hi && i < tail_.size(); ++i) {
      if (!take(tail_[i])) return absl::OkStatus();
    }
    return absl::OkStatus();
  }
  rocksdb::ReadOptions ro;
  std::string upper = RaftLogKey(group_, hi);
  rocksdb::Slice upper_slice(upper);
  ro.iterate_upper_bound = &upper_slice;
  auto it = engine_.NewIterator(Family::kRaftLog, ro);
  for (it->Seek(RaftLogKey(group_, lo)); it->Valid() && next < hi; it->Next()) {
    std::string_view key(it->key().data(), it->key().size());
    uint64_t index = RaftLogKeyIndex(key);
    if (index != next) {
      return absl::DataLossError(StrCat("raft group ", group_, ": entry ", next, " missing"));
    }
    auto e = DecodeEntryValue(index, std::string_view(it->value().data(), it->value().size()));
    if (!e.ok()) return e.status();
    if (!take(std::move(*e))) return absl::OkStatus();
  }
  if (!it->status().ok()) return FromRocks(it->status(), "read raft log");
  if (next < hi) {
    return absl::DataLossError(StrCat("raft group ", group_, ": entry ", next, " missing"));
  }
  return absl::OkStatus();
}

void RaftLogStore::TruncateTermRunsAfter(uint64_t index) {
  while (!term_runs_.empty() && term_runs_.back().first > index) term_runs_.pop_back();
}

void RaftLogStore::AddToTail(const raft::Entry& e) {
  if (options_.tail_cache_bytes == 0) return;
  tail_.push_back(e);
  tail_bytes_ += e.ByteSize();
  while (tail_bytes_ > options_.tail_cache_bytes && tail_.size() > 1) {
    tail_bytes_ -= tail_.front().ByteSize();
    tail_.pop_front();
  }
}

absl::Status RaftLogStore::Append(absl::Span<const raft::Entry> entries,
                                  rocksdb::WriteBatch* batch) {
  while (!entries.empty() && entries.front().index <= snapshot_.metadata.index) {
    entries.remove_prefix(1);
  }
  if (entries.empty()) return absl::OkStatus();
  uint64_t first = entries.front().index;
  if (first > last_index_ + 1) {
    return absl::InvalidArgumentError(
        StrCat("raft group ", group_, ": append at ", first, " leaves a hole after ", last_index_));
  }
  uint64_t new_last = entries.back().index;
  // Delete the old suffix beyond what the new entries overwrite.
  for (uint64_t i = new_last + 1; i <= last_index_; ++i) {
    batch->Delete(engine_.handle(Family::kRaftLog), RaftLogKey(group_, i));
  }
  for (const raft::Entry& e : entries) {
    // Header and data go into the batch as two parts: the data is copied once, into the batch.
    const std::string key = RaftLogKey(group_, e.index);
    char header[kEntryHeaderBytes];
    EncodeEntryHeader(e, header);
    const rocksdb::Slice key_part(key);
    const rocksdb::Slice value_parts[2] = {rocksdb::Slice(header, kEntryHeaderBytes),
                                           rocksdb::Slice(e.data)};
    batch->Put(engine_.handle(Family::kRaftLog), rocksdb::SliceParts(&key_part, 1),
               rocksdb::SliceParts(value_parts, 2));
  }
  // In-memory view.
  TruncateTermRunsAfter(first - 1);
  while (!tail_.empty() && tail_.back().index >= first) {
    tail_bytes_ -= tail_.back().ByteSize();
    tail_.pop_back();
  }
  if (!tail_.empty() && tail_.back().index + 1 != first) {
    tail_.clear();
    tail_bytes_ = 0;
  }
  for (const raft::Entry& e : entries) {
    if (term_runs_.empty() || term_runs_.back().second != e.term) {
      term_runs_.emplace_back(e.index, e.term);
    }
    AddToTail(e);
  }
  last_index_ = new_last;
  return absl::OkStatus();
}

void RaftLogStore::SetHardState(const raft::HardState& hs, rocksdb::WriteBatch* batch) {
  batch->Put(engine_.handle(Family::kRaftState), RaftStateKey(group_, 'h'), EncodeHardState(hs));
  hard_state_ = hs;
  written_ = hs;
}

absl::Status RaftLogStore::ApplySnapshot(const raft::Snapshot& snapshot,
                                         rocksdb::WriteBatch* batch) {
  if (snapshot.metadata.index < snapshot_.metadata.index) {
    return absl::FailedPreconditionError(
        StrCat("raft group ", group_, ": snapshot at ", snapshot.metadata.index,
               " is older than the current one at ", snapshot_.metadata.index));
  }
  batch->Put(engine_.handle(Family::kRaftState), RaftStateKey(group_, 's'),
             EncodeSnapshot(snapshot));
  engine_.StageDeleteRange(batch, Family::kRaftLog, RaftLogKey(group_, 0),
                           RaftLogKey(group_, last_index_ + 1));
  snapshot_ = snapshot;
  last_index_ = snapshot.metadata.index;
  term_runs_.clear();
  tail_.clear();
  tail_bytes_ = 0;
  return absl::OkStatus();
}

absl::Status RaftLogStore::CreateSnapshot(uint64_t index, const raft::ConfState& cs,
                                          std::string data, rocksdb::WriteBatch* batch) {
  if (index <= snapshot_.metadata.index) {
    return absl::FailedPreconditionError(StrCat("raft group ", group_, ": snapshot at ", index,
                                                " is not newer than ", snapshot_.metadata.index));
  }
  if (index > last_index_) {
    return absl::InvalidArgumentError(
        StrCat("raft group ", group_, ": snapshot at ", index, " beyond last index ", last_index_));
  }
  auto term = Term(index);
  if (!term.ok()) return term.status();
  raft::Snapshot snap;
  snap.metadata.index = index;
  snap.metadata.term = *term;
  snap.metadata.conf_state = cs;
  snap.data = std::move(data);
  batch->Put(engine_.handle(Family::kRaftState), RaftStateKey(group_, 's'), EncodeSnapshot(snap));
  engine_.StageDeleteRange(batch, Family::kRaftLog, RaftLogKey(group_, 0),
                           RaftLogKey(group_, index + 1));
  snapshot_ = std::move(snap);
  // Drop term runs wholly at or below the snapshot; the run containing index+1 starts there.
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  for (size_t i = 0; i < term_runs_.size(); ++i) {
    uint64_t run_end = i + 1 < term_runs_.size() ? term_runs_[i + 1].first - 1 : last_index_;
    if (run_end <= index) continue;
    runs.emplace_back(std::max(term_runs_[i].first, index + 1), term_runs_[i].second);
  }
  term_runs_ = std::move(runs);
  while (!tail_.empty() && tail_.front().index <= index) {
    tail_bytes_ -= tail_.front().ByteSize();
    tail_.pop_front();
  }
  return absl::OkStatus();
}

absl::Status RaftLogStore::StageReady(const raft::Ready& ready, rocksdb::WriteBatch* batch) {
  if (!ready.snapshot.IsEmpty()) {
    absl::Status s = ApplySnapshot(ready.snapshot, batch);
    if (!s.ok()) return s;
  }
  absl::Status s = Append(ready.entries, batch);
  if (!s.ok()) return s;
  if (ready.hard_state) {
    // Raft (Figure 2) keeps currentTerm and votedFor on stable storage before answering; the
    // commit index is volatile state. It changes on almost every pass of a busy group, and
    // writing it each time was one more insert at a distant place of the raft_state memtable
    // per group per pass. It is still written now and then, so that a restart does not have
    // Raft hand out a long run of entries the state machine applied already.
    const raft::HardState& hs = *ready.hard_state;
    if (hs.term != written_.term || hs.vote != written_.vote ||
        hs.commit >= written_.commit + kCommitWriteInterval) {
      SetHardState(*ready.hard_state, batch);
    } else {
      hard_state_ = *ready.hard_state;
    }
  }
  return absl::OkStatus();
}

}  // namespace herald::storage
