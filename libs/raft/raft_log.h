// RaftLog (internal to libs/raft): a node's log as the core sees it, i.e. the host's Storage
// (entries already persisted) followed by "unstable" entries and possibly an unstable snapshot
// that were handed out in a Ready but not yet acknowledged by Advance().
//
// Indices >= unstable_offset_ are always read from the unstable part, even if Storage already
// holds (possibly stale) entries there.
#ifndef HERALD_LIBS_RAFT_RAFT_LOG_H_
#define HERALD_LIBS_RAFT_RAFT_LOG_H_

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "libs/raft/storage.h"
#include "libs/raft/types.h"

namespace herald::raft {

class RaftLog {
 public:
  explicit RaftLog(const Storage* storage);

  uint64_t FirstIndex() const;
  uint64_t LastIndex() const { return unstable_offset_ + unstable_.size() - 1; }
  absl::StatusOr<uint64_t> Term(uint64_t index) const;
  // Term or 0 when the index is compacted or beyond the log.
  uint64_t TermOrZero(uint64_t index) const;
  uint64_t LastTerm() const;
  bool MatchTerm(uint64_t index, uint64_t term) const;
  // Raft §5.4.1: is a log ending at (index, term) at least as up-to-date as ours?
  bool IsUpToDate(uint64_t index, uint64_t term) const;

  // The index of the first entry in `ents` that is absent or has a different term in our log, or
  // 0 if all are present.
  uint64_t FindConflict(const std::vector<Entry>& ents) const;
  // Largest index <= `index` whose term is <= `term` (fast backtracking), and that term.
  std::pair<uint64_t, uint64_t> FindConflictByTerm(uint64_t index, uint64_t term) const;

  // Appends entries starting at `ents[from]` (which is at most LastIndex()+1), truncating any
  // unstable or stable suffix they overwrite.
  void TruncateAndAppend(std::vector<Entry>&& ents, size_t from);
  // Leader fast path: appends one entry at LastIndex()+1.
  void AppendOne(Entry&& e) { unstable_.push_back(std::move(e)); }

  // Appends [lo, hi) to *out, limited by max_bytes (at least one entry).
  absl::Status Slice(uint64_t lo, uint64_t hi, uint64_t max_bytes, std::vector<Entry>* out) const;

  uint64_t committed() const { return committed_; }
  uint64_t applied() const { return applied_; }
  void CommitTo(uint64_t index);  // never decreases; aborts if beyond the log
  void AppliedTo(uint64_t index);

  bool HasUnstableEntries() const { return !unstable_.empty(); }
  const std::vector<Entry>& unstable_entries() const { return unstable_; }
  const std::optional<Snapshot>& unstable_snapshot() const { return unstable_snapshot_; }
  // Committed entries not yet handed to the host, starting after max(applied, snapshot).
  bool HasNextCommitted() const;
  void NextCommitted(uint64_t max_bytes, std::vector<Entry>* out) const;

  // Advance(): entries up to (index, term) are persisted.
  void StableTo(uint64_t index, uint64_t term);
  void StableSnapTo(uint64_t index);
  // Follower installing a snapshot: the log becomes just that snapshot.
  void Restore(Snapshot snap);

 private:
  const Storage* storage_;
  std::optional<Snapshot> unstable_snapshot_;
  std::vector<Entry> unstable_;
  uint64_t unstable_offset_;
  uint64_t committed_ = 0;
  uint64_t applied_ = 0;
};

}  // namespace herald::raft

#endif  // HERALD_LIBS_RAFT_RAFT_LOG_H_
