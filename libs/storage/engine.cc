#include "libs/storage/engine.h"

#include <rocksdb/cache.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/slice_transform.h>
#include <rocksdb/table.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "libs/common/strings.h"

namespace herald::storage {

const char* FamilyName(Family f) {
  switch (f) {
    case Family::kRaftLog:
      return "raft_log";
    case Family::kRaftState:
      return "raft_state";
    case Family::kPartition:
      return "partition";
    case Family::kMeta:
      return "meta";
  }
  return "?";
}

absl::Status FromRocks(const rocksdb::Status& s, std::string_view context) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = StrCat(context, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsIOError() || s.IsBusy() || s.IsTryAgain()) return absl::UnavailableError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

namespace {

// Memtable insert hints (ColumnFamilyOptions::memtable_insert_with_hint_prefix_extractor) for a
// family whose hot keys are appended in order per stream: [stream prefix][position u64], with
// position 0 never stored. For a key in this transform's domain the memtable keeps the place of
// the stream's last insert, and the next key of the stream goes right after it without a search
// of the skiplist from the top (which profiling showed as the costliest part of a group-commit
// write). Keys out of the domain are inserted as usual.
//
// Only keys of exactly prefix + 8 bytes with a nonzero position are in the domain. That is
// also what keeps range deletions out of it, which matters: the RocksDB of Debian 12 (7.8)
// uses one hint table for a memtable's point keys and its range tombstones, and a tombstone
// inserted with a point key's hint corrupts the skiplist. Herald's range deletions therefore
// begin at position 0 of a stream (RaftLogKey(group, 0), a partition's message key for offset 0)
// or at a shorter prefix, and Engine::StageDeleteRange (which every range deletion uses) aborts
// on a begin key inside the domain.
class AppendHint final : public rocksdb::SliceTransform {
 public:
  AppendHint(const char* name, size_t prefix_bytes) : name_(name), prefix_bytes_(prefix_bytes) {}
  const char* Name() const override { return name_; }
  rocksdb::Slice Transform(const rocksdb::Slice& key) const override {
    return rocksdb::Slice(key.data(), prefix_bytes_);
  }
  bool InDomain(const rocksdb::Slice& key) const override {
    if (key.size() != prefix_bytes_ + 8) return false;
    for (size_t i = prefix_bytes_; i < key.size(); ++i) {
      if (key[i] != 0) return true;
    }
    return false;  // position 0: where range deletions begin
  }

