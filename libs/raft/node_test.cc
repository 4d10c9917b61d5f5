// Behaviour of Node beyond the paper's core rules: membership changes, flow control, restart,
// the Ready contract and the testing knobs.
#include "libs/raft/node.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "libs/raft/raft_test_util.h"
#include "libs/raft/testing_knobs.h"

namespace herald::raft {
namespace {

using ::herald::raft::testing::Cluster;
using ::herald::raft::testing::MakeNode;
using ::herald::raft::testing::TestConfig;
using ::herald::raft::testing::TestNode;

TEST(NodeTest, SingleVoterElectsItselfAndCommitsImmediately) {
  TestNode t = MakeNode(1, {1});
  for (int i = 0; i < 20 && t.node->role() != Role::kLeader; ++i) t.node->Tick();
  ASSERT_EQ(t.node->role(), Role::kLeader);
  ASSERT_TRUE(t.node->Propose("a").ok());
  t.Process();
  ASSERT_FALSE(t.applied.empty());
  EXPECT_EQ(t.applied.back().data, "a");
}

// Dissertation §10.2.1: with self_ack_on_persist the leader counts its own entry only once the
// host reports it durable, so its appends may leave before its own write.
TEST(NodeTest, LeaderCountsItselfOnlyOnceItsEntryIsDurable) {
  TestNode t = MakeNode(1, {1}, {}, [](Config& c) { c.self_ack_on_persist = true; });
  for (int i = 0; i < 20 && t.node->role() != Role::kLeader; ++i) t.node->Tick();
  ASSERT_EQ(t.node->role(), Role::kLeader);
  t.node->LocalPersisted(t.node->last_index());  // the leader's no-op
  t.Process();
  ASSERT_TRUE(t.node->Propose("a").ok());
  t.Process();  // appended and written, but not reported durable
  const uint64_t index = t.node->last_index();
  EXPECT_LT(t.node->committed(), index) << "committed before the leader's own write was durable";
  EXPECT_TRUE(t.applied.empty() || t.applied.back().data != "a");
  t.node->LocalPersisted(index);
  EXPECT_EQ(t.node->committed(), index);
  t.Process();
  ASSERT_FALSE(t.applied.empty());
  EXPECT_EQ(t.applied.back().data, "a");
}

TEST(NodeTest, ProposeOnFollowerIsRefused) {
  Cluster c(3);
  c.Elect(1);
  EXPECT_EQ(c.node(2).Propose("x").code(), absl::StatusCode::kFailedPrecondition);
}

TEST(NodeTest, VoteIsInSameReadyAsTheResponseThatDependsOnIt) {
  TestNode t = MakeNode(1, {1, 2, 3});
  Message v;
  v.type = MessageType::kVote;
  v.from = 2;
  v.to = 1;
  v.term = 3;
  v.index = 1;
  v.log_term = 1;
  ASSERT_TRUE(t.node->Step(v).ok());
  Ready rd = t.node->GetReady();
  ASSERT_TRUE(rd.hard_state.has_value());
  EXPECT_EQ(rd.hard_state->vote, 2u);
  EXPECT_EQ(rd.hard_state->term, 3u);
  ASSERT_EQ(rd.messages.size(), 1u);
  EXPECT_TRUE(rd.MustSync());
  t.node->Advance(rd);
}

TEST(NodeTest, RestartRestoresTermVoteCommitAndMembership) {
  Cluster c(3);
  c.Elect(1);
  ASSERT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kAddLearner, 4}).ok());
  ASSERT_TRUE(c.node(1).Propose("x").ok());
  c.Stabilize();
  const uint64_t term = c.node(2).term();
  const uint64_t commit = c.node(2).committed();
  Config cfg = TestConfig(2, c[2].storage.get());
  auto n = Node::Create(cfg);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ((*n)->term(), term);
  EXPECT_EQ((*n)->vote(), 1u);
  EXPECT_EQ((*n)->committed(), commit);
  EXPECT_TRUE((*n)->conf_state().IsLearner(4));
  // It re-delivers committed entries that the state machine (volatile) needs.
  Ready rd = (*n)->GetReady();
  EXPECT_EQ(rd.committed_entries.size(), commit - 1);
}

