#include "libs/storage/raft_log_store.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "libs/common/random.h"
#include "libs/raft/storage.h"

namespace herald::storage {
namespace {

raft::Entry E(uint64_t index, uint64_t term, std::string data = "") {
  raft::Entry e;
  e.index = index;
  e.term = term;
  e.data = data.empty() ? "e" + std::to_string(index) + "t" + std::to_string(term) : data;
  return e;
}

class RaftLogStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/herald-storage-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    Reopen();
  }
  void TearDown() override {
    stores_.clear();
    engine_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Reopen() {
    stores_.clear();
    engine_.reset();
    EngineOptions o;
    o.path = dir_;
    o.sync = false;  // durability across kill -9 is crash_test's job
    auto e = Engine::Open(o);
    ASSERT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
  }
  RaftLogStore& Store(uint64_t group) {
    auto& s = stores_[group];
    if (!s) {
      auto loaded =
          RaftLogStore::Load(*engine_, group, RaftLogStore::Options{.tail_cache_bytes = 64});
      EXPECT_TRUE(loaded.ok()) << loaded.status();
      s = std::move(*loaded);
    }
    return *s;
  }
  void Write(rocksdb::WriteBatch* b) { ASSERT_TRUE(engine_->Write(b).ok()); }

  std::string dir_;
  std::unique_ptr<Engine> engine_;
  std::map<uint64_t, std::unique_ptr<RaftLogStore>> stores_;
};

TEST_F(RaftLogStoreTest, AppendedEntriesAndHardStateSurviveReopen) {
  rocksdb::WriteBatch b;
  ASSERT_TRUE(Store(7).Append({E(1, 1), E(2, 1), E(3, 2)}, &b).ok());
  Store(7).SetHardState({.term = 2, .vote = 3, .commit = 2}, &b);
  Write(&b);
  Reopen();
  RaftLogStore& s = Store(7);
  EXPECT_EQ(s.FirstIndex(), 1u);
  EXPECT_EQ(s.LastIndex(), 3u);
  EXPECT_EQ(s.GetInitialState().hard_state, (raft::HardState{2, 3, 2}));
  EXPECT_EQ(*s.Term(3), 2u);
  std::vector<raft::Entry> got;
  ASSERT_TRUE(s.Entries(1, 4, raft::kNoLimit, &got).ok());
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[2].data, "e3t2");
  EXPECT_EQ(Store(8).LastIndex(), 0u);  // groups do not see each other's entries
}

TEST_F(RaftLogStoreTest, CommitIndexIsWrittenWithTermAndVoteOrAfterAnInterval) {
  const uint64_t n = RaftLogStore::kCommitWriteInterval + 10;
  rocksdb::WriteBatch b;
  raft::Ready rd;
  for (uint64_t i = 1; i <= n; ++i) rd.entries.push_back(E(i, 1));
  rd.hard_state = raft::HardState{.term = 1, .vote = 1, .commit = 0};
  ASSERT_TRUE(Store(7).StageReady(rd, &b).ok());
  EXPECT_EQ(b.Count(), n + 1);  // the entries and the hard state (new term and vote)
  Write(&b);
  // A Ready carrying only `hs`: staged into `*b`.
  auto stage = [&](raft::HardState hs, rocksdb::WriteBatch* b) {
    raft::Ready r;
    r.hard_state = hs;
    ASSERT_TRUE(Store(7).StageReady(r, b).ok());
  };
  rocksdb::WriteBatch commit_only;
  stage(raft::HardState{.term = 1, .vote = 1, .commit = 3}, &commit_only);
  EXPECT_EQ(commit_only.Count(), 0u);
  EXPECT_EQ(Store(7).hard_state().commit, 3u);  // known in memory
  rocksdb::WriteBatch vote;
  stage(raft::HardState{.term = 2, .vote = 2, .commit = 3}, &vote);
  EXPECT_EQ(vote.Count(), 1u);  // a new term is written, with the commit index of the moment
  Write(&vote);
  rocksdb::WriteBatch commit_again;
  stage(raft::HardState{.term = 2, .vote = 2, .commit = 4}, &commit_again);
  EXPECT_EQ(commit_again.Count(), 0u);
  Reopen();
  EXPECT_EQ(Store(7).hard_state(), (raft::HardState{2, 2, 3}));
  // Far enough past the written commit index: written although term and vote are the same.
  rocksdb::WriteBatch far;
  stage(raft::HardState{.term = 2, .vote = 2, .commit = 3 + RaftLogStore::kCommitWriteInterval},
        &far);
  EXPECT_EQ(far.Count(), 1u);
  Write(&far);
  Reopen();
  EXPECT_EQ(Store(7).hard_state().commit, 3 + RaftLogStore::kCommitWriteInterval);
  // A snapshot covers committed entries: loading raises the commit index to it.
  rocksdb::WriteBatch snap;
  ASSERT_TRUE(Store(7).CreateSnapshot(n, raft::ConfState{{1, 2}, {}}, "state@n", &snap).ok());
  Write(&snap);
  Reopen();
  EXPECT_EQ(Store(7).hard_state(), (raft::HardState{2, 2, n}));
}

