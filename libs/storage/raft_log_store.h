// A Raft group's durable log and state in the node's Engine: the raft::Storage that a group's
// raft::Node reads, and the writes its host makes while processing a Ready.
//
// Writes are staged into a caller-provided WriteBatch so that one loop pass can persist every
// group's Ready with a single Engine::Write (group commit). Staging updates this store's
// in-memory view at once; the host must write the batch (and fsync) before it sends the Ready's
// messages or calls Node::Advance, as the host contract in libs/raft/node.h requires. If that
// write fails the view is ahead of the disk: the host must stop (the node process exits), never
// carry on.
//
// Threading: owned by the loop that owns the group's node.
#pragma once

#include <rocksdb/write_batch.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "libs/raft/node.h"
#include "libs/raft/storage.h"
#include "libs/storage/engine.h"

namespace herald::storage {

class RaftLogStore final : public raft::Storage {
 public:
  // A hard state whose commit index moved this far past the one written is written even when
  // its term and vote did not change: after a restart, Raft hands out again at most about this
  // many applied entries (plus what the last pass committed).
  static constexpr uint64_t kCommitWriteInterval = 1024;

  struct Options {
    // Recently appended entries kept in memory, so replication to followers rarely reads disk.
    uint64_t tail_cache_bytes = 4 << 20;
  };

  // Loads group `group`'s state from `engine` (an empty store for a group never written).
  static absl::StatusOr<std::unique_ptr<RaftLogStore>> Load(Engine& engine, uint64_t group,
                                                            Options options);
  static absl::StatusOr<std::unique_ptr<RaftLogStore>> Load(Engine& engine, uint64_t group) {
    return Load(engine, group, Options());
  }

  // raft::Storage.
  raft::InitialState GetInitialState() const override;
  absl::Status Entries(uint64_t lo, uint64_t hi, uint64_t max_bytes,
                       std::vector<raft::Entry>* out) const override;
  absl::StatusOr<uint64_t> Term(uint64_t index) const override;
  uint64_t FirstIndex() const override { return snapshot_.metadata.index + 1; }
  uint64_t LastIndex() const override { return last_index_; }
  // The provider's snapshot when one is set (a host that makes snapshots of its state machine
  // on demand), else the stored one.
  absl::StatusOr<raft::Snapshot> GetSnapshot() const override {
    if (snapshot_provider_) return snapshot_provider_();
    return snapshot_;
  }
  void set_snapshot_provider(std::function<absl::StatusOr<raft::Snapshot>()> fn) {
    snapshot_provider_ = std::move(fn);
  }

  // Staged writes (see the class comment).
  // Appends entries, replacing the suffix of the log they overlap. Entries at or below the
  // snapshot index are skipped. The first entry must be at most LastIndex()+1.
  absl::Status Append(absl::Span<const raft::Entry> entries, rocksdb::WriteBatch* batch);
  void SetHardState(const raft::HardState& hs, rocksdb::WriteBatch* batch);
  // Replaces the whole log with a snapshot received from the leader.
  absl::Status ApplySnapshot(const raft::Snapshot& snapshot, rocksdb::WriteBatch* batch);
  // Records a snapshot the host made of its state machine at `index` (<= LastIndex(), already
  // applied) and discards the log up to it.
  absl::Status CreateSnapshot(uint64_t index, const raft::ConfState& cs, std::string data,
                              rocksdb::WriteBatch* batch);

  // Stages everything in `ready` that must be durable before its messages leave, in the host
  // contract's order: snapshot, entries, hard state. The hard state is written when its term or
  // vote changes, or when its commit index moved kCommitWriteInterval past the one written;
  // other changes of the commit index only update hard_state() (the commit index is volatile in
  // Raft; on load it is at least the snapshot index, and the host's state machine skips the
  // entries it applied already when Raft hands them out again).
  absl::Status StageReady(const raft::Ready& ready, rocksdb::WriteBatch* batch);

  uint64_t group() const { return group_; }
  const raft::HardState& hard_state() const { return hard_state_; }

 private:
  RaftLogStore(Engine& engine, uint64_t group, Options options)
      : engine_(engine), group_(group), options_(options) {}
  absl::Status LoadFromEngine();
  void TruncateTermRunsAfter(uint64_t index);
  void AddToTail(const raft::Entry& e);

  Engine& engine_;
  const uint64_t group_;
  const Options options_;
  raft::HardState hard_state_;
  // The hard state last written (or loaded).
  raft::HardState written_;
  raft::Snapshot snapshot_;  // index 0 when none
  std::function<absl::StatusOr<raft::Snapshot>()> snapshot_provider_;
  uint64_t last_index_ = 0;
  // Terms of the entries in (snapshot index, last_index_]: (first index of a run, term).
  std::vector<std::pair<uint64_t, uint64_t>> term_runs_;
  // The newest entries, contiguous and ending at last_index_.
  std::deque<raft::Entry> tail_;
  uint64_t tail_bytes_ = 0;
};

}  // namespace herald::storage
