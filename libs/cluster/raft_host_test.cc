#include "libs/cluster/raft_host.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <future>
#include <thread>

#include "libs/cluster/local_transport.h"
#include "libs/storage/keys.h"

namespace herald::cluster {
namespace {

using namespace std::chrono_literals;

constexpr GroupId kGroup = 1;

std::string PublishCommand(const std::string& topic, const std::string& payload, uint64_t producer,
                           uint64_t seq) {
  v1::PartitionCommand c;
  c.set_proposed_at_unix_ms(1000);
  v1::Message* m = c.mutable_publish()->add_messages();
  m->set_topic(topic);
  m->set_payload(payload);
  m->set_producer_id(producer);
  m->set_sequence(seq);
  return c.SerializeAsString();
}

// One core node: its own database and host, attached to the shared in-process network.
struct TestNode {
  raft::NodeId id;
  std::string dir;
  std::unique_ptr<storage::Engine> engine;
  std::unique_ptr<Transport> transport;
  std::unique_ptr<RaftHost> host;
};

class RaftHostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/herald-cluster-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
  }
  void TearDown() override {
    for (auto& [id, n] : nodes_) StopNode(id);
    std::filesystem::remove_all(root_);
  }

  void StartNode(raft::NodeId id, std::vector<raft::NodeId> voters, uint64_t compact_threshold = 0,
                 uint64_t keep = 0, int election_ticks = 10) {
    TestNode& n = nodes_[id];
    n.id = id;
    n.dir = root_ + "/node" + std::to_string(id);
    auto e = storage::Engine::Open({.path = n.dir});
    ASSERT_TRUE(e.ok()) << e.status();
    n.engine = std::move(*e);
    n.transport = net_.TransportFor(id);
    RaftHostOptions o;
    o.node_id = id;
    o.tick = 10ms;
    o.election_ticks = election_ticks;
    o.log_compact_threshold = compact_threshold;
    o.log_keep_entries = keep;
    o.retention_max_age = retention_max_age_;
    o.retention_check_interval = 20ms;
    n.host = std::make_unique<RaftHost>(*n.engine, *n.transport, o);
    ASSERT_TRUE(n.host->AddPartitionGroup(kGroup, 0, voters).ok());
    net_.Attach(id, n.host.get());
    ASSERT_TRUE(n.host->Start().ok());
  }

  // A crash as the rest of the cluster sees it: the node vanishes. (The process-level kill -9
  // is tested with real processes; here the database is closed and reopened.)
  void StopNode(raft::NodeId id) {
    TestNode& n = nodes_[id];
    if (!n.host) return;
    net_.Detach(id);
    n.host->Stop();
    n.host.reset();
    n.engine.reset();
  }

  raft::NodeId WaitForLeader(std::chrono::milliseconds timeout = 10s) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      for (auto& [id, n] : nodes_) {
        if (!n.host) continue;
        for (const GroupStatus& s : n.host->Status()) {
          if (s.role == raft::Role::kLeader) return id;
        }
      }
      std::this_thread::sleep_for(10ms);
    }
    return 0;
  }

  ProposalResult ProposeAndWait(raft::NodeId on, std::string cmd) {
    std::promise<ProposalResult> p;
    auto f = p.get_future();
    nodes_[on].host->Propose(kGroup, std::move(cmd), [&p](ProposalResult r) { p.set_value(r); });
    if (f.wait_for(10s) != std::future_status::ready) {
      return {absl::DeadlineExceededError("wait"), 0, {}};
    }
    return f.get();
  }

  // Publishes through whichever node leads, retrying with the same idempotency key.
  uint64_t PublishWithRetry(const std::string& payload, uint64_t producer, uint64_t seq) {
    for (int attempt = 0; attempt < 100; ++attempt) {
      raft::NodeId leader = WaitForLeader();
      if (leader == 0) continue;
      ProposalResult r = ProposeAndWait(leader, PublishCommand("t", payload, producer, seq));
      if (r.status.ok()) {
        EXPECT_EQ(r.apply.publish.size(), 1u);
        EXPECT_FALSE(r.apply.publish[0].has_error() &&
                     r.apply.publish[0].error().code() != v1::ERROR_CODE_DUPLICATE);
        return r.apply.publish[0].offset();
      }
      std::this_thread::sleep_for(20ms);
    }
    ADD_FAILURE() << "could not publish " << payload;
    return 0;
  }

  // Offsets of the first stored message and of the last, on `id`.
  std::pair<uint64_t, uint64_t> Offsets(raft::NodeId id) {
    std::pair<uint64_t, uint64_t> out;
    nodes_[id].host->WithPartition(kGroup, [&](broker::PartitionStateMachine& sm) {
      out = {sm.state().first_offset(), sm.last_offset()};
    });
    return out;
  }

  std::vector<std::string> ReadAll(raft::NodeId id) {
    std::vector<std::string> out;
    nodes_[id].host->WithPartition(kGroup, [&](broker::PartitionStateMachine& sm) {
      auto f = sm.Fetch(0, 0, {"#"}, 2000, {.max_messages = 100000, .max_bytes = 1ull << 30});
      ASSERT_TRUE(f.ok());
      for (auto& m : f->messages) out.push_back(m.payload());
    });
    return out;
  }

  bool WaitApplied(raft::NodeId id, uint64_t index, std::chrono::milliseconds timeout = 10s) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      auto st = nodes_[id].host->Status();
      if (!st.empty() && st[0].applied >= index) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }

  // Three replicas with one message ("before") from `producer`, then idle until every replica
  // is quiesced. Returns the leader, or 0 (with the failure recorded).
  raft::NodeId StartQuiescedTrio(uint64_t producer);

  std::string root_;
  std::chrono::milliseconds retention_max_age_{0};
  LocalNetwork net_;
  std::map<raft::NodeId, TestNode> nodes_;
};