TEST_F(RaftLogStoreTest, ConflictingAppendReplacesTheSuffix) {
  rocksdb::WriteBatch b;
  ASSERT_TRUE(Store(1).Append({E(1, 1), E(2, 1), E(3, 1), E(4, 1)}, &b).ok());
  ASSERT_TRUE(Store(1).Append({E(3, 2)}, &b).ok());
  Write(&b);
  Reopen();
  EXPECT_EQ(Store(1).LastIndex(), 3u);
  EXPECT_EQ(*Store(1).Term(3), 2u);
  EXPECT_EQ(*Store(1).Term(2), 1u);
  EXPECT_FALSE(Store(1).Term(4).ok());
}

TEST_F(RaftLogStoreTest, AppendLeavingAHoleIsRefused) {
  rocksdb::WriteBatch b;
  ASSERT_TRUE(Store(1).Append({E(1, 1)}, &b).ok());
  EXPECT_FALSE(Store(1).Append({E(3, 1)}, &b).ok());
}

TEST_F(RaftLogStoreTest, SnapshotCompactsTheLogAndKeepsItsTerm) {
  rocksdb::WriteBatch b;
  std::vector<raft::Entry> es;
  for (uint64_t i = 1; i <= 10; ++i) es.push_back(E(i, i < 6 ? 1 : 2));
  ASSERT_TRUE(Store(2).Append(es, &b).ok());
  ASSERT_TRUE(Store(2).CreateSnapshot(6, raft::ConfState{{1, 2, 3}, {}}, "state@6", &b).ok());
  Write(&b);
  Reopen();
  RaftLogStore& s = Store(2);
  EXPECT_EQ(s.FirstIndex(), 7u);
  EXPECT_EQ(s.LastIndex(), 10u);
  EXPECT_EQ(*s.Term(6), 2u);
  EXPECT_TRUE(raft::IsCompacted(s.Term(5).status()));
  std::vector<raft::Entry> got;
  EXPECT_TRUE(raft::IsCompacted(s.Entries(6, 8, raft::kNoLimit, &got)));
  auto snap = s.GetSnapshot();
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(snap->data, "state@6");
  EXPECT_EQ(snap->metadata.conf_state.voters, (std::vector<raft::NodeId>{1, 2, 3}));
  EXPECT_EQ(s.GetInitialState().conf_state.voters.size(), 3u);
}

TEST_F(RaftLogStoreTest, ReceivedSnapshotReplacesTheWholeLog) {
  rocksdb::WriteBatch b;
  ASSERT_TRUE(Store(3).Append({E(1, 1), E(2, 1)}, &b).ok());
  raft::Snapshot snap;
  snap.metadata = {.index = 20, .term = 4, .conf_state = {{1}, {2}}};
  snap.data = "image";
  ASSERT_TRUE(Store(3).ApplySnapshot(snap, &b).ok());
  ASSERT_TRUE(Store(3).Append({E(21, 4)}, &b).ok());
  Write(&b);
  Reopen();
  EXPECT_EQ(Store(3).FirstIndex(), 21u);
  EXPECT_EQ(Store(3).LastIndex(), 21u);
  EXPECT_EQ(Store(3).GetInitialState().conf_state.learners, (std::vector<raft::NodeId>{2}));
  raft::Snapshot older;
  older.metadata.index = 5;
  EXPECT_FALSE(Store(3).ApplySnapshot(older, &b).ok());
}