// Dissertation §4.1 and the single-server-change bug fix: the leader must commit an entry of its
// own term before proposing a change, and only one change may be uncommitted.
TEST(NodeTest, ConfChangeRefusedBeforeOwnTermCommitAndWhilePending) {
  Cluster c(3);
  c.drop = [](const Message& m) { return m.type == MessageType::kAppendResp; };
  c.Elect(1);
  ASSERT_EQ(c.node(1).role(), Role::kLeader);
  EXPECT_EQ(c.node(1).ProposeConfChange({ConfChangeType::kAddLearner, 4}).code(),
            absl::StatusCode::kFailedPrecondition);
  c.drop = nullptr;
  c.TickAll(1);
  ASSERT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kAddLearner, 4}).ok());
  EXPECT_EQ(c.node(1).ProposeConfChange({ConfChangeType::kAddLearner, 5}).code(),
            absl::StatusCode::kFailedPrecondition);
  c.Stabilize();
  EXPECT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kAddLearner, 5}).ok());
}

TEST(NodeTest, ConfigurationTakesEffectWhenAppended) {
  Cluster c(3);
  c.Elect(1);
  c.drop = [](const Message& m) { return m.from == 1; };
  ASSERT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kAddLearner, 4}).ok());
  EXPECT_TRUE(c.node(1).conf_state().IsLearner(4));  // uncommitted, already in effect
  EXPECT_NE(c.node(1).progress(4), nullptr);
}

TEST(NodeTest, LearnerJoinsCatchesUpThenIsPromotedAndVotes) {
  Cluster c(3);
  c.Elect(1);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(c.node(1).Propose("p").ok());
  c.Stabilize();
  ASSERT_TRUE(c[1].storage->CreateSnapshot(c.node(1).applied(), c.node(1).conf_state(), "s").ok());
  // Node 4 starts empty (not a founding member).
  TestNode n4;
  n4.storage = std::make_unique<MemoryStorage>();
  auto node = Node::Create(TestConfig(4, n4.storage.get()));
  ASSERT_TRUE(node.ok());
  n4.node = std::move(*node);
  c.nodes().emplace(4, std::move(n4));
  // Promotion of a non-learner is refused.
  EXPECT_FALSE(c.node(1).ProposeConfChange({ConfChangeType::kAddVoter, 4}).ok());
  ASSERT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kAddLearner, 4}).ok());
  c.TickAll(3);
  EXPECT_TRUE(c.node(4).conf_state().IsLearner(4));
  EXPECT_EQ(c.node(4).committed(), c.node(1).committed());
  EXPECT_EQ(c[4].installed.data, "s");
  ASSERT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kAddVoter, 4}).ok());
  c.TickAll(2);
  EXPECT_TRUE(c.node(4).conf_state().IsVoter(4));
  // With 4 voters, a quorum is 3: nodes 1 and 4 alone cannot commit.
  c.drop = [](const Message& m) { return m.to == 2 || m.to == 3 || m.from == 2 || m.from == 3; };
  const uint64_t commit = c.node(1).committed();
  ASSERT_TRUE(c.node(1).Propose("needs 3").ok());
  c.Stabilize();
  EXPECT_EQ(c.node(1).committed(), commit);
}

TEST(NodeTest, RemovedLeaderStepsDownAfterCommitAndOthersElectNewLeader) {
  Cluster c(3, [](Config& cfg) {
    cfg.pre_vote = true;
    cfg.check_quorum = true;
  });
  c.Elect(1);
  ASSERT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kRemoveNode, 1}).ok());
  c.Stabilize();
  EXPECT_EQ(c.node(1).role(), Role::kFollower);
  EXPECT_FALSE(c.node(2).conf_state().IsMember(1));
  c.TickAll(40);
  int leaders = 0;
  for (NodeId id : {2, 3}) leaders += c.node(id).role() == Role::kLeader;
  EXPECT_EQ(leaders, 1);
  EXPECT_NE(c.node(1).role(), Role::kLeader);
}