TEST_F(RaftHostTest, SingleReplicaCommitsAndAppliesProposals) {
  StartNode(1, {1});
  ASSERT_EQ(WaitForLeader(), 1u);
  for (uint64_t i = 1; i <= 20; ++i) {
    ProposalResult r = ProposeAndWait(1, PublishCommand("a/b", "m" + std::to_string(i), 5, i));
    ASSERT_TRUE(r.status.ok()) << r.status;
    ASSERT_EQ(r.apply.publish.size(), 1u);
    EXPECT_EQ(r.apply.publish[0].offset(), i);
  }
  EXPECT_EQ(ReadAll(1).size(), 20u);
  // Restart: the log, the applied state and the leadership come back.
  StopNode(1);
  StartNode(1, {1});
  ASSERT_EQ(WaitForLeader(), 1u);
  ProposalResult r = ProposeAndWait(1, PublishCommand("a/b", "after", 5, 21));
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.apply.publish[0].offset(), 21u);
  EXPECT_EQ(ReadAll(1).size(), 21u);
}

TEST_F(RaftHostTest, FollowerRefusesProposalsWithALeaderHint) {
  for (raft::NodeId id : {1, 2, 3}) StartNode(id, {1, 2, 3});
  raft::NodeId leader = WaitForLeader();
  ASSERT_NE(leader, 0u);
  raft::NodeId follower = leader == 1 ? 2 : 1;
  // The follower may need a heartbeat to learn who leads.
  ProposalResult r;
  for (int i = 0; i < 50; ++i) {
    r = ProposeAndWait(follower, PublishCommand("t", "x", 0, 0));
    if (r.leader_hint != 0) break;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(absl::IsUnavailable(r.status)) << r.status;
  EXPECT_EQ(r.leader_hint, leader);
}

TEST_F(RaftHostTest, ThreeReplicasSurviveTheLeadersCrashWithoutLosingAcknowledgedMessages) {
  for (raft::NodeId id : {1, 2, 3}) StartNode(id, {1, 2, 3});
  std::vector<std::string> acked;
  uint64_t seq = 0;
  for (int i = 0; i < 50; ++i) {
    std::string p = "before-" + std::to_string(i);
    ASSERT_NE(PublishWithRetry(p, 42, ++seq), 0u);
    acked.push_back(p);
  }
  raft::NodeId old_leader = WaitForLeader();
  ASSERT_NE(old_leader, 0u);
  auto t0 = std::chrono::steady_clock::now();
  StopNode(old_leader);
  for (int i = 0; i < 50; ++i) {
    std::string p = "after-" + std::to_string(i);
    ASSERT_NE(PublishWithRetry(p, 42, ++seq), 0u);
    acked.push_back(p);
    if (i == 0) {
      std::printf("first publish after the leader's crash acknowledged in %lld ms\n",
                  static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                             std::chrono::steady_clock::now() - t0)
                                             .count()));
    }
  }
  // The crashed node comes back and catches up.
  StartNode(old_leader, {1, 2, 3});
  raft::NodeId leader = WaitForLeader();
  uint64_t target = 0;
  for (const auto& s : nodes_[leader].host->Status()) target = s.applied;
  for (raft::NodeId id : {1, 2, 3}) {
    ASSERT_TRUE(WaitApplied(id, target)) << "node " << id << " did not catch up";
    // Every acknowledged message exactly once, in order, on every replica.
    EXPECT_EQ(ReadAll(id), acked) << "node " << id;
  }
}

