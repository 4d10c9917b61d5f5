// The rules of the Raft paper (Ongaro & Ousterhout, "In Search of an Understandable Consensus
// Algorithm", 2014) and of Ongaro's dissertation (2014), one test per rule, each citing the
// section it checks. In the spirit of etcd-io/raft's raft_paper_test.go.
#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "libs/raft/node.h"
#include "libs/raft/raft_test_util.h"
#include "libs/raft/storage.h"

namespace herald::raft {
namespace {

using ::herald::raft::testing::Cluster;
using ::herald::raft::testing::MakeNode;
using ::herald::raft::testing::TestNode;

Message Msg(MessageType type, NodeId from, NodeId to, uint64_t term) {
  Message m;
  m.type = type;
  m.from = from;
  m.to = to;
  m.term = term;
  return m;
}

std::vector<Message> OfType(const std::vector<Message>& msgs, MessageType type) {
  std::vector<Message> out;
  for (const Message& m : msgs) {
    if (m.type == type) out.push_back(m);
  }
  return out;
}

void TickUntilCampaign(TestNode& t) {
  for (int i = 0; i < 100 && t.node->role() == Role::kFollower; ++i) t.node->Tick();
}

// Raft §5.1: "If a server receives a request with a stale term number, it rejects the request"
// and "if one server's current term is smaller than the other's, then it updates its current
// term to the larger value" and reverts to follower.
TEST(RaftPaperTest, FollowerAdoptsHigherTerm) {
  TestNode t = MakeNode(1, {1, 2, 3});
  ASSERT_TRUE(t.node->Step(Msg(MessageType::kHeartbeat, 2, 1, 5)).ok());
  EXPECT_EQ(t.node->term(), 5u);
  EXPECT_EQ(t.node->role(), Role::kFollower);
  EXPECT_EQ(t.node->leader(), 2u);
}

TEST(RaftPaperTest, LeaderAndCandidateRevertToFollowerOnHigherTerm) {
  Cluster c(3);
  c.Elect(1);
  ASSERT_EQ(c.node(1).role(), Role::kLeader);
  const uint64_t term = c.node(1).term();
  ASSERT_TRUE(c.node(1).Step(Msg(MessageType::kAppendResp, 2, 1, term + 3)).ok());
  EXPECT_EQ(c.node(1).role(), Role::kFollower);
  EXPECT_EQ(c.node(1).term(), term + 3);

  TestNode cand = MakeNode(1, {1, 2, 3});
  TickUntilCampaign(cand);
  ASSERT_EQ(cand.node->role(), Role::kCandidate);
  ASSERT_TRUE(cand.node->Step(Msg(MessageType::kHeartbeat, 3, 1, cand.node->term() + 1)).ok());
  EXPECT_EQ(cand.node->role(), Role::kFollower);
}

// Raft §5.1: stale-term requests are rejected; with pre-vote/check-quorum the stale leader is
// told the newer term so it steps down.
TEST(RaftPaperTest, StaleTermAppendIsRejectedWithNewerTerm) {
  TestNode t = MakeNode(1, {1, 2, 3}, {}, [](Config& c) { c.check_quorum = true; });
  ASSERT_TRUE(t.node->Step(Msg(MessageType::kHeartbeat, 2, 1, 5)).ok());
  t.Process();
  Message stale = Msg(MessageType::kAppend, 3, 1, 4);
  stale.index = 1;
  stale.log_term = 1;
  stale.entries.push_back(Entry{4, 2, EntryType::kNormal, "x"});
  ASSERT_TRUE(t.node->Step(stale).ok());
  EXPECT_EQ(t.node->last_index(), 1u);  // nothing appended
  auto out = t.Process();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].type, MessageType::kAppendResp);
  EXPECT_EQ(out[0].term, 5u);
}

