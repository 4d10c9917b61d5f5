#include "libs/storage/engine.h"

#include <gtest/gtest.h>
#include <rocksdb/slice_transform.h>

#include <filesystem>
#include <functional>

#include "libs/storage/keys.h"

namespace herald::storage {
namespace {

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/herald-engine-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    EngineOptions o;
    o.path = dir_;
    o.sync = false;
    auto e = Engine::Open(o);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
  }
  void TearDown() override {
    engine_.reset();
    std::filesystem::remove_all(dir_);
  }
  const rocksdb::SliceTransform* Hint(Family f) {
    return engine_->db()
        ->GetOptions(engine_->handle(f))
        .memtable_insert_with_hint_prefix_extractor.get();
  }
  // [4-byte partition]['m'][offset], as the partition state machine writes messages.
  static std::string MessageKey(uint32_t partition, uint64_t offset) {
    std::string k;
    PutU32(&k, partition);
    k.push_back('m');
    PutU64(&k, offset);
    return k;
  }
  std::vector<uint64_t> Positions(Family f, const std::string& lo, const std::string& hi) {
    std::vector<uint64_t> out;
    auto it = engine_->NewIterator(f);
    for (it->Seek(lo); it->Valid() && it->key().compare(hi) < 0; it->Next()) {
      std::string_view k(it->key().data(), it->key().size());
      k.remove_prefix(k.size() - 8);
      uint64_t v = 0;
      GetU64(&k, &v);
      out.push_back(v);
    }
    EXPECT_TRUE(it->status().ok());
    return out;
  }

  std::string dir_;
  std::unique_ptr<Engine> engine_;
};

// Appends use memtable insert hints; range deletions must begin outside the hints' domain
// (engine.cc, AppendHint): Herald's begin at position 0 of a stream or at a shorter prefix.
TEST_F(EngineTest, InsertHintsCoverAppendedKeysAndNeverRangeDeletionStarts) {
  const rocksdb::SliceTransform* log = Hint(Family::kRaftLog);
  const rocksdb::SliceTransform* part = Hint(Family::kPartition);
  ASSERT_NE(log, nullptr);
  ASSERT_NE(part, nullptr);
  EXPECT_TRUE(log->InDomain(RaftLogKey(7, 1)));
  EXPECT_EQ(log->Transform(RaftLogKey(7, 1)).ToString(), RaftLogKey(7, 1).substr(0, 8));
  EXPECT_FALSE(log->InDomain(RaftLogKey(7, 0)));
  EXPECT_FALSE(log->InDomain(RaftLogKey(7, 0).substr(0, 8)));
  EXPECT_TRUE(part->InDomain(MessageKey(3, 1)));
  EXPECT_EQ(part->Transform(MessageKey(3, 1)).ToString(), MessageKey(3, 1).substr(0, 5));
  EXPECT_FALSE(part->InDomain(MessageKey(3, 0)));
  EXPECT_FALSE(part->InDomain(MessageKey(3, 0).substr(0, 4)));
  EXPECT_FALSE(part->InDomain(MessageKey(3, 1) + "x"));
}

TEST_F(EngineTest, ARangeDeletionBeginningInsideTheHintsIsRefusedBeforeItIsWritten) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  rocksdb::WriteBatch b;
  engine_->StageDeleteRange(&b, Family::kRaftLog, RaftLogKey(7, 0), RaftLogKey(7, 9));
  engine_->StageDeleteRange(&b, Family::kPartition, MessageKey(3, 0), MessageKey(3, 9));
  EXPECT_EQ(b.Count(), 2u);
  EXPECT_DEATH(
      engine_->StageDeleteRange(&b, Family::kRaftLog, RaftLogKey(7, 1), RaftLogKey(7, 9)),
      "memtable insert hints");
  EXPECT_DEATH(
      engine_->StageDeleteRange(&b, Family::kPartition, MessageKey(3, 2), MessageKey(3, 9)),
      "memtable insert hints");
}

// Hinted appends and range deletions of the same streams interleave in one memtable (as log
// compaction and retention do); every read sees exactly what was written and not deleted.
TEST_F(EngineTest, HintedAppendsAndRangeDeletionsInterleaveInOneMemtable) {
  struct Stream {
    Family family;
    std::function<std::string(uint64_t)> key;
  };
  std::vector<Stream> streams;
  for (uint64_t g : {1, 2, 3}) {
    streams.push_back({Family::kRaftLog, [g](uint64_t i) { return RaftLogKey(g, i); }});
  }
  for (uint32_t p : {1, 2, 3}) {
    streams.push_back({Family::kPartition, [p](uint64_t i) { return MessageKey(p, i); }});
  }
  std::vector<uint64_t> first(streams.size(), 1), next(streams.size(), 1);
  for (int round = 0; round < 200; ++round) {
    rocksdb::WriteBatch b;
    for (size_t s = 0; s < streams.size(); ++s) {
      // A few appends to every stream per batch, as a Raft pass writes many groups.
      for (int k = 0; k < 1 + (round + static_cast<int>(s)) % 5; ++k) {
        ASSERT_TRUE(
            b.Put(engine_->handle(streams[s].family), streams[s].key(next[s]++), "v").ok());
      }
      if (round % 7 == static_cast<int>(s) % 7) {
        first[s] = first[s] + (next[s] - first[s]) / 2;
        engine_->StageDeleteRange(&b, streams[s].family, streams[s].key(0),
                                  streams[s].key(first[s]));
      }
      if (round % 13 == 5) {
        // A rewritten suffix (a follower replacing conflicting entries): not after the hint.
        next[s] -= std::min<uint64_t>(2, next[s] - first[s]);
      }
    }
    ASSERT_TRUE(engine_->Write(&b).ok());
  }
  for (size_t s = 0; s < streams.size(); ++s) {
    std::vector<uint64_t> want;
    for (uint64_t i = first[s]; i < next[s]; ++i) want.push_back(i);
    // Keys rewound past stay stored (a real log overwrites them); read up to next[s] only.
    EXPECT_EQ(Positions(streams[s].family, streams[s].key(0), streams[s].key(next[s])), want)
        << "stream " << s;
  }
}

}  // namespace
}  // namespace herald::storage