TEST_F(RaftHostTest, LeadershipTransferMovesTheLeader) {
  for (raft::NodeId id : {1, 2, 3}) StartNode(id, {1, 2, 3});
  raft::NodeId leader = WaitForLeader();
  ASSERT_NE(leader, 0u);
  ASSERT_NE(PublishWithRetry("x", 1, 1), 0u);
  raft::NodeId target = leader == 3 ? 1 : 3;
  nodes_[leader].host->TransferLeadership(kGroup, target);
  auto deadline = std::chrono::steady_clock::now() + 5s;
  raft::NodeId now_leader = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    now_leader = WaitForLeader();
    if (now_leader == target) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(now_leader, target);
}

TEST_F(RaftHostTest, LogIsCompactedBehindEveryReplicaAndNothingIsLost) {
  for (raft::NodeId id : {1, 2, 3})
    StartNode(id, {1, 2, 3}, /*compact_threshold=*/100, /*keep=*/20);
  std::vector<std::string> acked;
  for (uint64_t i = 1; i <= 400; ++i) {
    std::string p = "m" + std::to_string(i);
    ASSERT_NE(PublishWithRetry(p, 9, i), 0u);
    acked.push_back(p);
  }
  raft::NodeId leader = WaitForLeader();
  uint64_t target = nodes_[leader].host->Status()[0].applied;
  for (raft::NodeId id : {1, 2, 3}) {
    ASSERT_TRUE(WaitApplied(id, target));
    auto st = nodes_[id].host->Status()[0];
    EXPECT_GT(st.first_index, 200u) << "node " << id << " did not compact its log";
    EXPECT_EQ(ReadAll(id), acked) << "node " << id;
  }
  // A restarted replica reloads the compacted log and keeps serving.
  raft::NodeId follower = leader == 1 ? 2 : 1;
  StopNode(follower);
  for (uint64_t i = 401; i <= 450; ++i) {
    std::string p = "m" + std::to_string(i);
    ASSERT_NE(PublishWithRetry(p, 9, i), 0u);
    acked.push_back(p);
  }
  StartNode(follower, {1, 2, 3}, 100, 20);
  leader = WaitForLeader();
  target = nodes_[leader].host->Status()[0].applied;
  ASSERT_TRUE(WaitApplied(follower, target));
  EXPECT_EQ(ReadAll(follower), acked);
}

TEST_F(RaftHostTest, LeaderTrimsMessagesOlderThanTheRetentionAgeOnEveryReplica) {
  retention_max_age_ = 1h;
  for (raft::NodeId id : {1, 2, 3}) StartNode(id, {1, 2, 3});
  // Published "in 1970" (PublishCommand's proposal time): older than an hour.
  for (uint64_t i = 1; i <= 5; ++i) PublishWithRetry("old" + std::to_string(i), 7, i);
  // Published now: kept.
  v1::PartitionCommand c;
  c.set_proposed_at_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count());
  v1::Message* m = c.mutable_publish()->add_messages();
  m->set_topic("t");
  m->set_payload("new");
  ProposalResult r = ProposeAndWait(WaitForLeader(), c.SerializeAsString());
  ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_EQ(r.apply.publish.size(), 1u);
  const uint64_t kept = r.apply.publish[0].offset();
  for (raft::NodeId id : {1, 2, 3}) {
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (Offsets(id).first != kept && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(10ms);
    }
    EXPECT_EQ(Offsets(id), std::make_pair(kept, kept)) << "node " << id;
    EXPECT_EQ(ReadAll(id), std::vector<std::string>{"new"}) << "node " << id;
    nodes_[id].host->WithPartition(kGroup, [&](broker::PartitionStateMachine& sm) {
      EXPECT_EQ(sm.state().trimmed_messages(), 5u);
      EXPECT_EQ(sm.state().message_count(), 1u);
    });
  }
}