// Raft §5.2: a follower that hears nothing for an election timeout becomes a candidate,
// increments its term, votes for itself and requests votes from all other servers.
TEST(RaftPaperTest, FollowerStartsElectionOnTimeout) {
  TestNode t = MakeNode(1, {1, 2, 3});
  const uint64_t term = t.node->term();
  TickUntilCampaign(t);
  EXPECT_EQ(t.node->role(), Role::kCandidate);
  EXPECT_EQ(t.node->term(), term + 1);
  EXPECT_EQ(t.node->vote(), 1u);
  auto out = t.Process();
  auto votes = OfType(out, MessageType::kVote);
  std::set<NodeId> to;
  for (const auto& m : votes) to.insert(m.to);
  EXPECT_EQ(to, (std::set<NodeId>{2, 3}));
  // The vote is durable before the requests leave (host contract).
  EXPECT_EQ(t.storage->hard_state().vote, 1u);
  EXPECT_EQ(t.storage->hard_state().term, term + 1);
}

// Raft §5.2: "Raft uses randomized election timeouts" in [T, 2T).
TEST(RaftPaperTest, ElectionTimeoutIsRandomizedWithinOneToTwoTimeouts) {
  std::set<int> seen;
  for (uint64_t seed = 1; seed <= 50; ++seed) {
    TestNode t = MakeNode(1, {1, 2, 3}, {}, [seed](Config& c) { c.random_seed = seed; });
    int ticks = 0;
    while (t.node->role() == Role::kFollower && ticks < 100) {
      t.node->Tick();
      ++ticks;
    }
    EXPECT_GE(ticks, 10);
    EXPECT_LT(ticks, 20);
    seen.insert(ticks);
  }
  EXPECT_GT(seen.size(), 3u);
}

// Raft §5.2: a candidate wins with votes from a majority, then sends heartbeats (appends).
TEST(RaftPaperTest, CandidateWinsWithMajority) {
  TestNode t = MakeNode(1, {1, 2, 3, 4, 5});
  TickUntilCampaign(t);
  t.Process();
  const uint64_t term = t.node->term();
  Message g = Msg(MessageType::kVoteResp, 2, 1, term);
  ASSERT_TRUE(t.node->Step(g).ok());
  EXPECT_EQ(t.node->role(), Role::kCandidate);  // 2 of 5
  g.from = 3;
  ASSERT_TRUE(t.node->Step(g).ok());
  EXPECT_EQ(t.node->role(), Role::kLeader);  // 3 of 5
  auto out = t.Process();
  EXPECT_EQ(OfType(out, MessageType::kAppend).size(), 4u);
}

// Raft §5.2: a candidate that loses (majority rejects) returns to follower.
TEST(RaftPaperTest, CandidateLosesWithMajorityRejecting) {
  TestNode t = MakeNode(1, {1, 2, 3});
  TickUntilCampaign(t);
  Message r = Msg(MessageType::kVoteResp, 2, 1, t.node->term());
  r.reject = true;
  ASSERT_TRUE(t.node->Step(r).ok());
  r.from = 3;
  ASSERT_TRUE(t.node->Step(r).ok());
  EXPECT_EQ(t.node->role(), Role::kFollower);
}

// Raft §5.2: "If the leader's term is at least as large as the candidate's current term, then
// the candidate recognizes the leader as legitimate and returns to follower state."
TEST(RaftPaperTest, CandidateStepsDownOnAppendFromLeaderOfSameTerm) {
  TestNode t = MakeNode(1, {1, 2, 3});
  TickUntilCampaign(t);
  Message a = Msg(MessageType::kAppend, 2, 1, t.node->term());
  a.index = 1;
  a.log_term = 1;
  ASSERT_TRUE(t.node->Step(a).ok());
  EXPECT_EQ(t.node->role(), Role::kFollower);
  EXPECT_EQ(t.node->leader(), 2u);
}

// Raft §5.2: "each server will vote for at most one candidate in a given term, on a
// first-come-first-served basis".
TEST(RaftPaperTest, VotesAtMostOncePerTerm) {
  TestNode t = MakeNode(1, {1, 2, 3});
  Message v = Msg(MessageType::kVote, 2, 1, 2);
  v.index = 1;
  v.log_term = 1;
  ASSERT_TRUE(t.node->Step(v).ok());
  v.from = 3;
  ASSERT_TRUE(t.node->Step(v).ok());
  v.from = 2;  // a duplicate of the first request is granted again
  ASSERT_TRUE(t.node->Step(v).ok());
  auto out = OfType(t.Process(), MessageType::kVoteResp);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_FALSE(out[0].reject);
  EXPECT_TRUE(out[1].reject);
  EXPECT_FALSE(out[2].reject);
  EXPECT_EQ(t.node->vote(), 2u);
}

