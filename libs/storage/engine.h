// One RocksDB database per core node, holding every Raft group's log and state and every
// partition's state in separate column families. All writes go through WriteBatches so that one
// pass of the Raft loop commits every group's output with one WAL write and one fsync (group
// commit, see docs/storage.md).
//
// Threading: Engine is thread-safe (RocksDB is); the objects built on it say who owns them.
#pragma once

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace herald::storage {

// Column families. Their keys are described in keys.h.
enum class Family : int {
  kRaftLog = 0,    // (group, index) -> entry
  kRaftState = 1,  // (group, kind) -> hard state / snapshot
  kPartition = 2,  // partition state machines: messages, indexes, sessions, ...
  kMeta = 3,       // node-level records (node id, cluster id, format version)
};
inline constexpr int kFamilyCount = 4;
const char* FamilyName(Family f);

struct EngineOptions {
  std::string path;
  // fsync the write-ahead log on every Write(). Off only for tests and benchmarks that say so.
  bool sync = true;
  // Shared LRU block cache for all column families.
  uint64_t block_cache_bytes = 256ull << 20;
  // Memtable size per column family before it is flushed.
  uint64_t write_buffer_bytes = 64ull << 20;
  int max_background_jobs = 2;
};

class Engine {
 public:
  // Opens (creating if missing) the database at options.path.
  static absl::StatusOr<std::unique_ptr<Engine>> Open(const EngineOptions& options);
  ~Engine();

  // Applies `batch` atomically: after a crash either all of it is visible or none. With
  // options.sync it is durable (WAL fsynced) when this returns OK.
  absl::Status Write(rocksdb::WriteBatch* batch);
  // Writes `batch` without waiting for the disk: it is readable at once, and durable after the
  // next SyncWal() that starts after this returns (or a later synced Write). Thread-safe.
  absl::Status WriteBuffered(rocksdb::WriteBatch* batch);
  // Makes every write that returned before this call durable (fsyncs the write-ahead log); a
  // no-op without options.sync. May run concurrently with writes. Thread-safe.
  absl::Status SyncWal();
  // Whether writes are made durable (options.sync).
  bool syncs() const { return options_.sync; }

  // Stages the deletion of keys in [begin, end) of family `f` into `batch`. Every range
  // deletion goes through here: `begin` must lie outside the family's memtable insert hints
  // (engine.cc, AppendHint), else RocksDB would corrupt its memtable; a begin inside them is a
  // programming error and aborts the process before anything is written.
  void StageDeleteRange(rocksdb::WriteBatch* batch, Family f, std::string_view begin,
                        std::string_view end) const;

  absl::StatusOr<std::optional<std::string>> Get(Family f, std::string_view key) const;
  std::unique_ptr<rocksdb::Iterator> NewIterator(Family f,
                                                 const rocksdb::ReadOptions& ro = {}) const;

  rocksdb::ColumnFamilyHandle* handle(Family f) const { return handles_[static_cast<int>(f)]; }
  rocksdb::DB* db() const { return db_.get(); }
  const EngineOptions& options() const { return options_; }

  // Approximate bytes on disk per column family (for metrics).
  uint64_t ApproximateSize(Family f) const;

 private:
  Engine() = default;
  EngineOptions options_;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  // Each family's memtable insert hint extractor (null: none), by Family.
  std::vector<std::shared_ptr<const rocksdb::SliceTransform>> hints_;
  rocksdb::WriteOptions write_options_;
};

// Turns a RocksDB status into an absl::Status with `context`.
absl::Status FromRocks(const rocksdb::Status& s, std::string_view context);

}  // namespace herald::storage