TEST_F(RaftHostTest, HandOffLeadershipLeavesNoGroupLeaderless) {
  for (raft::NodeId id : {1, 2, 3}) StartNode(id, {1, 2, 3});
  raft::NodeId leader = WaitForLeader();
  ASSERT_NE(leader, 0u);
  ASSERT_NE(PublishWithRetry("x", 1, 1), 0u);
  EXPECT_EQ(nodes_[leader].host->HandOffLeadership(3s), 0);
  // Another node leads at once, without waiting for an election timeout.
  raft::NodeId next = 0;
  for (auto& [id, n] : nodes_) {
    if (id == leader) continue;
    for (const auto& st : n.host->Status()) {
      if (st.role == raft::Role::kLeader) next = id;
    }
  }
  EXPECT_NE(next, 0u);
  EXPECT_NE(next, leader);
}

TEST_F(RaftHostTest, PublishProposalsArrivingTogetherShareOneEntryAndKeepTheirOwnResults) {
  StartNode(1, {1});
  ASSERT_EQ(WaitForLeader(), 1u);
  ASSERT_TRUE(ProposeAndWait(1, PublishCommand("t", "first", 3, 1)).status.ok());
  const uint64_t last_before = nodes_[1].host->Status()[0].last_index;
  // Hold the host's thread so that the three proposals reach it together.
  std::promise<void> gate, entered;
  std::shared_future<void> open = gate.get_future().share();
  nodes_[1].host->RunTask([open, &entered] {
    entered.set_value();
    open.wait();
  });
  entered.get_future().wait();  // the host is inside the task: what follows queues together
  std::vector<std::promise<ProposalResult>> done(3);
  uint64_t seq = 1;
  for (size_t i = 0; i < 3; ++i) {
    v1::PartitionCommand c;
    c.set_proposed_at_unix_ms(1000);
    for (size_t k = 0; k <= i; ++k) {
      v1::Message* m = c.mutable_publish()->add_messages();
      m->set_topic("t" + std::to_string(i));
      m->set_payload("p" + std::to_string(i) + "." + std::to_string(k));
      m->set_producer_id(3);
      m->set_sequence(++seq);
    }
    nodes_[1].host->ProposePublish(kGroup, c.SerializeAsString(), i + 1,
                                   [&done, i](ProposalResult r) { done[i].set_value(r); });
  }
  gate.set_value();
  uint64_t offset = 1;
  for (size_t i = 0; i < 3; ++i) {
    auto f = done[i].get_future();
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
    ProposalResult r = f.get();
    ASSERT_TRUE(r.status.ok()) << r.status;
    ASSERT_EQ(r.apply.publish.size(), i + 1) << "proposal " << i;
    for (const v1::PublishResult& pr : r.apply.publish) EXPECT_EQ(pr.offset(), ++offset);
  }
  EXPECT_EQ(nodes_[1].host->Status()[0].last_index, last_before + 1)
      << "the three proposals were not merged into one entry";
  EXPECT_EQ(ReadAll(1),
            (std::vector<std::string>{"first", "p0.0", "p1.0", "p1.1", "p2.0", "p2.1", "p2.2"}));
}

// The records of a streamed snapshot of kGroup (the transport's format), read from `engine`.
std::vector<std::string> SnapshotRecords(storage::Engine& engine) {
  std::vector<std::string> out;
  const std::string prefix = GroupStatePrefix(kGroup);
  auto it = engine.NewIterator(storage::Family::kPartition);
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    std::string r;
    storage::PutU32(&r, static_cast<uint32_t>(it->key().size()));
    r.append(it->key().data(), it->key().size());
    storage::PutU32(&r, static_cast<uint32_t>(it->value().size()));
    r.append(it->value().data(), it->value().size());
    out.push_back(std::move(r));
  }
  return out;
}