// Raft §5.4.1: the voter denies its vote if its own log is more up-to-date than the candidate's
// (compare last terms, then lengths).
TEST(RaftPaperTest, VoterRejectsCandidateWithLessUpToDateLog) {
  struct Case {
    uint64_t cand_index, cand_term;
    bool granted;
  };
  // Voter's log: index 1 (term 1), then indices 2, 3 of term 2.
  const Case cases[] = {
      {3, 1, false},  // lower last term
      {2, 2, false},  // same term, shorter
      {3, 2, true},   // same term, same length
      {4, 2, true},   // same term, longer
      {2, 3, true},   // higher last term wins even if shorter
  };
  for (const Case& c : cases) {
    TestNode t = MakeNode(1, {1, 2, 3});
    Message a = Msg(MessageType::kAppend, 2, 1, 2);
    a.index = 1;
    a.log_term = 1;
    a.entries = {Entry{2, 2, EntryType::kNormal, ""}, Entry{2, 3, EntryType::kNormal, ""}};
    ASSERT_TRUE(t.node->Step(a).ok());
    t.Process();
    Message v = Msg(MessageType::kVote, 3, 1, 4);
    v.index = c.cand_index;
    v.log_term = c.cand_term;
    ASSERT_TRUE(t.node->Step(v).ok());
    auto out = OfType(t.Process(), MessageType::kVoteResp);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(!out[0].reject, c.granted) << c.cand_index << "/" << c.cand_term;
  }
}

// Raft §5.3: a leader appends a command to its log, replicates it, and once a majority stores
// it the entry is committed and applied everywhere. Raft §8: a new leader first commits a no-op.
TEST(RaftPaperTest, LeaderReplicatesAndCommitsOnMajority) {
  Cluster c(3);
  c.Elect(1);
  ASSERT_EQ(c.node(1).role(), Role::kLeader);
  ASSERT_TRUE(c.node(1).Propose("hello").ok());
  c.Stabilize();
  for (NodeId id : {1, 2, 3}) {
    ASSERT_FALSE(c[id].applied.empty());
    EXPECT_EQ(c[id].applied.front().data, "");  // the leader's no-op of its term
    EXPECT_EQ(c[id].applied.back().data, "hello");
    EXPECT_EQ(c.node(id).committed(), c.node(1).last_index());
  }
}

// Raft §5.3/§5.4: an entry stored on only a minority is not committed.
TEST(RaftPaperTest, EntryOnMinorityIsNotCommitted) {
  Cluster c(5);
  c.Elect(1);
  const uint64_t commit = c.node(1).committed();
  c.drop = [](const Message& m) { return m.to >= 3 || m.from >= 3; };
  ASSERT_TRUE(c.node(1).Propose("x").ok());
  c.Stabilize();
  EXPECT_EQ(c.node(1).committed(), commit);  // 2 of 5
  c.drop = [](const Message& m) { return m.to >= 4 || m.from >= 4; };
  c.TickAll(1);
  EXPECT_GT(c.node(1).committed(), commit);  // 3 of 5
}

// Raft §5.3: "If an existing entry conflicts with a new one (same index but different terms),
// delete the existing entry and all that follow it".
TEST(RaftPaperTest, FollowerTruncatesConflictingEntries) {
  TestNode t = MakeNode(1, {1, 2, 3});
  Message a = Msg(MessageType::kAppend, 2, 1, 2);
  a.index = 1;
  a.log_term = 1;
  a.entries = {Entry{2, 2, EntryType::kNormal, "a"}, Entry{2, 3, EntryType::kNormal, "b"},
               Entry{2, 4, EntryType::kNormal, "c"}};
  ASSERT_TRUE(t.node->Step(a).ok());
  t.Process();
  Message b = Msg(MessageType::kAppend, 3, 1, 3);
  b.index = 2;
  b.log_term = 2;
  b.entries = {Entry{3, 3, EntryType::kNormal, "B"}};
  ASSERT_TRUE(t.node->Step(b).ok());
  t.Process();
  EXPECT_EQ(t.node->last_index(), 3u);
  EXPECT_EQ(*t.node->LogTerm(3), 3u);
  std::vector<Entry> ents;
  ASSERT_TRUE(t.storage->Entries(2, 4, kNoLimit, &ents).ok());
  ASSERT_EQ(ents.size(), 2u);
  EXPECT_EQ(ents[0].data, "a");
  EXPECT_EQ(ents[1].data, "B");
}