// Without broadcast_commit a commit sends no empty appends: followers learn the commit index
// from the next append that carries entries or from the next heartbeat. A committed membership
// change is still sent at once.
TEST(NodeTest, WithoutBroadcastCommitFollowersLearnCommitFromNextAppendOrHeartbeat) {
  for (bool broadcast : {true, false}) {
    SCOPED_TRACE(broadcast ? "broadcast_commit" : "no broadcast_commit");
    Cluster c(3, [&](Config& cfg) { cfg.broadcast_commit = broadcast; });
    c.Elect(1);
    ASSERT_TRUE(c.node(1).Propose("a").ok());
    c.delivered.clear();
    c.Stabilize();
    const uint64_t a = c.node(1).last_index();
    EXPECT_EQ(c.node(1).committed(), a);
    int empty_appends = 0;
    for (const Message& m : c.delivered) {
      empty_appends += m.type == MessageType::kAppend && m.entries.empty();
    }
    EXPECT_EQ(empty_appends, broadcast ? 2 : 0);
    EXPECT_EQ(c.node(2).committed(), broadcast ? a : a - 1);
    // The next entry carries the commit index of the first.
    ASSERT_TRUE(c.node(1).Propose("b").ok());
    c.Stabilize();
    EXPECT_GE(c.node(2).committed(), a);
    EXPECT_GE(c.node(3).committed(), a);
    // A heartbeat carries the rest.
    c.TickAll(1);
    c.Stabilize();
    EXPECT_EQ(c.node(2).committed(), a + 1);
    EXPECT_EQ(c.node(3).committed(), a + 1);
  }
}

TEST(NodeTest, WithoutBroadcastCommitAMembershipChangeIsStillSentAtOnce) {
  Cluster c(3, [](Config& cfg) { cfg.broadcast_commit = false; });
  c.Elect(1);
  ASSERT_TRUE(c.node(1).ProposeConfChange({ConfChangeType::kRemoveNode, 3}).ok());
  c.Stabilize();
  const uint64_t index = c.node(1).last_index();
  EXPECT_EQ(c.node(1).committed(), index);
  EXPECT_EQ(c.node(2).committed(), index) << "the follower was not told the change committed";
}

// Without broadcast_commit the transferee may not know the latest commit index: the leader
// sends it in an append right before kTimeoutNow.
TEST(NodeTest, WithoutBroadcastCommitTheTransfereeLearnsTheCommitBeforeItCampaigns) {
  Cluster c(3, [](Config& cfg) { cfg.broadcast_commit = false; });
  c.Elect(1);
  ASSERT_TRUE(c.node(1).Propose("a").ok());
  c.Stabilize();
  const uint64_t a = c.node(1).last_index();
  ASSERT_EQ(c.node(1).committed(), a);
  ASSERT_LT(c.node(2).committed(), a);
  c.delivered.clear();
  ASSERT_TRUE(c.node(1).TransferLeadership(2).ok());
  c.Stabilize();
  EXPECT_EQ(c.node(2).role(), Role::kLeader);
  bool told = false;
  bool timeout_now = false;
  for (const Message& m : c.delivered) {
    if (m.to != 2 || m.from != 1) continue;
    if (m.type == MessageType::kTimeoutNow) {
      timeout_now = true;
      break;
    }
    told = told || (m.type == MessageType::kAppend && m.commit >= a);
  }
  EXPECT_TRUE(timeout_now);
  EXPECT_TRUE(told) << "kTimeoutNow was not preceded by the commit index";
}

TEST(NodeTest, PipelineIsBoundedByMaxInflightMessages) {
  Cluster c(2, [](Config& cfg) {
    cfg.max_inflight_msgs = 3;
    cfg.max_size_per_msg = 1;  // one entry per message
  });
  c.Elect(1);
  c.drop = [](const Message& m) { return m.type == MessageType::kAppendResp; };
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(c.node(1).Propose("x").ok());
  c.delivered.clear();
  c.Stabilize();
  int appends = 0;
  for (const Message& m : c.delivered) appends += m.type == MessageType::kAppend;
  EXPECT_EQ(appends, 3);
  EXPECT_EQ(c.node(1).progress(2)->state, Progress::State::kReplicate);
  EXPECT_TRUE(c.node(1).progress(2)->inflights.Full());
}

TEST(NodeTest, AppendsAreBatchedUpToMaxSizePerMessage) {
  Cluster c(2, [](Config& cfg) { cfg.max_size_per_msg = 10 * (24 + 8); });
  c.Elect(1);
  for (int i = 0; i < 25; ++i) ASSERT_TRUE(c.node(1).Propose("12345678").ok());
  c.delivered.clear();
  c.Stabilize();
  std::vector<size_t> sizes;
  for (const Message& m : c.delivered) {
    if (m.type == MessageType::kAppend && !m.entries.empty()) sizes.push_back(m.entries.size());
  }
  EXPECT_EQ(sizes, (std::vector<size_t>{10, 10, 5}));
}