TEST_F(RaftHostTest, SnapshotFromAnOlderTermIsRefusedBeforeTheReplicaIsTouched) {
  StartNode(1, {1});
  ASSERT_EQ(WaitForLeader(), 1u);
  for (uint64_t i = 1; i <= 5; ++i) {
    ASSERT_TRUE(ProposeAndWait(1, PublishCommand("t", "m" + std::to_string(i), 4, i)).status.ok());
  }
  const GroupStatus st = nodes_[1].host->Status()[0];
  ASSERT_GE(st.term, 1u);
  bool skip = false;
  absl::Status s =
      nodes_[1].host->BeginSnapshotInstall(kGroup, st.applied + 100, st.term - 1, &skip);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(ReadAll(1).size(), 5u);  // the replica's data is untouched
  EXPECT_TRUE(ProposeAndWait(1, PublishCommand("t", "m6", 4, 6)).status.ok());  // still serving
  EXPECT_EQ(ReadAll(1).size(), 6u);
}

TEST_F(RaftHostTest, SnapshotInstallCutShortByACrashIsDiscardedAndCanBeRedone) {
  StartNode(1, {1});
  ASSERT_EQ(WaitForLeader(), 1u);
  for (uint64_t i = 1; i <= 20; ++i) {
    ASSERT_TRUE(ProposeAndWait(1, PublishCommand("t", "m" + std::to_string(i), 4, i)).status.ok());
  }
  const GroupStatus leader = nodes_[1].host->Status()[0];
  std::vector<std::string> records = SnapshotRecords(*nodes_[1].engine);
  ASSERT_GT(records.size(), 20u);

  // Node 9 holds an empty replica; an image of node 1's state starts arriving and the node dies
  // half way (no FinishSnapshotInstall).
  StartNode(9, {});
  bool skip = true;
  ASSERT_TRUE(nodes_[9].host->BeginSnapshotInstall(kGroup, leader.applied, leader.term, &skip).ok());
  EXPECT_FALSE(skip);
  std::string half;
  for (size_t i = 0; i < records.size() / 2; ++i) half += records[i];
  ASSERT_TRUE(nodes_[9].host->WriteSnapshotRecords(kGroup, half).ok());
  StopNode(9);

  // On restart the partial image is gone: nothing half-installed is visible.
  StartNode(9, {});
  EXPECT_TRUE(ReadAll(9).empty()) << "a partial snapshot image survived the restart";
  EXPECT_EQ(nodes_[9].host->Status()[0].applied, 0u);

  // A later, complete transfer installs normally.
  ASSERT_TRUE(nodes_[9].host->BeginSnapshotInstall(kGroup, leader.applied, leader.term, &skip).ok());
  std::string all;
  for (const std::string& r : records) all += r;
  ASSERT_TRUE(nodes_[9].host->WriteSnapshotRecords(kGroup, all).ok());
  auto snap = std::make_shared<raft::Snapshot>();
  snap->metadata.index = leader.applied;
  snap->metadata.term = leader.term;
  snap->metadata.conf_state.voters = {1};
  snap->metadata.conf_state.learners = {9};
  raft::Message m;
  m.type = raft::MessageType::kSnapshot;
  m.from = 1;
  m.to = 9;
  m.term = leader.term;
  m.snapshot = snap;
  ASSERT_TRUE(nodes_[9].host->FinishSnapshotInstall(kGroup, m, /*data_written=*/true).ok());
  EXPECT_EQ(ReadAll(9), ReadAll(1));
  EXPECT_EQ(nodes_[9].host->Status()[0].applied, leader.applied);
}

// Quiescence tests use a 500 ms election timeout (50 ticks of 10 ms): a node that does not hear
// from a peer for that long wakes its groups, and a loaded test machine can stall a host thread
// for 100 ms.
constexpr int kQuiescenceElectionTicks = 50;