// Raft §5.3: the consistency check: a follower rejects an append whose previous entry it does
// not hold, and the reply carries a hint so the leader skips a whole term at once (the
// optimization sketched at the end of §5.3).
TEST(RaftPaperTest, FollowerRejectsAppendWithMismatchedPrevAndHintsConflictTerm) {
  TestNode t = MakeNode(1, {1, 2, 3});
  Message a = Msg(MessageType::kAppend, 2, 1, 2);
  a.index = 1;
  a.log_term = 1;
  for (uint64_t i = 2; i <= 6; ++i) a.entries.push_back(Entry{2, i, EntryType::kNormal, ""});
  ASSERT_TRUE(t.node->Step(a).ok());
  t.Process();
  Message b = Msg(MessageType::kAppend, 3, 1, 4);
  b.index = 8;
  b.log_term = 3;
  ASSERT_TRUE(t.node->Step(b).ok());
  auto out = OfType(t.Process(), MessageType::kAppendResp);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(out[0].reject);
  EXPECT_EQ(out[0].reject_hint, 6u);  // our last index, whose term (2) <= 3
  EXPECT_EQ(out[0].log_term, 2u);
}

// Raft §5.3 / §5.4: a leader brings a follower with a divergent log (Figure 7-like) into line,
// overwriting its uncommitted suffix.
TEST(RaftPaperTest, LeaderRepairsDivergentFollowerLog) {
  Cluster c(3);
  c.Elect(1);
  // Node 1 leads term T and appends entries that only node 1 gets.
  c.drop = [](const Message& m) { return m.from == 1 || m.to == 1; };
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(c.node(1).Propose("stale").ok());
  c.Stabilize();
  // Node 2 wins a later term with nodes 2 and 3, writes different entries.
  c.Elect(2);
  ASSERT_EQ(c.node(2).role(), Role::kLeader);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(c.node(2).Propose("fresh").ok());
  c.Stabilize();
  c.drop = nullptr;
  c.TickAll(3);
  EXPECT_EQ(c.node(1).role(), Role::kFollower);
  EXPECT_EQ(c.node(1).last_index(), c.node(2).last_index());
  EXPECT_EQ(c.node(1).committed(), c.node(2).committed());
  EXPECT_EQ(c[1].applied.back().data, "fresh");
  for (const Entry& e : c[1].applied) EXPECT_NE(e.data, "stale");
}

// Raft §5.4.2 and Figure 8: with a follower that acknowledges only the old-term entry, the leader's
// commit index does not move although that entry is on a majority.
TEST(RaftPaperTest, OldTermEntryOnMajorityIsNotCommittedUntilCurrentTermEntryIs) {
  // Node 1's log: index 2 of term 2 (uncommitted). It becomes leader of term 3.
  TestNode t = MakeNode(1, {1, 2, 3});
  Message a = Msg(MessageType::kAppend, 2, 1, 2);
  a.index = 1;
  a.log_term = 1;
  a.entries = {Entry{2, 2, EntryType::kNormal, "old"}};
  ASSERT_TRUE(t.node->Step(a).ok());
  t.Process();
  TickUntilCampaign(t);
  ASSERT_EQ(t.node->role(), Role::kCandidate);
  const uint64_t term = t.node->term();
  ASSERT_TRUE(t.node->Step(Msg(MessageType::kVoteResp, 3, 1, term)).ok());
  ASSERT_EQ(t.node->role(), Role::kLeader);
  t.Process();
  ASSERT_EQ(t.node->last_index(), 3u);  // the no-op of term 3
  // Node 3 acknowledges index 2 only: the old entry is now on 2 of 3 nodes.
  Message r = Msg(MessageType::kAppendResp, 3, 1, term);
  r.index = 2;
  ASSERT_TRUE(t.node->Step(r).ok());
  EXPECT_EQ(t.node->committed(), 1u) << "Raft §5.4.2 violated: committed an old-term entry";
  r.index = 3;
  ASSERT_TRUE(t.node->Step(r).ok());
  EXPECT_EQ(t.node->committed(), 3u);  // index 2 commits indirectly (Log Matching)
}

