#include "libs/raft/storage.h"

#include <vector>

#include "gtest/gtest.h"

namespace herald::raft {
namespace {

std::vector<Entry> Ents(uint64_t from, uint64_t to, uint64_t term) {
  std::vector<Entry> v;
  for (uint64_t i = from; i <= to; ++i) v.push_back(Entry{term, i, EntryType::kNormal, "d"});
  return v;
}

TEST(MemoryStorageTest, AppendReplacesOverlappingSuffix) {
  MemoryStorage s;
  ASSERT_TRUE(s.Append(Ents(1, 5, 1)).ok());
  ASSERT_TRUE(s.Append(Ents(3, 4, 2)).ok());
  EXPECT_EQ(s.LastIndex(), 4u);
  EXPECT_EQ(*s.Term(2), 1u);
  EXPECT_EQ(*s.Term(3), 2u);
  EXPECT_FALSE(s.Append(Ents(7, 8, 2)).ok());  // gap
}

TEST(MemoryStorageTest, CreateSnapshotCompactsLogAndKeepsTermOfSnapshotIndex) {
  MemoryStorage s;
  ASSERT_TRUE(s.Append(Ents(1, 10, 3)).ok());
  ASSERT_TRUE(s.CreateSnapshot(6, ConfState{{1, 2, 3}, {}}, "img").ok());
  EXPECT_EQ(s.FirstIndex(), 7u);
  EXPECT_EQ(*s.Term(6), 3u);
  EXPECT_TRUE(IsCompacted(s.Term(5).status()));
  std::vector<Entry> out;
  EXPECT_TRUE(IsCompacted(s.Entries(5, 8, kNoLimit, &out)));
  ASSERT_TRUE(s.Entries(7, 11, kNoLimit, &out).ok());
  EXPECT_EQ(out.size(), 4u);
  EXPECT_EQ(s.GetSnapshot()->data, "img");
  EXPECT_EQ(s.GetInitialState().conf_state.voters, (std::vector<NodeId>{1, 2, 3}));
  EXPECT_FALSE(s.CreateSnapshot(5, ConfState{}, "").ok());  // older than current
}

TEST(MemoryStorageTest, EntriesRespectsByteLimitButReturnsAtLeastOne) {
  MemoryStorage s;
  ASSERT_TRUE(s.Append(Ents(1, 10, 1)).ok());
  std::vector<Entry> out;
  ASSERT_TRUE(s.Entries(1, 11, 1, &out).ok());
  EXPECT_EQ(out.size(), 1u);
  out.clear();
  ASSERT_TRUE(s.Entries(1, 11, 3 * Ents(1, 1, 1)[0].ByteSize(), &out).ok());
  EXPECT_EQ(out.size(), 3u);
}

TEST(MemoryStorageTest, ApplySnapshotReplacesLog) {
  MemoryStorage s;
  ASSERT_TRUE(s.Append(Ents(1, 3, 1)).ok());
  Snapshot snap;
  snap.metadata.index = 20;
  snap.metadata.term = 4;
  ASSERT_TRUE(s.ApplySnapshot(snap).ok());
  EXPECT_EQ(s.FirstIndex(), 21u);
  EXPECT_EQ(s.LastIndex(), 20u);
  EXPECT_EQ(*s.Term(20), 4u);
  snap.metadata.index = 10;
  EXPECT_FALSE(s.ApplySnapshot(snap).ok());
}

TEST(ConfChangeTest, EncodeDecodeRoundTripsAndValidates) {
  ConfChange cc{ConfChangeType::kAddVoter, 0x0102030405060708ULL};
  auto d = DecodeConfChange(EncodeConfChange(cc));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, cc);
  EXPECT_FALSE(DecodeConfChange("short").ok());
  ConfState cs{{1, 2, 3}, {}};
  EXPECT_FALSE(ApplyConfChange({ConfChangeType::kAddVoter, 4}, &cs).ok());  // not a learner
  EXPECT_TRUE(ApplyConfChange({ConfChangeType::kAddLearner, 4}, &cs).ok());
  EXPECT_TRUE(ApplyConfChange({ConfChangeType::kAddVoter, 4}, &cs).ok());
  EXPECT_EQ(cs.voters, (std::vector<NodeId>{1, 2, 3, 4}));
  EXPECT_TRUE(ApplyConfChange({ConfChangeType::kRemoveNode, 1}, &cs).ok());
  EXPECT_EQ(cs.voters, (std::vector<NodeId>{2, 3, 4}));
  EXPECT_FALSE(ApplyConfChange({ConfChangeType::kRemoveNode, 1}, &cs).ok());
}

}  // namespace
}  // namespace herald::raft
