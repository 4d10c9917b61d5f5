// Storage is the Raft core's read-only view of a node's durable log. The host writes to it (in
// the order given by the host contract in node.h); the core only reads.
//
// Index conventions: entries live at [FirstIndex(), LastIndex()]. FirstIndex()-1 is the index of
// the latest snapshot, whose term is still answered by Term(). Asking for anything below that
// returns a status for which IsCompacted() is true; asking above LastIndex() is Unavailable.
#ifndef HERALD_LIBS_RAFT_STORAGE_H_
#define HERALD_LIBS_RAFT_STORAGE_H_

#include <cstdint>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "libs/raft/types.h"

namespace herald::raft {

inline constexpr uint64_t kNoLimit = std::numeric_limits<uint64_t>::max();

absl::Status CompactedError();
bool IsCompacted(const absl::Status& s);

struct InitialState {
  HardState hard_state;
  ConfState conf_state;  // membership as of the latest snapshot
};

class Storage {
 public:
  virtual ~Storage() = default;

  virtual InitialState GetInitialState() const = 0;
  // Appends entries [lo, hi) to *out, stopping once their total ByteSize() would exceed
  // max_bytes (but always at least one entry when lo < hi).
  virtual absl::Status Entries(uint64_t lo, uint64_t hi, uint64_t max_bytes,
                               std::vector<Entry>* out) const = 0;
  virtual absl::StatusOr<uint64_t> Term(uint64_t index) const = 0;
  virtual uint64_t FirstIndex() const = 0;
  virtual uint64_t LastIndex() const = 0;
  // The latest snapshot. Unavailable means "not ready yet, ask again later".
  virtual absl::StatusOr<Snapshot> GetSnapshot() const = 0;
};

// An in-memory Storage for tests, the simulation and benchmarks. Not thread-safe: owned by the
// loop that owns the node.
class MemoryStorage : public Storage {
 public:
  MemoryStorage();

  // Storage.
  InitialState GetInitialState() const override;
  absl::Status Entries(uint64_t lo, uint64_t hi, uint64_t max_bytes,
                       std::vector<Entry>* out) const override;
  absl::StatusOr<uint64_t> Term(uint64_t index) const override;
  uint64_t FirstIndex() const override;
  uint64_t LastIndex() const override;
  absl::StatusOr<Snapshot> GetSnapshot() const override;

  // Writes, used by the host while processing a Ready.
  void SetHardState(const HardState& hs) { hard_state_ = hs; }
  const HardState& hard_state() const { return hard_state_; }
  // Replaces the whole log with `snap` (follower installing a leader's snapshot). Older than the
  // current snapshot is an error.
  absl::Status ApplySnapshot(Snapshot snap);
  // Appends entries, replacing any existing suffix that they overlap. Entries at or below the
  // snapshot index are ignored. The first entry must be at most LastIndex()+1.
  absl::Status Append(absl::Span<const Entry> entries);
  // Records a host-made snapshot at `index` (<= LastIndex()) and discards the log before it.
  absl::Status CreateSnapshot(uint64_t index, const ConfState& cs, std::string data);
  // Discards entries before `index` (keeping `index` as the new dummy). Compact does not change
  // the stored snapshot; callers normally use CreateSnapshot.
  absl::Status Compact(uint64_t index);

  // Convenience for tests and the simulation: a founding member's storage holds a snapshot at
  // index 1, term 1 carrying the initial membership (see docs/raft.md "Bootstrapping").
  static Snapshot BootstrapSnapshot(const ConfState& cs);

 private:
  HardState hard_state_;
  Snapshot snapshot_;
  // entries_[0] is a dummy whose index/term are the snapshot's.
  std::vector<Entry> entries_;
};

}  // namespace herald::raft

#endif  // HERALD_LIBS_RAFT_STORAGE_H_