// Dissertation §9.6: pre-vote does not bump the term of the pre-candidate or of the voters, so
// a partitioned node rejoining does not disrupt the cluster.
TEST(RaftPaperTest, PreVoteDoesNotIncreaseTerm) {
  TestNode t = MakeNode(1, {1, 2, 3}, {}, [](Config& c) { c.pre_vote = true; });
  const uint64_t term = t.node->term();
  TickUntilCampaign(t);
  EXPECT_EQ(t.node->role(), Role::kPreCandidate);
  EXPECT_EQ(t.node->term(), term);
  auto pre = OfType(t.Process(), MessageType::kPreVote);
  ASSERT_EQ(pre.size(), 2u);
  EXPECT_EQ(pre[0].term, term + 1);

  TestNode voter = MakeNode(2, {1, 2, 3}, {}, [](Config& c) { c.pre_vote = true; });
  Message req = pre[0];
  req.to = 2;
  ASSERT_TRUE(voter.node->Step(req).ok());
  EXPECT_EQ(voter.node->term(), term);
  EXPECT_EQ(voter.node->vote(), kNoNode);
  auto resp = OfType(voter.Process(), MessageType::kPreVoteResp);
  ASSERT_EQ(resp.size(), 1u);
  EXPECT_FALSE(resp[0].reject);
  ASSERT_TRUE(t.node->Step(resp[0]).ok());
  EXPECT_EQ(t.node->role(), Role::kCandidate);  // now the real election, term + 1
  EXPECT_EQ(t.node->term(), term + 1);
}

TEST(RaftPaperTest, PartitionedNodeWithPreVoteDoesNotDisruptLeaderOnRejoin) {
  Cluster c(3, [](Config& cfg) {
    cfg.pre_vote = true;
    cfg.check_quorum = true;
  });
  c.Elect(1);
  const uint64_t term = c.node(1).term();
  c.drop = [](const Message& m) { return m.to == 3 || m.from == 3; };
  c.TickAll(60);
  EXPECT_EQ(c.node(3).term(), term);  // kept pre-campaigning without bumping its term
  c.drop = nullptr;
  c.TickAll(5);
  EXPECT_EQ(c.node(1).role(), Role::kLeader);
  EXPECT_EQ(c.node(1).term(), term);
}

// Dissertation §4.2.3: while a follower hears from a leader it ignores vote requests, so a
// server removed from the configuration (or partitioned and back) cannot depose the leader.
TEST(RaftPaperTest, FollowerInLeaseIgnoresDisruptiveVoteRequests) {
  Cluster c(3, [](Config& cfg) { cfg.check_quorum = true; });
  c.Elect(1);
  const uint64_t term = c.node(1).term();
  Message v = Msg(MessageType::kVote, 3, 2, term + 5);
  v.index = c.node(1).last_index() + 10;
  v.log_term = term;
  ASSERT_TRUE(c.node(2).Step(v).ok());
  EXPECT_EQ(c.node(2).term(), term);
  EXPECT_TRUE(OfType(c[2].Process(), MessageType::kVoteResp).empty());
  // A transfer campaign is allowed through.
  v.context = std::string(kCampaignTransfer);
  ASSERT_TRUE(c.node(2).Step(v).ok());
  EXPECT_EQ(c.node(2).term(), term + 5);
}

// Raft §5.3: AppendEntries is idempotent; duplicated or stale (reordered) appends neither
// truncate nor reapply anything.
TEST(RaftPaperTest, DuplicateAndReorderedAppendsAreHarmless) {
  TestNode t = MakeNode(1, {1, 2, 3});
  Message a1 = Msg(MessageType::kAppend, 2, 1, 2);
  a1.index = 1;
  a1.log_term = 1;
  a1.entries = {Entry{2, 2, EntryType::kNormal, "a"}};
  Message a2 = Msg(MessageType::kAppend, 2, 1, 2);
  a2.index = 2;
  a2.log_term = 2;
  a2.entries = {Entry{2, 3, EntryType::kNormal, "b"}};
  a2.commit = 3;
  ASSERT_TRUE(t.node->Step(a1).ok());
  ASSERT_TRUE(t.node->Step(a2).ok());
  t.Process();
  ASSERT_TRUE(t.node->Step(a1).ok());  // stale duplicate arrives late
  ASSERT_TRUE(t.node->Step(a2).ok());
  auto out = OfType(t.Process(), MessageType::kAppendResp);
  EXPECT_EQ(t.node->last_index(), 3u);
  EXPECT_EQ(t.node->committed(), 3u);
  ASSERT_EQ(t.applied.size(), 2u);  // "a" and "b", once each
  for (const Message& r : out) EXPECT_FALSE(r.reject);
}