// Whether every running node reports its replica of kGroup quiesced, within `timeout`.
bool WaitAllQuiesced(std::map<raft::NodeId, TestNode>& nodes, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    bool all = true;
    for (auto& [id, n] : nodes) {
      if (!n.host) continue;
      auto st = n.host->Status();
      all = all && !st.empty() && st[0].quiesced;
    }
    if (all) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

raft::NodeId RaftHostTest::StartQuiescedTrio(uint64_t producer) {
  for (raft::NodeId id : {1, 2, 3}) StartNode(id, {1, 2, 3}, 0, 0, kQuiescenceElectionTicks);
  if (PublishWithRetry("before", producer, 1) == 0) return 0;
  if (!WaitAllQuiesced(nodes_, 5s)) {
    ADD_FAILURE() << "the idle group never quiesced on every replica";
    return 0;
  }
  return WaitForLeader();
}

TEST_F(RaftHostTest, IdleGroupQuiescesAndWakesForAProposal) {
  for (raft::NodeId id : {1, 2, 3}) StartNode(id, {1, 2, 3}, 0, 0, kQuiescenceElectionTicks);
  ASSERT_NE(PublishWithRetry("first", 7, 1), 0u);
  ASSERT_TRUE(WaitAllQuiesced(nodes_, 5s)) << "the idle group never quiesced on every replica";
  // The followers' answers to the quiesce heartbeats may still be on their way.
  std::this_thread::sleep_for(50ms);
  // Quiesced: 30 ticks pass without a single Raft message (node pings are not Raft messages).
  uint64_t before = net_.routed();
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(net_.routed(), before) << "a quiesced group still exchanges messages";
  raft::NodeId leader = WaitForLeader();
  ASSERT_NE(leader, 0u);
  // A proposal wakes it; it commits on every replica, and the group goes quiet again.
  ProposalResult r = ProposeAndWait(leader, PublishCommand("t", "second", 7, 2));
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_GT(net_.routed(), before);
  uint64_t target = nodes_[leader].host->Status()[0].applied;
  for (raft::NodeId id : {1, 2, 3}) {
    ASSERT_TRUE(WaitApplied(id, target));
    EXPECT_EQ(ReadAll(id), (std::vector<std::string>{"first", "second"})) << "node " << id;
  }
  EXPECT_TRUE(WaitAllQuiesced(nodes_, 5s));
  EXPECT_EQ(WaitForLeader(), leader) << "quiescing changed the leader";
}

TEST_F(RaftHostTest, QuiescedFollowersElectANewLeaderWhenTheLeaderFallsSilent) {
  raft::NodeId old_leader = StartQuiescedTrio(8);
  ASSERT_NE(old_leader, 0u);
  auto t0 = std::chrono::steady_clock::now();
  StopNode(old_leader);  // no more messages, no more node pings
  raft::NodeId next = 0;
  while (next == 0 && std::chrono::steady_clock::now() - t0 < 10s) {
    next = WaitForLeader(100ms);
  }
  ASSERT_NE(next, 0u) << "the quiesced followers never noticed their leader was gone";
  EXPECT_NE(next, old_leader);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                std::chrono::steady_clock::now() - t0)
                .count();
  // Silence is noticed after one election timeout (500 ms) and the election takes at most one
  // randomized timeout more (the timer is nearly run out when the followers wake).
  std::printf("new leader %lld ms after the quiesced leader fell silent\n",
              static_cast<long long>(ms));
  EXPECT_LT(ms, 5000);
  ASSERT_NE(PublishWithRetry("after", 8, 2), 0u);
  EXPECT_EQ(ReadAll(next), (std::vector<std::string>{"before", "after"}));
}