TEST(NodeTest, FastBacktrackingSkipsWholeTerms) {
  // Follower 2 has 50 entries of a stale term that the leader does not have; the leader finds
  // the match point in a couple of round trips instead of 50.
  Cluster c(3);
  c.Elect(2);
  c.drop = [](const Message& m) { return m.from == 2 || m.to == 2; };
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(c.node(2).Propose("stale").ok());
  c.Stabilize();
  c.Elect(1);
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(c.node(1).Propose("fresh").ok());
  c.Stabilize();
  c.drop = nullptr;
  c.delivered.clear();
  c.TickAll(2);
  int rejects = 0;
  for (const Message& m : c.delivered) rejects += m.type == MessageType::kAppendResp && m.reject;
  EXPECT_LE(rejects, 3);
  EXPECT_EQ(c.node(2).committed(), c.node(1).committed());
  EXPECT_EQ(c[2].applied.back().data, "fresh");
}

TEST(NodeTest, KnobCommitPreviousTermByCountingBreaksRule5_4_2) {
  TestNode t = MakeNode(1, {1, 2, 3}, {}, [](Config& c) {
    TestingKnobsAccess::CommitPreviousTermByCounting(&c.testing);
  });
  Message a;
  a.type = MessageType::kAppend;
  a.from = 2;
  a.to = 1;
  a.term = 2;
  a.index = 1;
  a.log_term = 1;
  a.entries = {Entry{2, 2, EntryType::kNormal, "old"}};
  ASSERT_TRUE(t.node->Step(a).ok());
  t.Process();
  for (int i = 0; i < 30 && t.node->role() == Role::kFollower; ++i) t.node->Tick();
  Message v;
  v.type = MessageType::kVoteResp;
  v.from = 3;
  v.to = 1;
  v.term = t.node->term();
  ASSERT_TRUE(t.node->Step(v).ok());
  ASSERT_EQ(t.node->role(), Role::kLeader);
  t.Process();
  Message r;
  r.type = MessageType::kAppendResp;
  r.from = 3;
  r.to = 1;
  r.term = t.node->term();
  r.index = 2;
  ASSERT_TRUE(t.node->Step(r).ok());
  EXPECT_EQ(t.node->committed(), 2u);  // the rule is broken on purpose
}

TEST(NodeTest, KnobBreakVoteLogCheckGrantsStaleCandidates) {
  TestNode t = MakeNode(1, {1, 2, 3}, {},
                        [](Config& c) { TestingKnobsAccess::BreakVoteLogCheck(&c.testing); });
  Message v;
  v.type = MessageType::kVote;
  v.from = 2;
  v.to = 1;
  v.term = 5;
  v.index = 0;
  v.log_term = 0;
  ASSERT_TRUE(t.node->Step(v).ok());
  Ready rd = t.node->GetReady();
  ASSERT_EQ(rd.messages.size(), 1u);
  EXPECT_FALSE(rd.messages[0].reject);
  t.node->Advance(rd);
}

TEST(NodeTest, MessagesBetweenGetReadyAndAdvanceGoIntoNextReady) {
  Cluster c(3);
  c.Elect(1);
  ASSERT_TRUE(c.node(1).Propose("a").ok());
  Ready rd = c.node(1).GetReady();
  EXPECT_FALSE(c.node(1).HasReady());  // one Ready at a time
  ASSERT_TRUE(c.node(1).Propose("b").ok());
  ASSERT_TRUE(c[1].storage->Append(rd.entries).ok());
  c.node(1).Advance(rd);
  ASSERT_TRUE(c.node(1).HasReady());
  Ready rd2 = c.node(1).GetReady();
  ASSERT_EQ(rd2.entries.size(), 1u);
  EXPECT_EQ(rd2.entries[0].data, "b");
  ASSERT_TRUE(c[1].storage->Append(rd2.entries).ok());
  c.node(1).Advance(rd2);
}

}  // namespace
}  // namespace herald::raft