// Dissertation §6.2: with check-quorum a leader that has not heard from a majority within an
// election timeout steps down.
TEST(RaftPaperTest, CheckQuorumLeaderStepsDownWithoutQuorum) {
  Cluster c(3, [](Config& cfg) { cfg.check_quorum = true; });
  c.Elect(1);
  ASSERT_EQ(c.node(1).role(), Role::kLeader);
  c.drop = [](const Message& m) { return m.from == 1 || m.to == 1; };
  for (int i = 0; i < 25 && c.node(1).role() == Role::kLeader; ++i) {
    c.node(1).Tick();
    c.Stabilize();
  }
  EXPECT_EQ(c.node(1).role(), Role::kFollower);
}

// Dissertation §4.2.1: learners receive the log but neither vote nor campaign, and they do not
// count towards the commit quorum.
TEST(RaftPaperTest, LearnersDoNotVoteCampaignOrCountForCommit) {
  TestNode learner = MakeNode(3, {1, 2}, {3});
  for (int i = 0; i < 100; ++i) learner.node->Tick();
  EXPECT_EQ(learner.node->role(), Role::kFollower);
  EXPECT_TRUE(OfType(learner.Process(), MessageType::kVote).empty());

  TestNode cand = MakeNode(1, {1, 2}, {3});
  TickUntilCampaign(cand);
  auto votes = OfType(cand.Process(), MessageType::kVote);
  ASSERT_EQ(votes.size(), 1u);
  EXPECT_EQ(votes[0].to, 2u);  // not sent to the learner
  // A granted vote from the learner does not elect.
  ASSERT_TRUE(cand.node->Step(Msg(MessageType::kVoteResp, 3, 1, cand.node->term())).ok());
  EXPECT_EQ(cand.node->role(), Role::kCandidate);

  // Commit needs both voters; the learner's acknowledgement does not help.
  Cluster c(2);
  c.Elect(1);
  ASSERT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kAddLearner, 3}).ok());
  c.Stabilize();
  EXPECT_TRUE(c.node(1).conf_state().IsLearner(3));
  EXPECT_EQ(c.node(1).conf_state().voters, (std::vector<NodeId>{1, 2}));
}

// Raft §7: a follower that needs entries the leader has compacted receives the snapshot, then
// continues from the entries after it.
TEST(RaftPaperTest, LeaderSendsSnapshotToLaggingFollower) {
  Cluster c(3);
  c.Elect(1);
  c.drop = [](const Message& m) { return m.to == 3 || m.from == 3; };
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(c.node(1).Propose("e" + std::to_string(i)).ok());
  c.Stabilize();
  const uint64_t applied = c.node(1).applied();
  ASSERT_TRUE(c[1].storage->CreateSnapshot(applied, c.node(1).conf_state(), "image").ok());
  ASSERT_GT(c.node(1).first_index(), c.node(3).last_index() + 1);
  c.drop = nullptr;
  ASSERT_TRUE(c.node(1).Propose("after").ok());
  c.TickAll(3);
  EXPECT_EQ(c[3].installed.data, "image");
  EXPECT_EQ(c[3].installed.metadata.index, applied);
  EXPECT_EQ(c.node(3).committed(), c.node(1).committed());
  EXPECT_EQ(c[3].applied.back().data, "after");
}

// Dissertation §3.10: leadership transfer brings the target up to date, then sends TimeoutNow;
// the target wins the next term at once.
TEST(RaftPaperTest, LeadershipTransferToLaggingFollower) {
  Cluster c(3, [](Config& cfg) {
    cfg.pre_vote = true;
    cfg.check_quorum = true;
  });
  c.Elect(1);
  c.drop = [](const Message& m) { return m.to == 3; };
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(c.node(1).Propose("x").ok());
  c.Stabilize();
  c.drop = nullptr;
  ASSERT_TRUE(c.node(1).TransferLeadership(3).ok());
  EXPECT_FALSE(c.node(1).Propose("refused during transfer").ok());
  c.Stabilize();
  EXPECT_EQ(c.node(3).role(), Role::kLeader);
  EXPECT_EQ(c.node(1).role(), Role::kFollower);
  EXPECT_EQ(c.node(1).leader(), 3u);
}

