#include "libs/raft/raft_log.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "libs/raft/fatal.h"

namespace herald::raft {
namespace {

[[noreturn]] void Fatal(const char* what, uint64_t a, uint64_t b) {
  ::herald::raft::Fatal(absl::StrCat(what, " (", a, ", ", b, ")"));
}

}  // namespace

RaftLog::RaftLog(const Storage* storage)
    : storage_(storage), unstable_offset_(storage->LastIndex() + 1) {
  committed_ = storage->FirstIndex() - 1;
  applied_ = committed_;
}

uint64_t RaftLog::FirstIndex() const {
  if (unstable_snapshot_) return unstable_snapshot_->metadata.index + 1;
  return storage_->FirstIndex();
}

absl::StatusOr<uint64_t> RaftLog::Term(uint64_t index) const {
  if (index >= unstable_offset_) {
    if (index - unstable_offset_ < unstable_.size())
      return unstable_[index - unstable_offset_].term;
    if (unstable_.empty() && index == unstable_offset_ - 1) {
      // fall through to the snapshot/storage lookup below
    } else {
      return absl::UnavailableError("raft: term beyond last index");
    }
  }
  if (unstable_snapshot_) {
    if (index == unstable_snapshot_->metadata.index) return unstable_snapshot_->metadata.term;
    if (index < unstable_snapshot_->metadata.index) return CompactedError();
  }
  if (index > LastIndex()) return absl::UnavailableError("raft: term beyond last index");
  return storage_->Term(index);
}

uint64_t RaftLog::TermOrZero(uint64_t index) const {
  auto t = Term(index);
  return t.ok() ? *t : 0;
}

uint64_t RaftLog::LastTerm() const {
  auto t = Term(LastIndex());
  if (!t.ok()) Fatal("last term unavailable", LastIndex(), 0);
  return *t;
}

bool RaftLog::MatchTerm(uint64_t index, uint64_t term) const {
  auto t = Term(index);
  return t.ok() && *t == term;
}

bool RaftLog::IsUpToDate(uint64_t index, uint64_t term) const {
  const uint64_t last_term = LastTerm();
  return term > last_term || (term == last_term && index >= LastIndex());
}

uint64_t RaftLog::FindConflict(const std::vector<Entry>& ents) const {
  for (const Entry& e : ents) {
    if (!MatchTerm(e.index, e.term)) return e.index;
  }
  return 0;
}

std::pair<uint64_t, uint64_t> RaftLog::FindConflictByTerm(uint64_t index, uint64_t term) const {
  for (;;) {
    auto t = Term(index);
    if (!t.ok()) return {index, 0};
    if (*t <= term) return {index, *t};
    --index;
  }
}

void RaftLog::TruncateAndAppend(std::vector<Entry>&& ents, size_t from) {
  if (from >= ents.size()) return;
  const uint64_t first = ents[from].index;
  if (first <= committed_) Fatal("truncating committed entries", first, committed_);
  if (first > LastIndex() + 1) Fatal("append leaves a gap", first, LastIndex());
  if (first < unstable_offset_) {
    // Overwrites stable entries: everything from `first` on is now unstable.
    unstable_offset_ = first;
    unstable_.clear();
  } else {
    unstable_.resize(first - unstable_offset_);
  }
  if (from == 0 && unstable_.empty()) {
    unstable_ = std::move(ents);
  } else {
    unstable_.insert(unstable_.end(), std::make_move_iterator(ents.begin() + from),
                     std::make_move_iterator(ents.end()));
  }
}

absl::Status RaftLog::Slice(uint64_t lo, uint64_t hi, uint64_t max_bytes,
                            std::vector<Entry>* out) const {
  if (lo < FirstIndex()) return CompactedError();
  if (hi > LastIndex() + 1) return absl::UnavailableError("raft: slice beyond last index");
  if (lo >= hi) return absl::OkStatus();
  const size_t start_size = out->size();
  uint64_t bytes = 0;
  if (lo < unstable_offset_) {
    const uint64_t stable_hi = std::min(hi, unstable_offset_);
    absl::Status s = storage_->Entries(lo, stable_hi, max_bytes, out);
    if (!s.ok()) return s;
    for (size_t i = start_size; i < out->size(); ++i) bytes += (*out)[i].ByteSize();
    if (out->size() - start_size < stable_hi - lo) return absl::OkStatus();  // hit the limit
    lo = stable_hi;
  }
  for (uint64_t i = lo; i < hi; ++i) {
    const Entry& e = unstable_[i - unstable_offset_];
    bytes += e.ByteSize();
    if (out->size() > start_size && bytes > max_bytes) break;
    out->push_back(e);
  }
  return absl::OkStatus();
}

void RaftLog::CommitTo(uint64_t index) {
  if (index <= committed_) return;
  if (index > LastIndex()) Fatal("commit beyond last index", index, LastIndex());
  committed_ = index;
}

void RaftLog::AppliedTo(uint64_t index) {
  if (index == 0) return;
  if (index > committed_) Fatal("applied beyond committed", index, committed_);
  applied_ = std::max(applied_, index);
}

bool RaftLog::HasNextCommitted() const {
  uint64_t from = applied_;
  if (unstable_snapshot_) from = std::max(from, unstable_snapshot_->metadata.index);
  return committed_ > from;
}

void RaftLog::NextCommitted(uint64_t max_bytes, std::vector<Entry>* out) const {
  uint64_t from = applied_;
  if (unstable_snapshot_) from = std::max(from, unstable_snapshot_->metadata.index);
  if (committed_ <= from) return;
  absl::Status s = Slice(from + 1, committed_ + 1, max_bytes, out);
  if (!s.ok()) Fatal("committed entries unavailable", from + 1, committed_);
}

void RaftLog::StableTo(uint64_t index, uint64_t term) {
  if (index < unstable_offset_ || index - unstable_offset_ >= unstable_.size()) return;
  if (unstable_[index - unstable_offset_].term != term) return;  // overwritten meanwhile
  const size_t n = index - unstable_offset_ + 1;
  unstable_.erase(unstable_.begin(), unstable_.begin() + n);
  unstable_offset_ = index + 1;
}

void RaftLog::StableSnapTo(uint64_t index) {
  if (unstable_snapshot_ && unstable_snapshot_->metadata.index == index) {
    unstable_snapshot_.reset();
  }
}

void RaftLog::Restore(Snapshot snap) {
  committed_ = snap.metadata.index;
  unstable_.clear();
  unstable_offset_ = snap.metadata.index + 1;
  unstable_snapshot_ = std::move(snap);
}

}  // namespace herald::raft