TEST_F(RaftLogStoreTest, EntriesRespectsTheByteLimitButReturnsAtLeastOne) {
  rocksdb::WriteBatch b;
  std::vector<raft::Entry> es;
  for (uint64_t i = 1; i <= 20; ++i) es.push_back(E(i, 1, std::string(100, 'x')));
  ASSERT_TRUE(Store(4).Append(es, &b).ok());
  Write(&b);
  Reopen();  // read from RocksDB, not from the tail cache
  std::vector<raft::Entry> got;
  ASSERT_TRUE(Store(4).Entries(1, 21, 1, &got).ok());
  EXPECT_EQ(got.size(), 1u);
  got.clear();
  ASSERT_TRUE(Store(4).Entries(3, 21, 3 * 124, &got).ok());
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].index, 3u);
}

// The store must behave exactly like the in-memory reference Storage under any sequence of
// operations, before and after reopening.
TEST_F(RaftLogStoreTest, MatchesMemoryStorageUnderRandomOperations) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    SeededRandom rnd(seed);
    raft::MemoryStorage ref;
    uint64_t group = 100 + seed;
    uint64_t term = 1;
    for (int step = 0; step < 200; ++step) {
      rocksdb::WriteBatch b;
      RaftLogStore& s = Store(group);
      int op = static_cast<int>(rnd.Uniform(10));
      if (op < 6) {
        // Append 1-5 entries starting somewhere in (first-1, last+1].
        uint64_t back = std::min(rnd.Uniform(3), ref.LastIndex() + 1 - ref.FirstIndex());
        uint64_t lo = ref.LastIndex() + 1 - back;
        if (rnd.Bernoulli(0.2)) ++term;
        std::vector<raft::Entry> es;
        uint64_t n = 1 + rnd.Uniform(5);
        for (uint64_t i = 0; i < n; ++i) es.push_back(E(lo + i, term, "s" + std::to_string(step)));
        ASSERT_TRUE(ref.Append(es).ok());
        ASSERT_TRUE(s.Append(es, &b).ok());
      } else if (op < 8 && ref.LastIndex() >= ref.FirstIndex()) {
        uint64_t at = ref.FirstIndex() + rnd.Uniform(ref.LastIndex() - ref.FirstIndex() + 1);
        ASSERT_TRUE(ref.CreateSnapshot(at, raft::ConfState{{1}, {}}, "snap").ok());
        ASSERT_TRUE(s.CreateSnapshot(at, raft::ConfState{{1}, {}}, "snap", &b).ok());
      } else if (op == 8) {
        raft::HardState hs{term, rnd.Uniform(3), ref.LastIndex()};
        ref.SetHardState(hs);
        s.SetHardState(hs, &b);
      } else {
        Write(&b);
        Reopen();
        continue;
      }
      Write(&b);
      RaftLogStore& cur = Store(group);
      ASSERT_EQ(cur.FirstIndex(), ref.FirstIndex()) << "seed " << seed << " step " << step;
      ASSERT_EQ(cur.LastIndex(), ref.LastIndex()) << "seed " << seed << " step " << step;
      for (uint64_t i = ref.FirstIndex() - 1; i <= ref.LastIndex(); ++i) {
        ASSERT_EQ(*cur.Term(i), *ref.Term(i)) << "seed " << seed << " index " << i;
      }
      std::vector<raft::Entry> a, r;
      ASSERT_TRUE(cur.Entries(ref.FirstIndex(), ref.LastIndex() + 1, raft::kNoLimit, &a).ok());
      ASSERT_TRUE(ref.Entries(ref.FirstIndex(), ref.LastIndex() + 1, raft::kNoLimit, &r).ok());
      ASSERT_EQ(a.size(), r.size());
      for (size_t i = 0; i < a.size(); ++i) {
        ASSERT_EQ(a[i].data, r[i].data);
        ASSERT_EQ(a[i].term, r[i].term);
      }
    }
  }
}

}  // namespace
}  // namespace herald::storage
