#include "libs/raft/storage.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace herald::raft {

absl::Status CompactedError() { return absl::OutOfRangeError("raft: log compacted"); }
bool IsCompacted(const absl::Status& s) { return s.code() == absl::StatusCode::kOutOfRange; }

MemoryStorage::MemoryStorage() { entries_.emplace_back(); }

InitialState MemoryStorage::GetInitialState() const {
  return InitialState{hard_state_, snapshot_.metadata.conf_state};
}

uint64_t MemoryStorage::FirstIndex() const { return entries_[0].index + 1; }
uint64_t MemoryStorage::LastIndex() const { return entries_[0].index + entries_.size() - 1; }

absl::Status MemoryStorage::Entries(uint64_t lo, uint64_t hi, uint64_t max_bytes,
                                    std::vector<Entry>* out) const {
  const uint64_t offset = entries_[0].index;
  if (lo <= offset) return CompactedError();
  if (hi > LastIndex() + 1) {
    return absl::UnavailableError(
        absl::StrCat("raft: entries up to ", hi, " beyond last ", LastIndex()));
  }
  uint64_t bytes = 0;
  for (uint64_t i = lo; i < hi; ++i) {
    const Entry& e = entries_[i - offset];
    bytes += e.ByteSize();
    if (i > lo && bytes > max_bytes) break;
    out->push_back(e);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> MemoryStorage::Term(uint64_t index) const {
  const uint64_t offset = entries_[0].index;
  if (index < offset) return CompactedError();
  if (index - offset >= entries_.size()) return absl::UnavailableError("raft: term unavailable");
  return entries_[index - offset].term;
}

absl::StatusOr<Snapshot> MemoryStorage::GetSnapshot() const { return snapshot_; }

absl::Status MemoryStorage::ApplySnapshot(Snapshot snap) {
  if (snap.metadata.index < snapshot_.metadata.index) {
    return absl::FailedPreconditionError("raft: snapshot out of date");
  }
  entries_.clear();
  Entry dummy;
  dummy.index = snap.metadata.index;
  dummy.term = snap.metadata.term;
  entries_.push_back(std::move(dummy));
  snapshot_ = std::move(snap);
  return absl::OkStatus();
}

absl::Status MemoryStorage::Append(absl::Span<const Entry> entries) {
  if (entries.empty()) return absl::OkStatus();
  const uint64_t first = FirstIndex();
  const uint64_t last = entries.back().index;
  if (last < first) return absl::OkStatus();
  size_t skip = 0;
  if (entries[0].index < first) skip = first - entries[0].index;
  const uint64_t start = entries[skip].index;
  if (start > LastIndex() + 1) {
    return absl::InternalError(
        absl::StrCat("raft: missing log entry [last: ", LastIndex(), ", append at: ", start, "]"));
  }
  entries_.resize(start - entries_[0].index);
  entries_.insert(entries_.end(), entries.begin() + skip, entries.end());
  return absl::OkStatus();
}

absl::Status MemoryStorage::CreateSnapshot(uint64_t index, const ConfState& cs, std::string data) {
  if (index <= snapshot_.metadata.index) {
    return absl::FailedPreconditionError("raft: snapshot out of date");
  }
  if (index > LastIndex()) {
    return absl::InvalidArgumentError(
        absl::StrCat("raft: snapshot index ", index, " beyond last ", LastIndex()));
  }
  snapshot_.metadata.index = index;
  snapshot_.metadata.term = entries_[index - entries_[0].index].term;
  snapshot_.metadata.conf_state = cs;
  snapshot_.data = std::move(data);
  return Compact(index);
}

absl::Status MemoryStorage::Compact(uint64_t index) {
  const uint64_t offset = entries_[0].index;
  if (index <= offset) return CompactedError();
  if (index > LastIndex()) {
    return absl::InvalidArgumentError("raft: compact beyond last index");
  }
  const size_t n = index - offset;
  Entry dummy;
  dummy.index = index;
  dummy.term = entries_[n].term;
  entries_.erase(entries_.begin(), entries_.begin() + n);
  entries_[0] = std::move(dummy);
  return absl::OkStatus();
}

Snapshot MemoryStorage::BootstrapSnapshot(const ConfState& cs) {
  Snapshot s;
  s.metadata.index = 1;
  s.metadata.term = 1;
  s.metadata.conf_state = cs;
  return s;
}

}  // namespace herald::raft
