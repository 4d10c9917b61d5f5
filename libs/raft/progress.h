// Progress (internal to libs/raft): what a leader knows about one follower's log, and the flow
// control that bounds what it sends it (etcd's "Progress" and "Inflights").
#ifndef HERALD_LIBS_RAFT_PROGRESS_H_
#define HERALD_LIBS_RAFT_PROGRESS_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "libs/raft/types.h"

namespace herald::raft {

// Ring buffer of the last index of each in-flight kAppend, bounded by max_inflight_msgs.
class Inflights {
 public:
  explicit Inflights(size_t capacity) : buf_(std::max<size_t>(capacity, 1)) {}
  bool Full() const { return count_ == buf_.size(); }
  size_t count() const { return count_; }
  void Add(uint64_t last_index) {
    buf_[(start_ + count_) % buf_.size()] = last_index;
    ++count_;
  }
  // Frees every message whose last index is <= index.
  void FreeLE(uint64_t index) {
    while (count_ > 0 && buf_[start_] <= index) {
      start_ = (start_ + 1) % buf_.size();
      --count_;
    }
  }
  void FreeFirstOne() {
    if (count_ == 0) return;
    start_ = (start_ + 1) % buf_.size();
    --count_;
  }
  void Reset() { start_ = count_ = 0; }

 private:
  std::vector<uint64_t> buf_;
  size_t start_ = 0;
  size_t count_ = 0;
};

struct Progress {
  enum class State : uint8_t {
    kProbe,      // one message at a time until we find where the logs match
    kReplicate,  // pipelining: next is advanced optimistically
    kSnapshot,   // a snapshot is in flight; nothing else is sent
  };

  Progress(NodeId id_in, size_t max_inflight) : id(id_in), inflights(max_inflight) {}

  NodeId id;
  uint64_t match = 0;
  uint64_t next = 1;
  State state = State::kProbe;
  bool probe_sent = false;        // kProbe: paused until a response or heartbeat response
  uint64_t pending_snapshot = 0;  // kSnapshot: index of the snapshot sent
  int snapshot_ticks = 0;         // kSnapshot: ticks since sent (retry after an election timeout)
  bool recent_active = false;     // check-quorum: heard from since the last check
  Inflights inflights;

  void ResetState(State s) {
    state = s;
    probe_sent = false;
    pending_snapshot = 0;
    snapshot_ticks = 0;
    inflights.Reset();
  }
  void BecomeProbe() {
    if (state == State::kSnapshot) {
      const uint64_t pending = pending_snapshot;
      ResetState(State::kProbe);
      next = std::max(match + 1, pending + 1);
    } else {
      ResetState(State::kProbe);
      next = match + 1;
    }
  }
  void BecomeReplicate() {
    ResetState(State::kReplicate);
    next = match + 1;
  }
  void BecomeSnapshot(uint64_t index) {
    ResetState(State::kSnapshot);
    pending_snapshot = index;
  }
  // A successful append response up to `index`. Returns whether match moved.
  bool MaybeUpdate(uint64_t index) {
    bool updated = false;
    if (match < index) {
      match = index;
      updated = true;
      probe_sent = false;
    }
    next = std::max(next, index + 1);
    return updated;
  }
  // A rejection of the append at `rejected`, with the follower's hint. Returns false if stale.
  bool MaybeDecrTo(uint64_t rejected, uint64_t match_hint) {
    if (state == State::kReplicate) {
      if (rejected <= match) return false;
      next = match + 1;
      return true;
    }
    if (next - 1 != rejected) return false;
    next = std::max(std::min(rejected, match_hint + 1), match + 1);
    probe_sent = false;
    return true;
  }
  bool IsPaused() const {
    switch (state) {
      case State::kProbe:
        return probe_sent;
      case State::kReplicate:
        return inflights.Full();
      case State::kSnapshot:
        return true;
    }
    return true;
  }
};

}  // namespace herald::raft

#endif  // HERALD_LIBS_RAFT_PROGRESS_H_