TEST_F(RaftHostTest, QuiescedLeaderCutOffStepsDownAndRejoins) {
  raft::NodeId old_leader = StartQuiescedTrio(9);
  ASSERT_NE(old_leader, 0u);
  net_.CutOff(old_leader, true);
  // The isolated leader wakes (it no longer hears its followers) and, without a quorum, steps
  // down; the others elect a leader among themselves.
  auto deadline = std::chrono::steady_clock::now() + 10s;
  bool old_stepped_down = false;
  raft::NodeId other_leader = 0;
  while (std::chrono::steady_clock::now() < deadline && (!old_stepped_down || other_leader == 0)) {
    old_stepped_down = nodes_[old_leader].host->Status()[0].role != raft::Role::kLeader;
    for (auto& [id, n] : nodes_) {
      if (id != old_leader && n.host->Status()[0].role == raft::Role::kLeader) other_leader = id;
    }
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(old_stepped_down) << "the cut-off quiesced leader kept claiming leadership";
  ASSERT_NE(other_leader, 0u);
  ASSERT_TRUE(ProposeAndWait(other_leader, PublishCommand("t", "during", 9, 2)).status.ok());
  net_.CutOff(old_leader, false);
  uint64_t target = nodes_[other_leader].host->Status()[0].applied;
  ASSERT_TRUE(WaitApplied(old_leader, target));
  EXPECT_EQ(ReadAll(old_leader), (std::vector<std::string>{"before", "during"}));
}

// What a linearizable read saw: whether it ran as the leader, and the payloads it read.
struct ReadOutcome {
  bool answered = false;
  bool as_leader = false;
  std::vector<std::string> payloads;
};

ReadOutcome ReadLinearizably(RaftHost& host, std::chrono::milliseconds timeout) {
  auto p = std::make_shared<std::promise<ReadOutcome>>();
  auto f = p->get_future();
  host.ReadLinearizable(kGroup, [p](broker::PartitionStateMachine* sm, const GroupStatus* st) {
    ReadOutcome o;
    o.answered = true;
    o.as_leader = sm != nullptr && st != nullptr && st->role == raft::Role::kLeader;
    if (sm != nullptr) {
      auto r = sm->Fetch(0, 0, {"#"}, 2000, {.max_messages = 1000, .max_bytes = 1 << 20});
      if (r.ok()) {
        for (auto& m : r->messages) o.payloads.push_back(m.payload());
      }
    }
    p->set_value(std::move(o));
  });
  if (f.wait_for(timeout) != std::future_status::ready) return {};
  return f.get();
}

// ReadIndex (Raft dissertation §6.4): a read on the leader sees every acknowledged write; a
// leader cut off from its followers never answers as the leader (while the others elect a new one
// and commit more), and answers as a non-leader once it steps down.
TEST_F(RaftHostTest, LinearizableReadsNeverComeFromADeposedLeader) {
  for (raft::NodeId id : {1, 2, 3}) StartNode(id, {1, 2, 3});
  ASSERT_NE(PublishWithRetry("one", 5, 1), 0u);
  raft::NodeId leader = WaitForLeader();
  ASSERT_NE(leader, 0u);
  ReadOutcome ok = ReadLinearizably(*nodes_[leader].host, 5s);
  ASSERT_TRUE(ok.answered);
  EXPECT_TRUE(ok.as_leader);
  EXPECT_EQ(ok.payloads, (std::vector<std::string>{"one"}));
  // A follower refuses at once.
  raft::NodeId follower = leader % 3 + 1;
  ReadOutcome refused = ReadLinearizably(*nodes_[follower].host, 5s);
  ASSERT_TRUE(refused.answered);
  EXPECT_FALSE(refused.as_leader);

  net_.CutOff(leader, true);
  ReadOutcome cut = ReadLinearizably(*nodes_[leader].host, 10s);
  ASSERT_TRUE(cut.answered) << "the cut-off leader's read never finished";
  EXPECT_FALSE(cut.as_leader) << "a leader without a quorum answered a linearizable read";
  raft::NodeId other = 0;
  for (int i = 0; i < 500 && other == 0; ++i) {
    for (raft::NodeId id : {1, 2, 3}) {
      if (id != leader && nodes_[id].host->Status()[0].role == raft::Role::kLeader) other = id;
    }
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_NE(other, 0u);
  ASSERT_TRUE(ProposeAndWait(other, PublishCommand("t", "two", 5, 2)).status.ok());
  ReadOutcome fresh = ReadLinearizably(*nodes_[other].host, 5s);
  ASSERT_TRUE(fresh.answered);
  EXPECT_TRUE(fresh.as_leader);
  EXPECT_EQ(fresh.payloads, (std::vector<std::string>{"one", "two"}));
  net_.CutOff(leader, false);
}

// A read on a quiesced leader wakes it for the heartbeat round without disturbing leadership,
// and the group goes quiet again.
TEST_F(RaftHostTest, LinearizableReadOnAQuiescedLeaderKeepsItsLeadership) {
  raft::NodeId leader = StartQuiescedTrio(6);
  ASSERT_NE(leader, 0u);
  const uint64_t term = nodes_[leader].host->Status()[0].term;
  for (int i = 0; i < 3; ++i) {
    ReadOutcome r = ReadLinearizably(*nodes_[leader].host, 5s);
    ASSERT_TRUE(r.answered);
    EXPECT_TRUE(r.as_leader);
    EXPECT_EQ(r.payloads, (std::vector<std::string>{"before"}));
  }
  // Woken followers must keep hearing from the leader: no election for several timeouts.
  std::this_thread::sleep_for(std::chrono::milliseconds(10 * 3 * kQuiescenceElectionTicks));
  EXPECT_EQ(WaitForLeader(), leader);
  EXPECT_EQ(nodes_[leader].host->Status()[0].term, term) << "the read caused an election";
  EXPECT_TRUE(WaitAllQuiesced(nodes_, 5s));
}

}  // namespace
}  // namespace herald::cluster