 private:
  const char* name_;
  size_t prefix_bytes_;
};

rocksdb::ColumnFamilyOptions FamilyOptions(Family f, const EngineOptions& o,
                                           const std::shared_ptr<rocksdb::Cache>& cache) {
  rocksdb::ColumnFamilyOptions cf;
  cf.write_buffer_size = o.write_buffer_bytes;
  cf.max_write_buffer_number = 4;
  cf.level_compaction_dynamic_level_bytes = true;
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = cache;
  table.block_size = 16 * 1024;
  table.cache_index_and_filter_blocks = true;
  table.pin_l0_filter_and_index_blocks_in_cache = true;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  switch (f) {
    case Family::kRaftLog:
      // Entries live briefly: written, applied, then deleted by compaction of the log. They are
      // read back by key range; compressing them would cost CPU on the hot path for little.
      cf.compression = rocksdb::kNoCompression;
      // Keys start with the 8-byte group id; ranges never cross groups.
      cf.prefix_extractor.reset(rocksdb::NewFixedPrefixTransform(8));
      // [group u64][index u64]: each group's entries are appended in index order.
      cf.memtable_insert_with_hint_prefix_extractor =
          std::make_shared<AppendHint>("herald.raft-log-append", 8);
      break;
    case Family::kPartition:
      // Message payloads stay for the retention period: compress them (LZ4 is cheap; ZSTD for
      // the bottom level, where most old data sits).
      cf.compression = rocksdb::kLZ4Compression;
      cf.bottommost_compression = rocksdb::kZSTD;
      // [partition u32]['m'][offset u64]: each partition's messages are appended in offset
      // order. (Other 13-byte keys, of producers, wills, and 8-byte topics or client ids, get
      // hints of their own kind too, which is harmless: a hint is only where the search starts,
      // and RocksDB checks it before using it.)
      cf.memtable_insert_with_hint_prefix_extractor =
          std::make_shared<AppendHint>("herald.partition-append", 5);
      break;
    case Family::kRaftState:
    case Family::kMeta:
      cf.compression = rocksdb::kNoCompression;
      cf.write_buffer_size = 8 << 20;
      break;
  }
  cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  return cf;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Open(const EngineOptions& options) {
  std::unique_ptr<Engine> e(new Engine());
  e->options_ = options;
  rocksdb::DBOptions db;
  db.create_if_missing = true;
  db.create_missing_column_families = true;
  db.max_background_jobs = options.max_background_jobs;
  db.bytes_per_sync = 1 << 20;
  db.keep_log_file_num = 5;
  db.max_total_wal_size = 512ull << 20;
  // With sync on, a buffered write (WriteBuffered: the Raft host's group commit) leaves its WAL
  // record in RocksDB's buffer and SyncWal writes whatever accumulated with one write() before
  // the fsync: one system call per fsync instead of one per batch, and not on the host thread.
  // Synced writes (Write) still write and sync the buffer themselves.
  db.manual_wal_flush = options.sync;
  // Insert hints (AppendHint) work only without concurrent memtable inserts, which gain little
  // here anyway: nearly all writes are the Raft host's passes. (Other writers, such as a
  // snapshot being received, still write concurrently: RocksDB's write group leader then
  // inserts every writer's batch in turn.)
  db.allow_concurrent_memtable_write = false;
  // Point-in-time recovery: after a crash, replay the WAL up to the first torn record and stop,
  // so what is visible is always a prefix of committed batches.
  db.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  // Debian's librocksdb is built without NDEBUG, so its default log level is DEBUG: a line in
  // the LOG file for every WAL sync (hundreds a second under load).
  db.info_log_level = rocksdb::InfoLogLevel::INFO_LEVEL;
  auto cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  cfs.emplace_back(rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions());
  for (int i = 0; i < kFamilyCount; ++i) {
    Family f = static_cast<Family>(i);
    cfs.emplace_back(FamilyName(f), FamilyOptions(f, options, cache));
    e->hints_.push_back(cfs.back().options.memtable_insert_with_hint_prefix_extractor);
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db, options.path, cfs, &handles, &raw);
  if (!s.ok()) return FromRocks(s, StrCat("open ", options.path));
  e->db_.reset(raw);
  // handles[0] is the default family, which Herald does not use.
  e->db_->DestroyColumnFamilyHandle(handles[0]);
  e->handles_.assign(handles.begin() + 1, handles.end());
  e->write_options_.sync = options.sync;
  return e;
}

Engine::~Engine() {
  if (!db_) return;
  if (options_.sync) db_->FlushWAL(true);  // what buffered writes left in the WAL buffer
  for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
  db_->Close();
}

absl::Status Engine::Write(rocksdb::WriteBatch* batch) {
  if (batch->Count() == 0) return absl::OkStatus();
  return FromRocks(db_->Write(write_options_, batch), "write batch");
}

absl::Status Engine::WriteBuffered(rocksdb::WriteBatch* batch) {
  if (batch->Count() == 0) return absl::OkStatus();
  rocksdb::WriteOptions o = write_options_;
  o.sync = false;
  return FromRocks(db_->Write(o, batch), "write batch");
}

absl::Status Engine::SyncWal() {
  if (!options_.sync) return absl::OkStatus();
  return FromRocks(db_->FlushWAL(/*sync=*/true), "sync write-ahead log");
}

void Engine::StageDeleteRange(rocksdb::WriteBatch* batch, Family f, std::string_view begin,
                              std::string_view end) const {
  rocksdb::Slice b(begin.data(), begin.size());
  const rocksdb::SliceTransform* hint = hints_[static_cast<int>(f)].get();
  if (hint != nullptr && hint->InDomain(b)) {
    std::fprintf(stderr, "fatal: range deletion in %s begins at a key with memtable insert hints\n",
                 FamilyName(f));
    std::abort();
  }
  rocksdb::Status s = batch->DeleteRange(handle(f), b, rocksdb::Slice(end.data(), end.size()));
  if (!s.ok()) {
    std::fprintf(stderr, "fatal: staging a range deletion in %s: %s\n", FamilyName(f),
                 s.ToString().c_str());
    std::abort();
  }
}

absl::StatusOr<std::optional<std::string>> Engine::Get(Family f, std::string_view key) const {
  std::string value;
  rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), handle(f), rocksdb::Slice(key.data(), key.size()), &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  if (!s.ok()) return FromRocks(s, StrCat("get from ", FamilyName(f)));
  return std::optional<std::string>(std::move(value));
}

std::unique_ptr<rocksdb::Iterator> Engine::NewIterator(Family f,
                                                       const rocksdb::ReadOptions& ro) const {
  return std::unique_ptr<rocksdb::Iterator>(db_->NewIterator(ro, handle(f)));
}

uint64_t Engine::ApproximateSize(Family f) const {
  uint64_t size = 0;
  db_->GetIntProperty(handle(f), "rocksdb.total-sst-files-size", &size);
  uint64_t mem = 0;
  db_->GetIntProperty(handle(f), "rocksdb.cur-size-all-mem-tables", &mem);
  return size + mem;
}

}  // namespace herald::storage