TEST(RaftPaperTest, LeadershipTransferAbortsAfterElectionTimeout) {
  Cluster c(3);
  c.Elect(1);
  c.drop = [](const Message& m) { return m.to == 3 || m.from == 3; };
  ASSERT_TRUE(c.node(1).Propose("x").ok());
  c.Stabilize();
  ASSERT_TRUE(c.node(1).TransferLeadership(3).ok());
  EXPECT_EQ(c.node(1).transferee(), 3u);
  for (int i = 0; i < 10; ++i) c.node(1).Tick();
  EXPECT_EQ(c.node(1).transferee(), kNoNode);
  EXPECT_TRUE(c.node(1).Propose("accepted again").ok());
}

// Dissertation §6.4: ReadIndex answers only after the leader has confirmed with a heartbeat
// round that it is still leader; the read index is the commit index at request time.
TEST(RaftPaperTest, ReadIndexWaitsForQuorumConfirmation) {
  Cluster c(3);
  c.Elect(1);
  ASSERT_TRUE(c.node(1).Propose("w").ok());
  c.Stabilize();
  const uint64_t commit = c.node(1).committed();
  c.drop = [](const Message& m) { return m.from != 1; };  // no acknowledgements
  ASSERT_TRUE(c.node(1).ReadIndex("r1").ok());
  c.Stabilize();
  EXPECT_TRUE(c[1].read_states.empty());
  c.drop = nullptr;
  c.TickAll(1);  // the next heartbeat carries the context
  ASSERT_EQ(c[1].read_states.size(), 1u);
  EXPECT_EQ(c[1].read_states[0].context, "r1");
  EXPECT_EQ(c[1].read_states[0].index, commit);
}

TEST(RaftPaperTest, ReadIndexOnFollowerIsForwardedToLeader) {
  Cluster c(3);
  c.Elect(1);
  ASSERT_TRUE(c.node(2).ReadIndex("f").ok());
  c.Stabilize();
  ASSERT_EQ(c[2].read_states.size(), 1u);
  EXPECT_EQ(c[2].read_states[0].index, c.node(1).committed());
}

TEST(RaftPaperTest, ReadIndexOnNewLeaderWaitsForItsFirstCommit) {
  Cluster c(3);
  c.Elect(1);
  // Node 2 wins, but no append acknowledgement reaches it: its no-op stays uncommitted.
  c.drop = [](const Message& m) { return m.to == 1 || m.type == MessageType::kAppendResp; };
  c.Elect(2);
  ASSERT_EQ(c.node(2).role(), Role::kLeader);
  ASSERT_TRUE(c.node(2).ReadIndex("early").ok());
  c.TickAll(2);
  EXPECT_TRUE(c[2].read_states.empty());  // no-op not committed yet
  c.drop = nullptr;
  c.TickAll(2);
  ASSERT_EQ(c[2].read_states.size(), 1u);
  EXPECT_GE(c[2].read_states[0].index, c.node(2).committed() - 1);
}

// A read waiting for acknowledgements is answered when a membership change leaves a quorum of
// the remaining voters that acknowledged it (here: the leader alone).
TEST(RaftPaperTest, ReadIndexPendingWhenVotersShrinkIsAnswered) {
  Cluster c(2);
  c.Elect(1);
  const uint64_t commit = c.node(1).committed();
  c.drop = [](const Message& m) { return m.from == 2; };  // node 2 never acknowledges
  ASSERT_TRUE(c.node(1).ReadIndex("r").ok());
  c.Stabilize();
  EXPECT_TRUE(c[1].read_states.empty());
  ASSERT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kRemoveNode, 2}).ok());
  c.Stabilize();
  ASSERT_EQ(c[1].read_states.size(), 1u);
  EXPECT_EQ(c[1].read_states[0].context, "r");
  EXPECT_EQ(c[1].read_states[0].index, commit);
}

}  // namespace
}  // namespace herald::raft
